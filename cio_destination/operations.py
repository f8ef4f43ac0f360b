"""Rows in, Customer.io operations (serialized batch entries) or rejections out. Pure: no I/O.

Each row becomes one Track API v2 operation, serialized once with orjson; the bytes are what the
batcher measures and the client sends. A row that breaks one of Customer.io's documented limits is
rejected here with a reason naming the field, and is never sent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from cio_destination import limits
from cio_destination._values import (
    ValueProblem,
    canonical_key,
    deterministic_ulid,
    parse_json_object,
    to_json_value,
    to_unix_seconds,
)
from cio_destination.mapping import CompiledMapping

Row = dict[str, Any]

_PHONE = re.compile(r"^\+[1-9][0-9]{1,14}$")


@dataclass(frozen=True)
class Rejection:
    """A row that will not be (or was not) accepted, and why. `message` never holds a value."""

    row: Row
    row_key: str
    reason: str
    field: str | None
    message: str


@dataclass
class Entry:
    """One serialized operation and the source rows it carries (several for a collapsed identify)."""

    data: bytes
    row_key: str
    rows: list[Row] = field(default_factory=list)

    def reject(self, reason: str, field: str | None, message: str) -> list[Rejection]:
        return [Rejection(row, self.row_key, reason, field, message) for row in self.rows]


@dataclass
class Mapped:
    entries: list[Entry]
    rejections: list[Rejection]
    rows_in: int


class _Reject(Exception):
    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.message = message


def _utf8_len(text: str, limit: int) -> int:
    """The UTF-8 size of `text`, skipping the encode when it cannot exceed `limit` (<= 4 B/char)."""
    return len(text) if len(text) * 4 <= limit else len(text.encode("utf-8"))


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return (
            len(value)
            if len(value) * 4 <= limits.MAX_ATTRIBUTE_VALUE_BYTES
            else len(value.encode("utf-8"))
        )
    if isinstance(value, (dict, list)):
        return len(orjson.dumps(value))
    return 0  # numbers and booleans are far below any limit


class RowMapper:
    """Maps the rows of one table with its compiled mapping."""

    def __init__(self, compiled: CompiledMapping) -> None:
        self.compiled = compiled
        self.mapping = compiled.mapping
        self._table = compiled.table
        self._attribute_columns = compiled.attribute_columns
        self._json_columns = compiled.json_columns

    # -- shared pieces ---------------------------------------------------------------------

    def _identifier(self, row: Row) -> str:
        column = self.mapping.identifier
        assert column is not None
        value = row.get(column)
        kind = self.mapping.identifier_type
        if value is None or (isinstance(value, str) and not value.strip()):
            raise _Reject("missing_identifier", column, f"the {kind} identifier is empty")
        if isinstance(value, str):
            text = value
        elif isinstance(value, bool):
            raise _Reject("invalid_identifier", column, f"a boolean is not a valid {kind}")
        elif isinstance(value, int):
            text = str(value)
        else:
            try:
                number = to_json_value(value)
            except ValueProblem as exc:
                raise _Reject("invalid_identifier", column, str(exc)) from None
            if isinstance(number, float) and number.is_integer():
                text = str(int(number))
            elif isinstance(number, (int, str)):
                text = str(number)
            else:
                raise _Reject(
                    "invalid_identifier", column, f"a {type(value).__name__} is not a valid {kind}"
                )
        if _utf8_len(text, limits.MAX_IDENTIFIER_BYTES) > limits.MAX_IDENTIFIER_BYTES:
            raise _Reject(
                "identifier_too_long",
                column,
                f"the identifier is over Customer.io's {limits.MAX_IDENTIFIER_BYTES}-byte limit",
            )
        if kind == "email" and "@" not in text:
            raise _Reject("invalid_identifier", column, "not an email address")
        if kind == "phone" and not _PHONE.match(text):
            raise _Reject("invalid_identifier", column, "not an E.164 phone number (+ and digits)")
        return text

    def _timestamp(self, row: Row) -> int | None:
        column = self.mapping.timestamp
        if column is None:
            return None
        value = row.get(column)
        if value is None:
            return None
        try:
            return to_unix_seconds(value)
        except ValueProblem as exc:
            raise _Reject("invalid_timestamp", column, str(exc)) from None

    def _attributes(self, row: Row, *, per_value_limit: bool) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        clear = self.mapping.clear_nulls
        for column in self._attribute_columns:
            value = row.get(column)
            if value is None:
                if clear:
                    attributes[column] = ""
                continue
            if column in self._json_columns and isinstance(value, str):
                value = _maybe_json(value)
            try:
                value = to_json_value(value)
            except ValueProblem as exc:
                raise _Reject("invalid_value", column, str(exc)) from None
            if per_value_limit and _value_size(value) > limits.MAX_ATTRIBUTE_VALUE_BYTES:
                raise _Reject(
                    "attribute_value_too_long",
                    column,
                    f"the value is over Customer.io's {limits.MAX_ATTRIBUTE_VALUE_BYTES}-byte"
                    " attribute value limit",
                )
            attributes[column] = value
        return attributes

    def _row_key(self, row: Row, columns: tuple[str, ...]) -> str:
        if len(columns) == 1:
            value = row.get(columns[0])
            return "" if value is None else str(value)
        if columns:
            return orjson.dumps([row.get(c) for c in columns], default=str).decode()
        return "row:" + hashlib.blake2b(_whole_row_key(row), digest_size=8).hexdigest()

    # -- actions ---------------------------------------------------------------------------

    def map_rows(self, rows: Iterable[Row]) -> Mapped:
        if self.mapping.action == "identify":
            return self._map_identify(rows)
        return self._map_event(rows)

    def _map_identify(self, rows: Iterable[Row]) -> Mapped:
        # Several rows for one person in a batch collapse into one operation, merged in row order:
        # the same end state as sending them one by one, but immune to requests being reordered.
        people: dict[str, tuple[dict[str, Any], list[Row]]] = {}
        rejections: list[Rejection] = []
        kind = self.mapping.identifier_type
        rows_in = 0
        for row in rows:
            rows_in += 1
            try:
                identifier = self._identifier(row)
                timestamp = self._timestamp(row)
                attributes = self._attributes(row, per_value_limit=True)
            except _Reject as reject:
                key = self._safe_identifier_key(row)
                rejections.append(Rejection(row, key, reject.reason, reject.field, reject.message))
                continue
            seen = people.get(identifier)
            if seen is None:
                op: dict[str, Any] = {
                    "type": "person",
                    "action": "identify",
                    "identifiers": {kind: identifier},
                }
                if attributes:
                    op["attributes"] = attributes
                if timestamp is not None:
                    op["timestamp"] = timestamp
                people[identifier] = (op, [row])
                continue
            op, carried = seen
            merged = {**op.get("attributes", {}), **attributes}
            if merged:
                op["attributes"] = merged
            if timestamp is not None:
                op["timestamp"] = max(timestamp, op.get("timestamp", timestamp))
            carried.append(row)
        entries: list[Entry] = []
        for identifier, (op, carried) in people.items():
            if len(op.get("attributes", ())) > limits.MAX_ATTRIBUTES_PER_IDENTIFY:
                for row in carried:
                    rejections.append(
                        Rejection(
                            row,
                            identifier,
                            "too_many_attributes",
                            "attributes",
                            f"over Customer.io's {limits.MAX_ATTRIBUTES_PER_IDENTIFY} attributes"
                            " per identify",
                        )
                    )
                continue
            self._add_entry(entries, rejections, op, identifier, carried)
        return Mapped(entries, rejections, rows_in)

    def _safe_identifier_key(self, row: Row) -> str:
        value = row.get(self.mapping.identifier or "")
        return "" if value is None else str(value)[: limits.MAX_IDENTIFIER_BYTES]

    def _map_event(self, rows: Iterable[Row]) -> Mapped:
        entries: list[Entry] = []
        rejections: list[Rejection] = []
        mapping = self.mapping
        kind = mapping.identifier_type
        id_columns = self.compiled.event_id_columns
        rows_in = 0
        for row in rows:
            rows_in += 1
            row_key = self._row_key(row, id_columns)
            try:
                identifier = self._identifier(row)
                name = self._event_name(row)
                timestamp = self._timestamp(row)
                data = self._event_data(row)
                event_id = self._event_id(row, id_columns)
            except _Reject as reject:
                rejections.append(
                    Rejection(row, row_key, reject.reason, reject.field, reject.message)
                )
                continue
            op: dict[str, Any] = {
                "type": "person",
                "action": "event",
                "identifiers": {kind: identifier},
                "name": name,
                "id": event_id,
            }
            if timestamp is not None:
                op["timestamp"] = timestamp
            if data:
                op["attributes"] = data
            self._add_entry(entries, rejections, op, row_key, [row])
        return Mapped(entries, rejections, rows_in)

    def _event_name(self, row: Row) -> str:
        if self.mapping.event_name is not None:
            name = self.mapping.event_name
            column = "event_name"
        else:
            column = self.mapping.event_name_column
            assert column is not None
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise _Reject("missing_event_name", column, "the event name is empty")
            name = value if isinstance(value, str) else str(value)
        if _utf8_len(name, limits.MAX_EVENT_NAME_BYTES) > limits.MAX_EVENT_NAME_BYTES:
            raise _Reject(
                "event_name_too_long",
                column,
                f"the event name is over Customer.io's {limits.MAX_EVENT_NAME_BYTES}-byte limit",
            )
        return name

    def _event_data(self, row: Row) -> dict[str, Any]:
        data: dict[str, Any] = {}
        column = self.mapping.event_data_column
        if column is not None:
            raw = row.get(column)
            if raw is not None:
                try:
                    data = to_json_value(parse_json_object(raw))
                except ValueProblem as exc:
                    raise _Reject("invalid_event_data", column, str(exc)) from None
        attributes = self._attributes(row, per_value_limit=False)
        if attributes:
            data.update(attributes)
        if data and len(orjson.dumps(data)) > limits.MAX_EVENT_DATA_BYTES:
            raise _Reject(
                "event_data_too_large",
                column or "attributes",
                f"the event data is over Customer.io's {limits.MAX_EVENT_DATA_BYTES}-byte limit",
            )
        return data

    def _event_id(self, row: Row, columns: tuple[str, ...]) -> str:
        if columns:
            values = [row.get(c) for c in columns]
            if all(v is None for v in values):
                raise _Reject(
                    "missing_event_id",
                    ",".join(columns),
                    "the event id columns are all empty, so the event cannot be de-duplicated",
                )
            key = canonical_key(values)
        else:
            key = _whole_row_key(row)
        return deterministic_ulid(self._table, key)

    def _add_entry(
        self,
        entries: list[Entry],
        rejections: list[Rejection],
        op: dict[str, Any],
        row_key: str,
        rows: list[Row],
    ) -> None:
        data = orjson.dumps(op)
        if len(data) > limits.MAX_ENTRY_BYTES:
            rejections.extend(
                Rejection(
                    row,
                    row_key,
                    "entry_too_large",
                    None,
                    f"the operation is {len(data)} bytes, over Customer.io's"
                    f" {limits.MAX_ENTRY_BYTES}-byte limit per entry",
                )
                for row in rows
            )
            return
        entries.append(Entry(data, row_key, rows))


def _maybe_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _whole_row_key(row: Row) -> bytes:
    return canonical_key([[k, row[k]] for k in sorted(row) if row[k] is not None])


def rows_from_arrow(batch: Any, json_columns: frozenset[str]) -> Iterator[Row]:
    """Rows of a pyarrow RecordBatch in the same shape typed-jsonl gives (nulls left out)."""
    for row in batch.to_pylist():
        out = {}
        for key, value in row.items():
            if value is None:
                continue
            if key in json_columns and isinstance(value, str):
                value = _maybe_json(value)
            out[key] = value
        yield out
