"""Rows in, Customer.io operations (serialized batch entries) or rejections out. Pure: no I/O.

Each row becomes one Track API v2 operation, serialized once with orjson; the bytes are what the
batcher measures and the client sends. A row that breaks one of Customer.io's documented limits is
rejected here with a reason naming the field, and is never sent.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination import limits
from cio_destination.event_ids import canonical_key, canonical_row_key, deterministic_ulid
from cio_destination.mapping import KEYED_ACTIONS, CompiledMapping
from cio_destination.values import (
    DIGITS,
    MAX_UNIX,
    ValueProblem,
    datetime_to_unix,
    parse_json_object,
    parse_json_text,
    recordable_json,
    to_json_value,
    to_unix_seconds,
)

if TYPE_CHECKING:
    from cio_destination.blocks import EntryBlock

Row = dict[str, Any]

# used with fullmatch: `$` would also match before a trailing newline
_PHONE = re.compile(r"\+[1-9][0-9]{1,14}")
_VALUE_LIMIT = limits.MAX_ATTRIBUTE_VALUE_BYTES
# at most 4 bytes a character: an identifier this short is under the byte limit whatever it holds
_SHORT_IDENTIFIER = limits.MAX_IDENTIFIER_BYTES // 4
_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1


@dataclass(frozen=True)
class Rejection:
    """A row that will not be (or was not) accepted, and why. `message` never holds a value."""

    row: Row
    row_key: str
    reason: str
    field: str | None
    message: str


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector while a batch's operations are built.

    Mapping allocates several containers per row and keeps them until the batch is sent; inside a
    dlt pipeline's large heap that sets off full collections that find nothing (operations hold
    no cycles) and cost as much as the mapping itself. Reference counting still frees everything;
    when the last thread leaves, the collector is back as it was before the first came in.
    """
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


class LazyRow:
    """A row of a RecordBatch, made into a dict only if a rejection needs it."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: Any, index: int) -> None:
        self.batch = batch
        self.index = index

    def materialize(self) -> Row:
        return next(rows_from_arrow(self.batch.slice(self.index, 1)))


@dataclass(slots=True)
class Entry:
    """One serialized operation and the source rows it carries (several for a collapsed identify)."""

    data: bytes
    row_key: str
    rows: list[Row | LazyRow] = field(default_factory=list)
    key: str | None = None
    """The idempotency key (event id, or the send ledger's key), where the action has one."""

    def reject(self, reason: str, field: str | None, message: str) -> list[Rejection]:
        return [
            Rejection(
                row.materialize() if isinstance(row, LazyRow) else row,
                self.row_key,
                reason,
                field,
                message,
            )
            for row in self.rows
        ]


@dataclass
class Mapped:
    entries: list[Entry]
    rejections: list[Rejection]
    rows_in: int
    block: EntryBlock | None = None
    """Operations still in Arrow (the columnar paths); they come before `entries`."""
    dropped: list[Rejection] = field(default_factory=list)
    """Attributes left out of rows that are sent (`oversized_attribute = "drop_attribute"`),
    one record each (reason `attribute_dropped`): kept with the rejections, counted apart."""

    def parts(self) -> list[Sequence[Entry]]:
        """The operations, as the sender takes them: the block (if any), then the list."""
        return [part for part in (self.block, self.entries) if part]

    def all_entries(self) -> list[Entry]:
        """Every operation as an `Entry` (makes the block's entries: for the slower paths)."""
        return [*(self.block or ()), *self.entries]


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


_Builder = Callable[["RowMapper", Row, "list[str] | None"], dict[str, Any]]


class RowMapper:
    """Maps the rows of one table with its compiled mapping."""

    def __init__(self, compiled: CompiledMapping) -> None:
        self.compiled = compiled
        self.mapping = compiled.mapping
        self._table = compiled.table
        self._attribute_columns = compiled.attribute_columns
        self._json_columns = compiled.json_columns
        self._variants = compiled.variants
        self._declared_json = compiled.declared_json
        self._reads = bool(compiled.json_columns or compiled.variants)
        data_columns = (self.mapping.event_data_column, self.mapping.message_data_column)
        self._data_columns = frozenset(c for c in data_columns if c)

    # -- shared pieces ---------------------------------------------------------------------

    def _identifier(self, row: Row, column: str | None = None, kind: str | None = None) -> str:
        column = column or self.mapping.identifier
        kind = kind or self.mapping.identifier_type
        assert column is not None
        value = row.get(column)
        if (
            type(value) is str
            and 0 < len(value) <= _SHORT_IDENTIFIER
            and not value.isspace()
            and (kind == "id" or kind == "cio_id" or (kind == "email" and "@" in value))
        ):
            return value  # the common case: a short, plain identifier that passes every check
        if value is None or (isinstance(value, str) and not value.strip()):
            raise _Reject("missing_identifier", column, f"the {kind} identifier is empty")
        text = _id_text(value, column, kind)
        if _utf8_len(text, limits.MAX_IDENTIFIER_BYTES) > limits.MAX_IDENTIFIER_BYTES:
            raise _Reject(
                "identifier_too_long",
                column,
                f"the identifier is over Customer.io's {limits.MAX_IDENTIFIER_BYTES}-byte limit",
            )
        if kind == "email" and "@" not in text:
            raise _Reject("invalid_identifier", column, "not an email address")
        if kind == "phone" and not _PHONE.fullmatch(text):
            raise _Reject("invalid_identifier", column, "not an E.164 phone number (+ and digits)")
        return text

    def _timestamp(self, row: Row) -> int | None:
        return self._unix(row, self.mapping.timestamp)

    def _decoded(self, row: Row) -> Row:
        """The row as the mapping reads it: JSON text read as the value it holds, and values
        dlt stored in a variant column (one that did not fit the column's type) back in their
        column.

        Done once, before anything reads the row, so keys, attributes and data see one value
        whether the row came as a dict (JSON already decoded) or from Arrow (JSON as text).
        """
        if not self._reads:
            return row
        decoded = dict(row)
        for column in self._json_columns:
            value = row.get(column)
            if isinstance(value, str):
                self._read_json(decoded, column, value)
        for variant, column in self._variants:
            value = decoded.pop(variant, None)
            if value is None:
                continue
            # dlt decoded a JSON column's scalars itself (a string is no JSON text), but text
            # in a column the mapping declares as JSON is JSON wherever dlt stored it
            if isinstance(value, str) and column in self._declared_json:
                self._read_json(decoded, column, value)
            else:
                decoded[column] = value
        return decoded

    def _read_json(self, row: Row, column: str, text: str) -> None:
        try:
            value = parse_json_text(text)
        except ValueProblem as exc:
            reason = "invalid_event_data" if column in self._data_columns else "invalid_json"
            raise _Reject(reason, column, str(exc)) from None
        if value is None:
            row.pop(column, None)  # a JSON null is a NULL
        else:
            row[column] = value

    def _attributes(
        self, row: Row, *, per_value_limit: bool, dropped: list[str] | None = None
    ) -> dict[str, Any]:
        """The row's attributes. With `per_value_limit`, a value over Customer.io's limit
        rejects the row, or, given a `dropped` list, is left out and its column listed there."""
        attributes: dict[str, Any] = {}
        clear = self.mapping.clear_nulls
        # this loop runs for every column of every row: plain str/int/bool/float values, by far
        # the most common, take a short path that skips the general conversion
        for column in self._attribute_columns:
            value = row.get(column)
            if value is None:
                if clear:
                    attributes[column] = ""
                continue
            kind = type(value)
            if kind is str:
                if (
                    per_value_limit
                    and len(value) * 4 > _VALUE_LIMIT
                    and _oversized(column, value, dropped)
                ):
                    continue
                attributes[column] = value
                continue
            if kind is bool or (kind is int and _MIN_INT <= value <= _MAX_INT):
                attributes[column] = value
                continue
            if kind is float and math.isfinite(value):
                attributes[column] = value
                continue
            try:
                value = to_json_value(value)
            except ValueProblem as exc:
                raise _Reject("invalid_value", column, str(exc)) from None
            if per_value_limit and _oversized(column, value, dropped):
                continue
            attributes[column] = value
        return attributes

    def _dropped_list(self) -> list[str] | None:
        """A list to collect a row's oversized attributes in, when the mapping drops them."""
        return [] if self.mapping.oversized_attribute == "drop_attribute" else None

    def _row_key(self, row: Row, columns: tuple[str, ...]) -> str:
        """The text that names a row in reports: its values of `columns` (the table's primary
        key's where the row has none of them); made of any values, it never raises."""
        if len(columns) == 1:
            value = row.get(columns[0])
            if type(value) is str:  # the common case, once per row of every keyed table
                return value
        primary_key = self.compiled.primary_key
        if (
            primary_key
            and columns
            and columns != primary_key
            and all(row.get(c) is None for c in columns)
        ):
            columns = primary_key
        if len(columns) == 1:
            return _key_text(row.get(columns[0]))
        if columns:
            return recordable_json([row.get(c) for c in columns]).decode()
        try:
            whole = canonical_row_key(row)
        except ValueProblem:  # a row that cannot be an event's key still needs a name
            whole = recordable_json(row)
        return "row:" + hashlib.blake2b(whole, digest_size=8).hexdigest()

    # -- actions ---------------------------------------------------------------------------

    def map_rows(self, rows: Iterable[Row]) -> Mapped:
        with gc_paused():
            return self._map_rows(rows)

    def _map_rows(self, rows: Iterable[Row]) -> Mapped:
        action = self.mapping.action
        if action == "identify":
            return self._map_identify(rows)
        if action in KEYED_ACTIONS:
            return self._map_keyed(rows)
        return self._map_each(rows, self._BUILDERS[action])

    def _map_identify(self, rows: Iterable[Row]) -> Mapped:
        # Several rows for one person in a batch collapse into one operation, merged in row order:
        # the same end state as sending them one by one, but immune to requests being reordered.
        # Each operation is serialized as soon as it is built, so its dicts are freed while the
        # next row reuses their memory (fresh pages cost more than the mapping itself); only a
        # person seen again is read back from its bytes (a lossless round trip) and merged.
        built: list[Entry] = []
        positions: dict[str, int] = {}
        merged: dict[int, dict[str, Any]] = {}
        too_many: set[int] = set()
        rejections: list[Rejection] = []
        dropped_at: dict[int, list[Rejection]] = {}
        kind = self.mapping.identifier_type
        most = limits.MAX_ATTRIBUTES_PER_IDENTIFY
        dumps = orjson.dumps
        decode = self._reads
        dropping = self.mapping.oversized_attribute == "drop_attribute"
        rows_in = 0
        for row in rows:
            rows_in += 1
            values = row
            dropped: list[str] | None = [] if dropping else None
            try:
                if decode:
                    values = self._decoded(row)
                identifier = self._identifier(values)
                timestamp = self._timestamp(values)
                attributes = self._attributes(values, per_value_limit=True, dropped=dropped)
            except _Reject as reject:
                key = self._safe_identifier_key(values)
                rejections.append(Rejection(row, key, reject.reason, reject.field, reject.message))
                continue
            position = positions.get(identifier)
            if dropped:
                at = len(built) if position is None else position
                dropped_at.setdefault(at, []).extend(_dropped(row, identifier, dropped))
            if position is None:
                position = positions[identifier] = len(built)
                if len(attributes) > most:
                    too_many.add(position)
                op = identify_op(kind, identifier, attributes, timestamp)
                built.append(Entry(dumps(op), identifier, [row]))
                continue
            entry = built[position]
            op = merged.get(position)
            if op is None:
                op = merged[position] = orjson.loads(entry.data)
            combined = {**op.get("attributes", {}), **attributes}
            if combined:
                op["attributes"] = combined
            if len(combined) > most:
                too_many.add(position)
            if timestamp is not None:
                op["timestamp"] = max(timestamp, op.get("timestamp", timestamp))
            entry.rows.append(row)
        for position, op in merged.items():
            built[position].data = dumps(op)
        entries: list[Entry] = []
        sent_without: list[Rejection] = []
        for position, entry in enumerate(built):
            if position in too_many:
                rejections.extend(
                    Rejection(
                        row,
                        entry.row_key,
                        "too_many_attributes",
                        "attributes",
                        f"over Customer.io's {most} attributes per identify",
                    )
                    for row in entry.rows
                )
            elif len(entry.data) > limits.MAX_ENTRY_BYTES:
                rejections.extend(_too_large(entry.rows, entry.row_key, len(entry.data)))
            else:
                entries.append(entry)
                sent_without.extend(dropped_at.get(position, ()))
        return Mapped(entries, rejections, rows_in, dropped=sent_without)

    def _safe_identifier_key(self, row: Row) -> str:
        key = self._row_key(row, (self.mapping.identifier or "",))
        return key[: limits.MAX_IDENTIFIER_BYTES]

    def _map_keyed(self, rows: Iterable[Row]) -> Mapped:
        """event / page / screen / send_email: each row carries an id derived from its key."""
        entries: list[Entry] = []
        rejections: list[Rejection] = []
        id_columns = self.compiled.event_id_columns
        build = self._send_body if self.mapping.action == "send_email" else self._named_op
        decode = self._reads
        rows_in = 0
        for row in rows:
            rows_in += 1
            values = row
            try:
                if decode:
                    values = self._decoded(row)
                key = self._event_id(values, id_columns)
                op = build(values, key)
            except _Reject as reject:
                row_key = self._row_key(values, id_columns)
                rejections.append(
                    Rejection(row, row_key, reject.reason, reject.field, reject.message)
                )
                continue
            self._add_entry(entries, rejections, op, self._row_key(values, id_columns), [row], key)
        return Mapped(entries, rejections, rows_in)

    def _named_op(self, row: Row, event_id: str) -> dict[str, Any]:
        op: dict[str, Any] = {
            "type": "person",
            "action": self.mapping.action,
            "identifiers": {self.mapping.identifier_type: self._identifier(row)},
            "name": self._event_name(row),
            "id": event_id,
        }
        timestamp = self._timestamp(row)
        if timestamp is not None:
            op["timestamp"] = timestamp
        data = self._event_data(row, self.mapping.event_data_column)
        if data:
            op["attributes"] = data
        return op

    def _map_each(self, rows: Iterable[Row], build: _Builder) -> Mapped:
        """Actions with one operation per row and no idempotency key of their own."""
        entries: list[Entry] = []
        rejections: list[Rejection] = []
        sent_without: list[Rejection] = []
        rows_in = 0
        for row in rows:
            rows_in += 1
            values = row
            dropped = self._dropped_list()
            try:
                values = self._decoded(row)
                op = build(self, values, dropped)
            except _Reject as reject:
                row_key = self._natural_key(values)
                rejections.append(
                    Rejection(row, row_key, reject.reason, reject.field, reject.message)
                )
                continue
            row_key = self._natural_key(values)
            if self._add_entry(entries, rejections, op, row_key, [row]) and dropped:
                sent_without.extend(_dropped(row, row_key, dropped))
        return Mapped(entries, rejections, rows_in, dropped=sent_without)

    def _natural_key(self, row: Row) -> str:
        columns = [c for c in (self.mapping.identifier, self.mapping.object_id) if c]
        if self.mapping.device_token:
            columns.append(self.mapping.device_token)
        return self._row_key(row, tuple(columns)) if columns else self._row_key(row, ())

    def _person(self, row: Row, dropped: list[str] | None = None) -> dict[str, Any]:
        return {
            "type": "person",
            "action": self.mapping.action,
            "identifiers": {self.mapping.identifier_type: self._identifier(row)},
        }

    def _merge(self, row: Row, dropped: list[str] | None = None) -> dict[str, Any]:
        mapping = self.mapping
        return {
            "type": "person",
            "action": "merge",
            "primary": {mapping.identifier_type: self._identifier(row)},
            "secondary": {
                mapping.secondary_identifier_type: self._identifier(
                    row, mapping.secondary_identifier, mapping.secondary_identifier_type
                )
            },
        }

    def _device(self, row: Row, dropped: list[str] | None = None) -> dict[str, Any]:
        op = self._person(row)
        column = self.mapping.device_token
        assert column is not None
        token = row.get(column)
        if token is None or (isinstance(token, str) and not token.strip()):
            raise _Reject("missing_device_token", column, "the device token is empty")
        device: dict[str, Any] = {"token": str(token)}
        if self.mapping.action == "add_device":
            device["platform"] = self._platform(row)
            last_used = self._unix(row, self.mapping.device_last_used)
            if last_used is not None:
                device["last_used"] = last_used
            attributes = self._attributes(row, per_value_limit=True, dropped=dropped)
            if attributes:
                # device attributes are strings in Customer.io's API
                device["attributes"] = {
                    k: v if isinstance(v, str) else orjson.dumps(v).decode()
                    for k, v in attributes.items()
                }
        op["device"] = device
        return op

    def _platform(self, row: Row) -> str:
        if self.mapping.device_platform is not None:
            return self.mapping.device_platform
        column = self.mapping.device_platform_column
        assert column is not None
        value = row.get(column)
        platform = value.strip().lower() if isinstance(value, str) else None
        if platform not in ("ios", "android"):
            raise _Reject("invalid_device_platform", column, "the platform must be ios or android")
        return platform

    def _object_identifiers(self, row: Row) -> dict[str, str]:
        mapping = self.mapping
        if mapping.object_type_id is not None:
            type_id = mapping.object_type_id
        else:
            column = mapping.object_type_id_column
            assert column is not None
            value = row.get(column)
            if value is None or value == "":
                raise _Reject("missing_object_type_id", column, "the object type id is empty")
            type_id = _id_text(value, column, "object type id")
        column = mapping.object_id
        assert column is not None
        object_id = row.get(column)
        if object_id is None or (isinstance(object_id, str) and not object_id.strip()):
            raise _Reject("missing_object_id", column, "the object id is empty")
        text = _id_text(object_id, column, "object id")
        if _utf8_len(text, limits.MAX_IDENTIFIER_BYTES) > limits.MAX_IDENTIFIER_BYTES:
            raise _Reject(
                "identifier_too_long",
                column,
                f"the object id is over Customer.io's {limits.MAX_IDENTIFIER_BYTES}-byte limit",
            )
        return {"object_type_id": type_id, "object_id": text}

    def _relationship(self, row: Row, dropped: list[str] | None = None) -> dict[str, Any]:
        op = self._person(row)
        relationship: dict[str, Any] = {"identifiers": self._object_identifiers(row)}
        attributes = self._attributes(row, per_value_limit=False)
        if attributes:
            self._check_object_data(attributes)
            relationship["relationship_attributes"] = attributes
        op["cio_relationships"] = [relationship]
        return op

    def _object(self, row: Row, dropped: list[str] | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {
            "type": "object",
            "action": "identify" if self.mapping.action == "object_identify" else "delete",
            "identifiers": self._object_identifiers(row),
        }
        if self.mapping.action == "object_identify":
            attributes = self._attributes(row, per_value_limit=False)
            if attributes:
                self._check_object_data(attributes)
                op["attributes"] = attributes
        return op

    def _check_object_data(self, attributes: dict[str, Any]) -> None:
        if len(orjson.dumps(attributes)) > limits.MAX_OBJECT_DATA_BYTES:
            raise _Reject(
                "attributes_too_large",
                "attributes",
                f"the attributes are over Customer.io's {limits.MAX_OBJECT_DATA_BYTES}-byte limit",
            )

    def _send_body(self, row: Row, send_id: str) -> dict[str, Any]:
        """The App API `/v1/send/email` body of one row."""
        mapping = self.mapping
        body: dict[str, Any] = {
            "transactional_message_id": self._message_id(row),
            "identifiers": {mapping.identifier_type: self._identifier(row)},
        }
        if mapping.to is not None:
            to = row.get(mapping.to)
            if to is None or (isinstance(to, str) and not to.strip()):
                raise _Reject("missing_recipient", mapping.to, "the recipient is empty")
            body["to"] = str(to)
        data = self._event_data(row, mapping.message_data_column)
        if data:
            body["message_data"] = data
        send_at = self._unix(row, mapping.send_at)
        if send_at is not None:
            body["send_at"] = send_at
        for option in ("disable_message_retention", "send_to_unsubscribed", "queue_draft"):
            value = getattr(mapping, option)
            if value is not None:
                body[option] = value
        for name, column in (mapping.message_overrides or {}).items():
            value = row.get(column)
            if value is not None:
                try:
                    body[name] = to_json_value(value)
                except ValueProblem as exc:
                    raise _Reject("invalid_value", column, str(exc)) from None
        return body

    def _message_id(self, row: Row) -> str | int:
        mapping = self.mapping
        if mapping.transactional_message_id is not None:
            return mapping.transactional_message_id
        column = mapping.transactional_message_id_column
        assert column is not None
        value = row.get(column)
        if value is None or value == "" or isinstance(value, bool):
            raise _Reject("missing_message_id", column, "the transactional message id is empty")
        if isinstance(value, int):
            return value
        text = str(value)
        return int(text) if DIGITS.fullmatch(text) else text

    def _unix(self, row: Row, column: str | None) -> int | None:
        if column is None:
            return None
        value = row.get(column)
        if value is None:
            return None
        if type(value) is dt.datetime:  # the common case, without the general dispatch
            seconds = datetime_to_unix(value)
            if 0 <= seconds <= MAX_UNIX:
                return seconds
        try:
            return to_unix_seconds(value)
        except ValueProblem as exc:
            raise _Reject("invalid_timestamp", column, str(exc)) from None

    # each builder is given the list that collects the row's attributes left out for their size
    # (only add_device has a per-value limit among them)
    _BUILDERS: ClassVar[dict[str, _Builder]] = {
        "delete": _person,
        "suppress": _person,
        "unsuppress": _person,
        "merge": _merge,
        "add_device": _device,
        "delete_device": _device,
        "add_relationships": _relationship,
        "delete_relationships": _relationship,
        "object_identify": _object,
        "object_delete": _object,
    }

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

    def _event_data(self, row: Row, column: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {}
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
            try:
                key = canonical_key(values)
            except ValueProblem as exc:  # a NaN, an integer orjson cannot write, ...
                raise _Reject("invalid_event_id", ",".join(columns), str(exc)) from None
        else:
            try:
                key = canonical_row_key(row)
            except ValueProblem as exc:
                raise _Reject(
                    "invalid_event_id",
                    _unkeyable_column(row),
                    f"the event's key is the whole row (no event_id, no primary key), and this"
                    f" column's value has none: {exc}",
                ) from None
        return deterministic_ulid(self._table, key)

    def _add_entry(
        self,
        entries: list[Entry],
        rejections: list[Rejection],
        op: dict[str, Any],
        row_key: str,
        rows: list[Row],
        key: str | None = None,
    ) -> bool:
        """Serialize `op` into `entries`, or reject its rows when it is over the entry limit."""
        data = orjson.dumps(op)
        if len(data) > limits.MAX_ENTRY_BYTES:
            rejections.extend(_too_large(rows, row_key, len(data)))
            return False
        entries.append(Entry(data, row_key, rows, key))
        return True


ATTRIBUTE_DROPPED = "attribute_dropped"
"""The reason of the record of an attribute left out of a row that was sent."""
_DROPPED_MESSAGE = (
    f"the value is over Customer.io's {_VALUE_LIMIT}-byte attribute value limit; the row was"
    " sent without this attribute (oversized_attribute = drop_attribute)"
)


def _oversized(column: str, value: Any, dropped: list[str] | None) -> bool:
    """Whether a value is over the attribute value limit and is to be left out (listed in
    `dropped`); without a `dropped` list such a value rejects its row."""
    if _value_size(value) <= _VALUE_LIMIT:
        return False
    if dropped is None:
        raise _Reject(
            "attribute_value_too_long",
            column,
            f"the value is over Customer.io's {_VALUE_LIMIT}-byte attribute value limit",
        )
    dropped.append(column)
    return True


def _dropped(row: Row, row_key: str, columns: list[str]) -> list[Rejection]:
    return [Rejection(row, row_key, ATTRIBUTE_DROPPED, c, _DROPPED_MESSAGE) for c in columns]


def _too_large(rows: list[Row], row_key: str, size: int) -> list[Rejection]:
    return [
        Rejection(
            row,
            row_key,
            "entry_too_large",
            None,
            f"the operation is {size} bytes, over Customer.io's"
            f" {limits.MAX_ENTRY_BYTES}-byte limit per entry",
        )
        for row in rows
    ]


def identify_op(
    kind: str, identifier: str, attributes: dict[str, Any], timestamp: int | None
) -> dict[str, Any]:
    """A person identify operation; empty attributes and a missing timestamp are left out."""
    op: dict[str, Any] = {"type": "person", "action": "identify", "identifiers": {kind: identifier}}
    if attributes:
        op["attributes"] = attributes
    if timestamp is not None:
        op["timestamp"] = timestamp
    return op


def _id_text(value: Any, column: str, kind: str) -> str:
    """An identifier's text: numbers as integer text (7, 7.0 and Decimal('7.00') all give "7")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise _Reject("invalid_identifier", column, f"a boolean is not a valid {kind}")
    if isinstance(value, int):
        return str(value)
    try:
        number = to_json_value(value)
    except ValueProblem as exc:
        raise _Reject("invalid_identifier", column, str(exc)) from None
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    if isinstance(number, (int, str)):
        return str(number)
    raise _Reject("invalid_identifier", column, f"a {type(value).__name__} is not a valid {kind}")


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return recordable_json(value).decode()  # str() recurses, and is Python's, not JSON
    return str(value)


def _unkeyable_column(row: Row) -> str | None:
    """The first column (by name, as keys are written) whose value has no canonical key."""
    for name in sorted(row):
        try:
            canonical_key([row[name]])
        except ValueProblem:
            return name
    return None


def floor_divide(values: Any, divisor: int) -> Any:
    """`value // divisor` (rounded down, as Python does) of each value of an int64 Arrow array."""
    quotient = pc.divide(values, divisor)  # integer division truncates toward zero
    behind = pc.and_(pc.less(values, 0), pc.not_equal(pc.multiply(quotient, divisor), values))
    return pc.subtract(quotient, pc.cast(behind, pa.int64()))


UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# the unix seconds a datetime holds (years 1 to 9999), a day in from each end: local times of
# a zone further out may not be years a datetime holds
_LOCAL_SAFE_SECONDS = (-62_135_596_800 + 86_400, 253_402_300_799 - 86_400)


def _python_ready(batch: Any) -> tuple[Any, dict[str, dt.tzinfo]]:
    """The batch with its timestamps as values pyarrow makes datetimes of, the same instants
    (it raises on others, for the whole batch): nanoseconds rounded down to the microsecond,
    and a zoned column with a local time that may be past the years 1 to 9999 in UTC; for
    those columns, the zone to give back to each value that has a local time."""
    zones: dict[str, dt.tzinfo] = {}
    for index, field_ in enumerate(batch.schema):
        kind = field_.type
        if not pa.types.is_timestamp(kind) or (kind.unit != "ns" and kind.tz in (None, "UTC")):
            continue
        column = batch.column(index)
        if kind.unit == "ns":
            micros = floor_divide(pc.cast(column, pa.int64()), 1_000)
            column = pc.cast(micros, pa.timestamp("us", kind.tz))
        if kind.tz not in (None, "UTC"):
            unit = column.type.unit
            ends = pc.min_max(pc.cast(column, pa.int64()))
            lowest, highest = ends["min"].as_py(), ends["max"].as_py()
            first, last = (s * UNITS_PER_SECOND[unit] for s in _LOCAL_SAFE_SECONDS)
            if lowest is not None and not first <= lowest <= highest <= last:
                zones[field_.name] = pa.scalar(0, pa.timestamp("s", kind.tz)).as_py().tzinfo
                column = pc.cast(column, pa.timestamp(unit, "UTC"))
        batch = batch.set_column(index, field_.with_type(column.type), column)
    return batch, zones


def _in_zone(value: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    try:
        return value.astimezone(zone)
    except OverflowError:  # its local time is past year 9999 (or before year 1): UTC it is
        return value


def rows_from_arrow(batch: Any) -> Iterator[Row]:
    """Rows of a pyarrow RecordBatch in the same shape typed-jsonl gives (nulls left out).

    JSON columns keep their text: the mapper reads it (`RowMapper._decoded`). A timestamp is
    the datetime pyarrow makes of it, rounded down to the microsecond, and in UTC where the
    local time of its zone is not a year a datetime holds.
    """
    batch, zones = _python_ready(batch)
    for row in batch.to_pylist():
        yield {
            key: _in_zone(value, zones[key]) if key in zones else value
            for key, value in row.items()
            if value is not None
        }
