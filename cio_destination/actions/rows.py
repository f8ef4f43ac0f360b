"""The row path: a table's rows read one at a time under its compiled mapping.

A `RowReader` reads what every action's row builder needs from a row (its identifier, attributes,
timestamps, event data, object identifiers, the key that names it in reports) through the rules of
`limits`, `values` and `event_ids`; a value a rule refuses rejects the row with the rule's reason.
`map_each` and `map_keyed` are the two ways most actions go through their rows: one operation a
row, or one operation a row that carries an idempotency key. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from cio_destination.entries import Entry, Mapped, Rejection, Row
from cio_destination.event_ids import canonical_row_key, row_event_id
from cio_destination.limits import (
    Reject,
    attribute_values,
    check_event_data,
    check_object_data,
    dropped_records,
    entry_rejections,
    object_id_text,
    object_type_id_text,
    person_identifier,
    unwritable,
)
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.values import (
    MAX_UNIX,
    ValueProblem,
    datetime_to_unix,
    int_text,
    parse_json_object,
    parse_json_text,
    recordable_json,
    to_json_value,
    to_unix_seconds,
)

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


class RowReader:
    """Reads the rows of one table with its compiled mapping, for the actions' row builders.

    Rows from Arrow hold the text of every JSON column; dict rows dlt wrote (`dlt_decoded`)
    hold what dlt read from the text of the columns it types as json, so only the mapping's
    other `json_columns` are text to read there. A JSON column the mapping does not read stays
    as it is.
    """

    def __init__(self, compiled: CompiledMapping, *, dlt_decoded: bool = False) -> None:
        self.compiled = compiled
        self.mapping = compiled.mapping
        self.table = compiled.table
        self.dlt_decoded = dlt_decoded
        self._attribute_columns = compiled.attribute_columns
        self._json_columns = compiled.json_read
        if dlt_decoded:
            typed = compiled.typed_json
            self._json_columns = tuple(c for c in compiled.json_read if c not in typed)
        self._variants = compiled.variants
        self._declared_json = compiled.declared_json.intersection(compiled.json_read)
        self.reads_values = bool(self._json_columns or compiled.variants)
        """Whether `decoded` changes rows (JSON text to read, variant columns to fold)."""
        data_columns = (self.mapping.event_data_column, self.mapping.message_data_column)
        self._data_columns = frozenset(c for c in data_columns if c)

    def identifier(self, row: Row, column: str | None = None, kind: str | None = None) -> str:
        """The person's identifier (or that of `column`, of `kind`), as `limits` checks it."""
        column = column or self.mapping.identifier
        assert column is not None
        return person_identifier(row.get(column), column, kind or self.mapping.identifier_type)

    def timestamp(self, row: Row) -> int | None:
        """The unix seconds of the mapping's `timestamp` column (None without one)."""
        return self.unix(row, self.mapping.timestamp)

    def unix(self, row: Row, column: str | None) -> int | None:
        """The unix seconds of the value of `column` (None for no column or no value)."""
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
            raise Reject("invalid_timestamp", column, str(exc)) from None

    def decoded(self, row: Row) -> Row:
        """The row as the mapping reads it: JSON text read as the value it holds, and values
        dlt stored in a variant column (one that did not fit the column's type) back in their
        column.

        Done once, before anything reads the row, so keys, attributes and data see one value
        whether the row came as a dict (JSON already decoded) or from Arrow (JSON as text).
        """
        if not self.reads_values:
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
            raise Reject(reason, column, str(exc)) from None
        if value is None:
            row.pop(column, None)  # a JSON null is a NULL
        else:
            row[column] = value

    def attributes(
        self, row: Row, *, per_value_limit: bool, dropped: list[str] | None = None
    ) -> dict[str, Any]:
        """The row's attributes (see `limits.attribute_values`)."""
        return attribute_values(
            row,
            self._attribute_columns,
            clear_nulls=self.mapping.clear_nulls,
            per_value_limit=per_value_limit,
            dropped=dropped,
        )

    def dropped_list(self) -> list[str] | None:
        """A list to collect a row's oversized attributes in, when the mapping drops them."""
        return [] if self.mapping.oversized_attribute == "drop_attribute" else None

    def event_data(self, row: Row, column: str | None) -> dict[str, Any]:
        """Event (or message) data: the JSON object of `column`, then the row's attributes."""
        data: dict[str, Any] = {}
        if column is not None:
            raw = row.get(column)
            if raw is not None:
                try:
                    data = to_json_value(parse_json_object(raw))
                except ValueProblem as exc:
                    raise Reject("invalid_event_data", column, str(exc)) from None
        attributes = self.attributes(row, per_value_limit=False)
        if attributes:
            data.update(attributes)
        check_event_data(data, column or "attributes")
        return data

    def object_attributes(self, row: Row) -> dict[str, Any]:
        """The row's object (or relationship) attributes, within Customer.io's limit for them."""
        attributes = self.attributes(row, per_value_limit=False)
        if attributes:
            check_object_data(attributes)
        return attributes

    def relationship(self, row: Row, identifiers: dict[str, Any]) -> dict[str, Any]:
        """One item of `cio_relationships`: the other side's `identifiers`, and the row's
        relationship attributes where it has any."""
        relationship: dict[str, Any] = {"identifiers": identifiers}
        attributes = self.object_attributes(row)
        if attributes:
            relationship["relationship_attributes"] = attributes
        return relationship

    def object_identifiers(self, row: Row) -> dict[str, str]:
        """`{"object_type_id": ..., "object_id": ...}` of the mapping's object."""
        mapping = self.mapping
        if mapping.object_type_id is not None:
            type_id = mapping.object_type_id
        else:
            column = mapping.object_type_id_column
            assert column is not None
            type_id = object_type_id_text(row.get(column), column)
        column = mapping.object_id
        assert column is not None
        return {"object_type_id": type_id, "object_id": object_id_text(row.get(column), column)}

    def key_columns(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """The columns of the mapping keys that name a row (an action's `row_key`); `event_id`
        stands for the event id columns."""
        columns: list[str] = []
        for key in keys:
            if key == "event_id":
                columns.extend(self.compiled.event_id_columns)
            elif getattr(self.mapping, key):
                columns.append(getattr(self.mapping, key))
        return tuple(columns)

    def row_key(self, row: Row, columns: tuple[str, ...]) -> str:
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

    def add_entry(
        self,
        entries: list[Entry],
        rejections: list[Rejection],
        data: bytes,
        row_key: str,
        rows: list[Row],
        key: str | None = None,
    ) -> bool:
        """Add a serialized operation to `entries`, or reject its rows when it is over the
        entry limit."""
        too_large = entry_rejections(rows, row_key, data)
        if too_large:
            rejections.extend(too_large)
            return False
        entries.append(Entry(data, row_key, rows, key))
        return True


Builder = Callable[[RowReader, Row, Any], dict[str, Any]]
"""An action's row builder: the operation of one (decoded) row. Its third argument is the
list that collects attributes left out for their size (`map_each`), or the row's idempotency
key (`map_keyed`)."""


def map_each(
    reader: RowReader, rows: Iterable[Row], build: Builder, key_columns: tuple[str, ...]
) -> Mapped:
    """One operation per row, named by its `key_columns`, with no idempotency key."""
    entries: list[Entry] = []
    rejections: list[Rejection] = []
    sent_without: list[Rejection] = []
    rows_in = 0
    for row in rows:
        rows_in += 1
        values = row
        dropped = reader.dropped_list()
        try:
            values = reader.decoded(row)
            data = orjson.dumps(build(reader, values, dropped))
        except (Reject, orjson.JSONEncodeError) as problem:
            reject = as_reject(problem, values)
            row_key = reader.row_key(values, key_columns)
            rejections.append(Rejection(row, row_key, reject.reason, reject.field, reject.message))
            continue
        row_key = reader.row_key(values, key_columns)
        if reader.add_entry(entries, rejections, data, row_key, [row]) and dropped:
            sent_without.extend(dropped_records(row, row_key, dropped))
    return Mapped(entries, rejections, rows_in, dropped=sent_without)


def map_keyed(
    reader: RowReader, rows: Iterable[Row], build: Builder, key_columns: tuple[str, ...]
) -> Mapped:
    """One operation per row, carrying the id derived from its event id columns (`key_columns`)."""
    entries: list[Entry] = []
    rejections: list[Rejection] = []
    id_columns = reader.compiled.event_id_columns
    table = reader.table
    decode = reader.reads_values
    rows_in = 0
    for row in rows:
        rows_in += 1
        values = row
        try:
            if decode:
                values = reader.decoded(row)
            key = row_event_id(values, id_columns, table)
            data = orjson.dumps(build(reader, values, key))
        except (Reject, orjson.JSONEncodeError) as problem:
            reject = as_reject(problem, values)
            row_key = reader.row_key(values, key_columns)
            rejections.append(Rejection(row, row_key, reject.reason, reject.field, reject.message))
            continue
        reader.add_entry(entries, rejections, data, reader.row_key(values, key_columns), [row], key)
    return Mapped(entries, rejections, rows_in)


def as_reject(problem: Exception, row: Row) -> Reject:
    """A row builder's `Reject` as it is; orjson's refusal to write the row's operation as the
    rejection of the row (`limits.unwritable`)."""
    return problem if isinstance(problem, Reject) else unwritable(row, problem)


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return recordable_json(value).decode()  # str() recurses, and is Python's, not JSON
    if isinstance(value, int):
        return int_text(value)
    return str(value)


def person_op(reader: RowReader, row: Row, dropped: list[str] | None = None) -> dict[str, Any]:
    """The operation of the mapping's action on the row's person, with nothing else: the row
    builder of `delete`, `suppress` and `unsuppress`, and the base of other person actions."""
    return {
        "type": "person",
        "action": reader.mapping.action,
        "identifiers": {reader.mapping.identifier_type: reader.identifier(row)},
    }
