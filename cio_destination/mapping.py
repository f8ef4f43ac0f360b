"""How a table's rows map to Customer.io: the declared mapping, and its check against the table.

A mapping is declared with `customerio_adapter` (as `x-customerio-*` table hints) or in config under
`[destination.customerio.tables.<table>]`. Both are read into one `TableMapping`, then compiled
against the table's columns into a `CompiledMapping` that the row mapper uses. Every problem is a
`MappingError` naming the table and the key, raised before any request is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cio_destination import limits
from cio_destination.exceptions import MappingError

TAction = Literal["identify", "event"]
TIdentifierType = Literal["id", "email", "cio_id", "phone"]

SUPPORTED_ACTIONS: tuple[str, ...] = get_args(TAction)
# Actions of the design that a later version implements: named so the error says "not yet",
# not "unknown".
PLANNED_ACTIONS: tuple[str, ...] = (
    "page",
    "screen",
    "delete",
    "suppress",
    "unsuppress",
    "merge",
    "add_device",
    "delete_device",
    "add_relationships",
    "delete_relationships",
    "object_identify",
    "object_delete",
    "send_email",
)

HINT_PREFIX = "x-customerio-"


def hint_name(key: str) -> str:
    """The table hint that carries mapping key `key`, e.g. `event_id` -> `x-customerio-event-id`."""
    return HINT_PREFIX + key.replace("_", "-")


def _as_column_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


class TableMapping(BaseModel):
    """The mapping keys of one table, exactly as a user declares them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: TAction
    identifier: str | None = None
    identifier_type: TIdentifierType = "id"
    attributes: tuple[str, ...] | None = None
    event_name: str | None = None
    event_name_column: str | None = None
    event_data_column: str | None = None
    event_id: tuple[str, ...] | None = None
    timestamp: str | None = None
    clear_nulls: bool = False

    @field_validator("attributes", "event_id", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return _as_column_list(value)

    @model_validator(mode="after")
    def _per_action(self) -> TableMapping:
        if self.identifier is None:
            raise ValueError("identifier: required (the column holding the person's identifier)")
        if self.action == "event":
            if (self.event_name is None) == (self.event_name_column is None):
                raise ValueError("event_name: give exactly one of event_name or event_name_column")
            if self.event_name is not None and not self.event_name.strip():
                raise ValueError("event_name: must not be empty")
            if self.event_name is not None and (
                len(self.event_name.encode("utf-8")) > limits.MAX_EVENT_NAME_BYTES
            ):
                raise ValueError(
                    f"event_name: over Customer.io's {limits.MAX_EVENT_NAME_BYTES}-byte limit"
                )
        else:
            for key in ("event_name", "event_name_column", "event_data_column", "event_id"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only applies to action 'event'")
        return self

    def used_columns(self) -> list[str]:
        """Columns the mapping consumes for something other than attributes.

        `event_id` columns are not among them: a key like `order_id` stays in the event data
        whether it is named explicitly or taken from the primary key.
        """
        used = [self.identifier, self.timestamp, self.event_name_column, self.event_data_column]
        return [c for c in used if c]

    def named_columns(self) -> list[tuple[str, str]]:
        """Every (key, column) the mapping names, for checking them against the table."""
        named = [
            (key, getattr(self, key))
            for key in ("identifier", "timestamp", "event_name_column", "event_data_column")
            if getattr(self, key)
        ]
        named.extend(("event_id", c) for c in self.event_id or ())
        named.extend(("attributes", c) for c in self.attributes or ())
        return named


def parse_mapping(table: str, declared: Mapping[str, Any]) -> TableMapping:
    """Validate declared keys into a `TableMapping`, or raise a `MappingError` naming the key."""
    action = declared.get("action")
    if action is None:
        raise MappingError(table, "action", f"required, one of {', '.join(SUPPORTED_ACTIONS)}")
    if action in PLANNED_ACTIONS:
        raise MappingError(table, "action", f"'{action}' is not supported by this version yet")
    if action not in SUPPORTED_ACTIONS:
        raise MappingError(
            table, "action", f"unknown action '{action}', use one of {', '.join(SUPPORTED_ACTIONS)}"
        )
    try:
        return TableMapping.model_validate(dict(declared))
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(p) for p in error["loc"])
        message = error["msg"]
        if not location:
            # model-level checks say "<key>: <problem>"
            location, _, message = message.removeprefix("Value error, ").partition(": ")
        elif error["type"] == "extra_forbidden":
            message = "not a mapping key"
        raise MappingError(table, location.split(".")[0], message) from None


def declared_from_hints(table_schema: Mapping[str, Any]) -> dict[str, Any]:
    """Read the mapping keys stored as `x-customerio-*` hints on a dlt table schema."""
    declared = {}
    for name, value in table_schema.items():
        if isinstance(name, str) and name.startswith(HINT_PREFIX):
            declared[name[len(HINT_PREFIX) :].replace("-", "_")] = value
    return declared


def resolve_mapping(
    table: str, table_schema: Mapping[str, Any], configured: Mapping[str, Any] | None
) -> TableMapping:
    """The table's mapping: from config when present there (it replaces the adapter's), else hints."""
    declared = dict(configured) if configured else declared_from_hints(table_schema)
    if not declared:
        raise MappingError(
            table,
            "action",
            "the table has no Customer.io mapping; every table loaded to this destination needs one",
        )
    return parse_mapping(table, declared)


@dataclass(frozen=True)
class CompiledMapping:
    """A mapping checked against its table's columns, ready for the row mapper."""

    table: str
    mapping: TableMapping
    attribute_columns: tuple[str, ...]
    event_id_columns: tuple[str, ...]  # empty: the whole row is the key
    json_columns: frozenset[str]

    @property
    def action(self) -> str:
        return self.mapping.action


def compile_mapping(
    table: str, mapping: TableMapping, columns: Mapping[str, Mapping[str, Any]]
) -> CompiledMapping:
    """Check a mapping against the table's columns and resolve its defaults."""
    for key, column in mapping.named_columns():
        if column not in columns:
            raise MappingError(table, key, f"column '{column}' is not in the table")
    used = set(mapping.used_columns())
    if mapping.attributes is not None:
        attribute_columns = tuple(mapping.attributes)
    else:
        attribute_columns = tuple(c for c in columns if c not in used)
    for column in attribute_columns:
        if len(column.encode("utf-8")) > limits.MAX_ATTRIBUTE_NAME_BYTES:
            raise MappingError(
                table,
                "attributes",
                f"a column name is over Customer.io's {limits.MAX_ATTRIBUTE_NAME_BYTES}-byte"
                " attribute name limit; leave it out with `attributes` or rename it",
            )
    event_id_columns: Sequence[str] = ()
    if mapping.action == "event":
        if mapping.event_id:
            event_id_columns = mapping.event_id
        else:
            event_id_columns = tuple(c for c, s in columns.items() if s.get("primary_key"))
    json_columns = frozenset(c for c, s in columns.items() if s.get("data_type") == "json")
    return CompiledMapping(
        table=table,
        mapping=mapping,
        attribute_columns=attribute_columns,
        event_id_columns=tuple(event_id_columns),
        json_columns=json_columns,
    )
