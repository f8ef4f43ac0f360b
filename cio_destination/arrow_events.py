"""A columnar path for event, page and screen rows that arrive as a `pyarrow.RecordBatch`.

As for identify (`arrow_path`), the JSON of every operation is written by Arrow kernels and rows
any check flags go through the row path, which decides them. The event id, what Customer.io
de-duplicates on, must be the one the row path gives for the same row, or a rerun that took the
other path would create the event twice: the key's canonical JSON is written column by column
exactly as `canonical_key` writes it (column types without a proven columnar form send the
batch down the row path), each key is hashed, and Arrow kernels write the ids' base32 text.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination import limits
from cio_destination.arrow_path import (
    _NOT_SPACE,
    COLUMNAR_PATH,
    _any_byte_outside,
    _attribute_pieces,
    _is_text,
    _json_string_body,
    as_record_batch,
    attribute_texts,
    blank_texts,
    by_row_path,
    finish,
    identifier_flags,
    identifier_text,
    join_pieces,
    rows_to_batch,
    timestamp_pieces,
)
from cio_destination.event_ids import event_ids, event_keys
from cio_destination.operations import Mapped, Row, RowMapper, gc_paused

NAMED_ACTIONS = ("event", "page", "screen")
_ATTRIBUTES_HEAD = ',"attributes":'
_MAX_EXACT_INT = 2**53  # floats up to here are whole numbers Arrow casts to int64 exactly


def map_named_batch(mapper: RowMapper, batch: Any, source_rows: list[Row] | None = None) -> Mapped:
    """Event / page / screen operations for a RecordBatch, identical to `mapper.map_rows` on
    its rows (or on `source_rows`, the dicts the batch was made of)."""
    batch = as_record_batch(batch)
    if batch is None:
        return Mapped([], [], 0)
    if not COLUMNAR_PATH.enabled:
        return by_row_path(mapper, batch, source_rows)
    with gc_paused():
        return _map_named_batch(mapper, batch, source_rows)


def map_named_rows(mapper: RowMapper, rows: list[Row], columns: dict[str, Any]) -> Mapped:
    """Event / page / screen operations for dict rows, identical to `mapper.map_rows(rows)`:
    through the columnar path when `rows_to_batch` can make them a batch of the columns used."""
    if not COLUMNAR_PATH.enabled:
        return mapper.map_rows(rows)
    mapping = mapper.mapping
    compiled = mapper.compiled
    wanted: list[str | None]
    if compiled.event_id_columns:
        wanted = [
            mapping.identifier,
            *compiled.attribute_columns,
            mapping.timestamp,
            mapping.event_name_column,
            *compiled.event_id_columns,
        ]
    else:  # the whole row is the key: every column a row has must be in the batch
        present = set().union(*rows) if rows else set()
        if not present <= columns.keys():
            return mapper.map_rows(rows)
        wanted = list(columns)
    batch = None if mapping.clear_nulls else rows_to_batch(mapper, rows, columns, wanted)
    if batch is None:
        return mapper.map_rows(rows)
    return map_named_batch(mapper, batch, source_rows=rows)


def _map_named_batch(mapper: RowMapper, batch: Any, source_rows: list[Row] | None) -> Mapped:
    mapping = mapper.mapping
    compiled = mapper.compiled
    names = set(batch.schema.names)
    attribute_columns = [c for c in compiled.attribute_columns if c in names]
    ident = identifier_text(batch, mapping.identifier)
    name_column = mapping.event_name_column
    # JSON text keys and travels as the value it holds: the row path reads it
    read_as_json = [*attribute_columns, *(compiled.event_id_columns or names)]
    if (
        ident is None
        or mapping.action not in NAMED_ACTIONS
        or mapping.clear_nulls
        or mapping.event_data_column is not None
        or (mapping.timestamp is not None and mapping.timestamp not in names)
        or (name_column is not None and name_column not in names)
        or any(name in compiled.json_columns for name in read_as_json)
    ):
        return by_row_path(mapper, batch, source_rows)
    kind = mapping.identifier_type
    flags = identifier_flags(ident, kind)

    name_pieces = _name_pieces(mapping.event_name, batch, name_column, flags)
    keys = event_keys(batch, compiled.event_id_columns, flags)
    if name_pieces is None or keys is None:
        return by_row_path(mapper, batch, source_rows)
    ids = event_ids(compiled.table, keys)

    pieces: list[Any] = [
        '{"type":"person","action":'
        + orjson.dumps(mapping.action).decode()
        + ',"identifiers":{'
        + orjson.dumps(kind).decode()
        + ':"',
        _json_string_body(ident),
        '"},"name":"',
        *name_pieces,
        '","id":"',
        ids,
        '"',
    ]
    pieces += timestamp_pieces(batch, mapping.timestamp, flags)
    attributes = attribute_texts(batch, attribute_columns, flags, value_limit=False)
    if attributes is None:
        return by_row_path(mapper, batch, source_rows)
    if attributes:
        data = join_pieces(["", *_attribute_pieces(attributes)])  # "" where there are none
        too_big = limits.MAX_EVENT_DATA_BYTES + len(_ATTRIBUTES_HEAD)
        flags.append(pc.greater(pc.binary_length(data), too_big))
        pieces.append(data)
    pieces.append("}")

    id_columns = compiled.event_id_columns
    row_keys = None
    if len(id_columns) == 1 and id_columns[0] in names:
        column = batch.column(id_columns[0])
        if _is_text(column.type) or pa.types.is_integer(column.type):
            row_keys = pc.cast(column, pa.string()).fill_null("")  # str(value), "" for None
    return finish(
        mapper,
        batch,
        source_rows,
        pieces,
        flags,
        row_keys,
        keys=ids,
        row_key_of=lambda row: mapper._row_key(row, id_columns),
    )


def _name_pieces(
    constant: str | None, batch: Any, column_name: str | None, flags: list[Any]
) -> list[Any] | None:
    """The event name's JSON string body: the mapping's constant, or a text column's values."""
    if constant is not None:
        if len(constant.encode("utf-8")) > limits.MAX_EVENT_NAME_BYTES:
            return None  # the row path rejects every row, saying why
        return [orjson.dumps(constant).decode()[1:-1]]
    assert column_name is not None
    column = batch.column(column_name)
    if not _is_text(column.type):
        return None  # the row path writes other values as their text
    try:
        column = pc.cast(column, pa.string())
    except pa.ArrowInvalid:
        return None
    length = pc.binary_length(column)
    flags += [
        column.is_null(),
        pc.equal(length, 0),
        pc.greater(length, limits.MAX_EVENT_NAME_BYTES),
    ]
    if _any_byte_outside(column, _NOT_SPACE):
        flags.append(blank_texts(column))
    return [_json_string_body(column)]
