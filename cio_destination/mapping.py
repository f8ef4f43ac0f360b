"""How a table's rows map to Customer.io: the declared mapping, and its check against the table.

A mapping is declared with `customerio_adapter` (as `x-customerio-*` table hints) or in config under
`[destination.customerio.tables.<table>]`. Both are read into one `TableMapping`, then compiled
against the table's columns into a `CompiledMapping` that the row mapper uses. Every problem is a
`MappingError` naming the table and the key, raised before any request is made. A column the
table does not have (yet) is no problem: dlt leaves out columns that are NULL in every row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from cio_destination import limits
from cio_destination.exceptions import MappingError

TAction = Literal[
    "identify",
    "event",
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
]
TIdentifierType = Literal["id", "email", "cio_id", "phone"]
TMergeIdentifierType = Literal["id", "email", "cio_id"]
TPlatform = Literal["ios", "android"]

SUPPORTED_ACTIONS: tuple[str, ...] = get_args(TAction)
# Actions whose rows carry an idempotency key (`event_id`): a deterministic event id, or the
# send ledger's key.
KEYED_ACTIONS = frozenset({"event", "page", "screen", "send_email"})
NAMED_ACTIONS = frozenset({"event", "page", "screen"})
OBJECT_ACTIONS = frozenset({"object_identify", "object_delete"})
RELATIONSHIP_ACTIONS = frozenset({"add_relationships", "delete_relationships"})
# Actions that send no attributes at all.
BARE_ACTIONS = frozenset(
    {
        "delete",
        "suppress",
        "unsuppress",
        "merge",
        "delete_device",
        "delete_relationships",
        "object_delete",
    }
)

# Which optional keys each action accepts (beyond `action`); anything else is a mapping error.
_PERSON = {"identifier", "identifier_type"}
_NAMED = {"event_name", "event_name_column", "event_data_column", "event_id", "timestamp"}
_OBJECT = {"object_type_id", "object_type_id_column", "object_id"}
ACTION_KEYS: dict[str, frozenset[str]] = {
    "identify": frozenset(
        _PERSON
        | {
            "attributes",
            "json_columns",
            "oversized_attribute",
            "timestamp",
            "clear_nulls",
            "changes_only",
            "mirror",
            "max_removed_fraction",
        }
    ),
    "event": frozenset(_PERSON | _NAMED | {"attributes", "json_columns"}),
    "page": frozenset(_PERSON | _NAMED | {"attributes", "json_columns"}),
    "screen": frozenset(_PERSON | _NAMED | {"attributes", "json_columns"}),
    "delete": frozenset(_PERSON),
    "suppress": frozenset(_PERSON),
    "unsuppress": frozenset(_PERSON),
    "merge": frozenset(_PERSON | {"secondary_identifier", "secondary_identifier_type"}),
    "add_device": frozenset(
        _PERSON
        | {
            "device_token",
            "device_platform",
            "device_platform_column",
            "device_last_used",
            "attributes",
            "json_columns",
            "oversized_attribute",
        }
    ),
    "delete_device": frozenset(_PERSON | {"device_token"}),
    "add_relationships": frozenset(_PERSON | _OBJECT | {"attributes", "json_columns"}),
    "delete_relationships": frozenset(_PERSON | _OBJECT),
    "object_identify": frozenset(_OBJECT | {"attributes", "clear_nulls", "json_columns"}),
    "object_delete": frozenset(_OBJECT),
    "send_email": frozenset(
        _PERSON
        | {
            "transactional_message_id",
            "transactional_message_id_column",
            "to",
            "attributes",
            "json_columns",
            "message_data_column",
            "send_at",
            "event_id",
            "disable_message_retention",
            "send_to_unsubscribed",
            "queue_draft",
            "message_overrides",
        }
    ),
}
# Fields of the transactional email body a column may set through `message_overrides`.
MESSAGE_OVERRIDE_FIELDS = frozenset(
    {
        "from",
        "subject",
        "body",
        "body_amp",
        "body_plain",
        "preheader",
        "reply_to",
        "bcc",
        "fake_bcc",
        "plaintext_body",
        "language",
        "tracked",
        "headers",
        "attachments",
    }
)

HINT_PREFIX = "x-customerio-"
# dlt stores a value that does not fit its column's type in a variant column named
# `<column>\u25b6v_<type>` (with the direct naming convention this destination uses)
VARIANT_INFIX = "\u25b6v_"


def hint_name(key: str) -> str:
    """The table hint that carries mapping key `key`, e.g. `event_id` -> `x-customerio-event-id`."""
    return HINT_PREFIX + key.replace("_", "-")


def _as_column_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


def _one_of(mapping: TableMapping, literal: str, column: str) -> None:
    if (getattr(mapping, literal) is None) == (getattr(mapping, column) is None):
        raise ValueError(f"{literal}: give exactly one of {literal} or {column}")


class TableMapping(BaseModel):
    """The mapping keys of one table, exactly as a user declares them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: TAction
    identifier: str | None = None
    identifier_type: TIdentifierType = "id"
    attributes: tuple[str, ...] | None = None
    json_columns: tuple[str, ...] | None = None
    oversized_attribute: Literal["reject_row", "drop_attribute"] = "reject_row"
    timestamp: str | None = None
    clear_nulls: bool = False
    changes_only: bool = False
    mirror: Literal["delete", "suppress"] | None = None
    max_removed_fraction: float = 0.1
    # event, page, screen
    event_name: str | None = None
    event_name_column: str | None = None
    event_data_column: str | None = None
    event_id: tuple[str, ...] | None = None
    # merge
    secondary_identifier: str | None = None
    secondary_identifier_type: TMergeIdentifierType = "id"
    # devices
    device_token: str | None = None
    device_platform: TPlatform | None = None
    device_platform_column: str | None = None
    device_last_used: str | None = None
    # objects and relationships
    object_type_id: str | None = None
    object_type_id_column: str | None = None
    object_id: str | None = None
    # transactional email
    transactional_message_id: str | int | None = None
    transactional_message_id_column: str | None = None
    to: str | None = None
    message_data_column: str | None = None
    send_at: str | None = None
    disable_message_retention: bool | None = None
    send_to_unsubscribed: bool | None = None
    queue_draft: bool | None = None
    message_overrides: dict[str, str] | None = None

    @field_validator("attributes", "event_id", "json_columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return _as_column_list(value)

    @field_validator("object_type_id", mode="before")
    @classmethod
    def _object_type_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _per_action(self) -> TableMapping:
        action = self.action
        allowed = ACTION_KEYS[action]
        for key in type(self).model_fields:
            if key != "action" and key not in allowed and key in self.model_fields_set:
                users = sorted(a for a, keys in ACTION_KEYS.items() if key in keys)
                raise ValueError(f"{key}: only applies to action {', '.join(users)}")
        if action not in OBJECT_ACTIONS and self.identifier is None:
            raise ValueError("identifier: required (the column holding the person's identifier)")
        if not 0 <= self.max_removed_fraction <= 1:
            raise ValueError("max_removed_fraction: must be between 0 and 1")
        if action == "merge":
            if self.identifier_type == "phone":
                raise ValueError("identifier_type: merge takes id, email or cio_id")
            if self.secondary_identifier is None:
                raise ValueError("secondary_identifier: required for merge")
        if action in NAMED_ACTIONS:
            _one_of(self, "event_name", "event_name_column")
            if self.event_name is not None:
                if not self.event_name.strip():
                    raise ValueError("event_name: must not be empty")
                if len(self.event_name.encode("utf-8")) > limits.MAX_EVENT_NAME_BYTES:
                    raise ValueError(
                        f"event_name: over Customer.io's {limits.MAX_EVENT_NAME_BYTES}-byte limit"
                    )
        if action in ("add_device", "delete_device") and self.device_token is None:
            raise ValueError("device_token: required (the column holding the device token)")
        if action == "add_device":
            _one_of(self, "device_platform", "device_platform_column")
        if action in OBJECT_ACTIONS | RELATIONSHIP_ACTIONS:
            _one_of(self, "object_type_id", "object_type_id_column")
            if self.object_id is None:
                raise ValueError("object_id: required (the column holding the object id)")
        if action == "send_email":
            _one_of(self, "transactional_message_id", "transactional_message_id_column")
            if self.identifier_type == "phone":
                raise ValueError("identifier_type: send_email takes id, email or cio_id")
            for field in self.message_overrides or {}:
                if field not in MESSAGE_OVERRIDE_FIELDS:
                    raise ValueError(
                        f"message_overrides: '{field}' is not a transactional email field"
                        f" (use one of {', '.join(sorted(MESSAGE_OVERRIDE_FIELDS))})"
                    )
        return self

    _ROLE_KEYS: ClassVar[tuple[str, ...]] = (
        "identifier",
        "timestamp",
        "event_name_column",
        "event_data_column",
        "secondary_identifier",
        "device_token",
        "device_platform_column",
        "device_last_used",
        "object_type_id_column",
        "object_id",
        "transactional_message_id_column",
        "to",
        "message_data_column",
        "send_at",
    )

    def used_columns(self) -> list[str]:
        """Columns the mapping consumes for something other than attributes.

        `event_id` columns are not among them: a key like `order_id` stays in the event data
        whether it is named explicitly or taken from the primary key.
        """
        used = [getattr(self, key) for key in self._ROLE_KEYS]
        used.extend((self.message_overrides or {}).values())
        return [c for c in used if c]

    def named_columns(self) -> list[tuple[str, str]]:
        """Every (key, column) the mapping names, for checking them against the table."""
        named = [(key, getattr(self, key)) for key in self._ROLE_KEYS if getattr(self, key)]
        named.extend(("event_id", c) for c in self.event_id or ())
        named.extend(("attributes", c) for c in self.attributes or ())
        named.extend(("json_columns", c) for c in self.json_columns or ())
        named.extend(("message_overrides", c) for c in (self.message_overrides or {}).values())
        return named


def parse_mapping(table: str, declared: Mapping[str, Any]) -> TableMapping:
    """Validate declared keys into a `TableMapping`, or raise a `MappingError` naming the key."""
    action = declared.get("action")
    if action is None:
        raise MappingError(table, "action", f"required, one of {', '.join(SUPPORTED_ACTIONS)}")
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
    """Columns whose text is JSON: the mapping's `json_columns` and those dlt types as json."""
    primary_key: tuple[str, ...] = ()
    absent_columns: tuple[tuple[str, str], ...] = ()
    """(key, column) of mapped columns the table's schema does not have: dlt leaves a column out
    while it is NULL in every row, so they are mapped as NULL."""
    variants: tuple[tuple[str, str], ...] = ()
    """(variant, column) of dlt's variant columns: a row's value there is its column's value."""
    declared_json: frozenset[str] = frozenset()
    """The mapping's own `json_columns`: their text is JSON wherever dlt stored it."""

    @property
    def action(self) -> str:
        return self.mapping.action


def compile_mapping(
    table: str, mapping: TableMapping, columns: Mapping[str, Mapping[str, Any]]
) -> CompiledMapping:
    """Check a mapping against the table's columns and resolve its defaults.

    A named column the table does not have is not an error (see `absent_columns`): rows then
    have no value for it, as when it is NULL.
    """
    variants = tuple(
        (name, name.rpartition(VARIANT_INFIX)[0])
        for name, schema in columns.items()
        if schema.get("variant") and VARIANT_INFIX in name
    )
    # a row's value in a variant column is its column's value: the variant is not a column
    names = list(dict.fromkeys(dict(variants).get(c, c) for c in columns))
    absent = tuple((key, column) for key, column in mapping.named_columns() if column not in names)
    used = set(mapping.used_columns())
    if mapping.action in BARE_ACTIONS:
        attribute_columns: tuple[str, ...] = ()
    elif mapping.attributes is not None:
        attribute_columns = tuple(mapping.attributes)
    else:
        attribute_columns = tuple(c for c in names if c not in used)
    for column in attribute_columns:
        if len(column.encode("utf-8")) > limits.MAX_ATTRIBUTE_NAME_BYTES:
            raise MappingError(
                table,
                "attributes",
                f"a column name is over Customer.io's {limits.MAX_ATTRIBUTE_NAME_BYTES}-byte"
                " attribute name limit; leave it out with `attributes` or rename it",
            )
    primary_key = tuple(c for c, s in columns.items() if s.get("primary_key"))
    event_id_columns: Sequence[str] = ()
    if mapping.action in KEYED_ACTIONS:
        event_id_columns = mapping.event_id or primary_key
    typed_json = (c for c, s in columns.items() if s.get("data_type") == "json")
    json_columns = frozenset((*(mapping.json_columns or ()), *typed_json))
    return CompiledMapping(
        table=table,
        mapping=mapping,
        attribute_columns=attribute_columns,
        event_id_columns=tuple(event_id_columns),
        json_columns=json_columns,
        primary_key=primary_key,
        absent_columns=absent,
        variants=variants,
        declared_json=frozenset(mapping.json_columns or ()),
    )
