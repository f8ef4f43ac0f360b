"""The mapping keys of a table: what a user declares (`TableMapping`) and that mapping compiled
against the table's columns (`CompiledMapping`), as plain data.

The actions (`cio_destination.actions`) read them; `cio_destination.mapping` checks a declared
mapping against its action and compiles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, field_validator

TIdentifierType = Literal["id", "email", "cio_id", "phone"]
TMergeIdentifierType = Literal["id", "email", "cio_id"]
TPlatform = Literal["ios", "android"]


def _as_column_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


class TableMapping(BaseModel):
    """The mapping keys of one table, exactly as a user declares them: every key an action
    takes, with its type and default. Which keys an action takes, and which it needs, is the
    action's to say (`cio_destination.actions`); `mapping.parse_mapping` checks both."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: str
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
    typed_json: frozenset[str] = frozenset()
    """The columns dlt types as json: in dict rows, dlt has read their JSON text already (text
    that is no JSON it keeps in a variant column), so a string there is a JSON string."""
    json_read: tuple[str, ...] = ()
    """The JSON columns the mapping reads (as an identifier, a name, a timestamp, an attribute,
    a key, ...), by name: their text is the value it holds, which the row path reads."""
    columns: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The table's columns it was compiled against (`mapping.with_columns` adds to them)."""

    @property
    def action(self) -> str:
        return self.mapping.action

    @property
    def reads_json(self) -> bool:
        """Whether the mapping reads a JSON column (then every row takes the row path)."""
        return bool(self.json_read)
