"""A columnar fast path for identify rows that arrive as a `pyarrow.RecordBatch`.

Checks that the row path makes value by value are made here column by column with
`pyarrow.compute` (text lengths, finite floats, timestamps to unix seconds, their range), and
values are taken out of Arrow one column at a time. Any row a check flags, any identifier seen
twice in the batch, and any column of a type this path does not convert itself go through the
row path instead, so what is sent and what is rejected is exactly what the row path would give;
only the cost differs. Source rows are built from the batch only when a rejection needs them.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination import limits
from cio_destination._values import _MAX_UNIX, ValueProblem, to_unix_seconds
from cio_destination.operations import (
    _PHONE,
    Entry,
    LazyRow,
    Mapped,
    RowMapper,
    _utf8_len,
    gc_paused,
    identify_op,
    rows_from_arrow,
)

_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_temporal(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date32(kind) or pa.types.is_date64(kind)


def _floor_seconds(column: Any) -> Any:
    """Unix seconds (floored, as the row path floors) of a timestamp or date column."""
    kind = column.type
    if pa.types.is_date32(kind):
        return pc.multiply(pc.cast(pc.cast(column, pa.int32()), pa.int64()), 86_400)
    if pa.types.is_date64(kind):
        raw, unit = pc.cast(pc.cast(column, pa.timestamp("ms")), pa.int64()), 1_000
    else:
        raw, unit = pc.cast(column, pa.int64()), _UNITS[kind.unit]
    if unit == 1:
        return raw
    quotient = pc.divide(raw, unit)  # integer division truncates toward zero
    behind = pc.and_(pc.less(raw, 0), pc.not_equal(pc.multiply(quotient, unit), raw))
    return pc.subtract(quotient, pc.cast(behind, pa.int64()))


def _flagged(mask: Any) -> list[int]:
    return pc.indices_nonzero(mask.fill_null(False)).to_pylist()


def map_identify_batch(mapper: RowMapper, batch: Any) -> Mapped:
    """Identify operations for a RecordBatch, identical to `mapper.map_rows` on its rows."""
    with gc_paused():
        return _map_identify_batch(mapper, batch)


def _map_identify_batch(mapper: RowMapper, batch: Any) -> Mapped:
    mapping = mapper.mapping
    json_columns = mapper.compiled.json_columns
    names = set(batch.schema.names)
    attribute_columns = [c for c in mapper.compiled.attribute_columns if c in names]
    id_column = mapping.identifier
    if (
        mapping.clear_nulls
        or id_column not in names
        or len(attribute_columns) > limits.MAX_ATTRIBUTES_PER_IDENTIFY
        or (mapping.timestamp is not None and mapping.timestamp not in names)
    ):
        return mapper.map_rows(rows_from_arrow(batch, json_columns))
    ident = batch.column(id_column)
    if pa.types.is_integer(ident.type):
        ident = pc.cast(ident, pa.string())
    elif not _is_text(ident.type):
        return mapper.map_rows(rows_from_arrow(batch, json_columns))
    identifiers = ident.to_pylist()
    kind = mapping.identifier_type

    slow: set[int] = set()
    counts = pc.value_counts(ident)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    duplicated = set(repeated.to_pylist())
    for index, text in enumerate(identifiers):
        if (
            text is None
            or text in duplicated
            or not text.strip()
            or _utf8_len(text, limits.MAX_IDENTIFIER_BYTES) > limits.MAX_IDENTIFIER_BYTES
            or (kind == "email" and "@" not in text)
            or (kind == "phone" and not _PHONE.match(text))
        ):
            slow.add(index)

    timestamps: list[Any] = [None] * batch.num_rows
    if mapping.timestamp is not None:
        column = batch.column(mapping.timestamp)
        if _is_temporal(column.type):
            seconds = _floor_seconds(column)
            slow.update(_flagged(pc.or_(pc.less(seconds, 0), pc.greater(seconds, _MAX_UNIX))))
            timestamps = seconds.to_pylist()
        else:
            for index, value in enumerate(column.to_pylist()):
                if value is not None:
                    try:
                        timestamps[index] = to_unix_seconds(value)
                    except ValueProblem:
                        slow.add(index)

    columns: list[list[Any]] = []
    has_nulls = False
    for name in attribute_columns:
        column = batch.column(name)
        kind_ = column.type
        if name in json_columns:
            return mapper.map_rows(rows_from_arrow(batch, json_columns))
        if _is_text(kind_):
            too_long = pc.greater(pc.binary_length(column), limits.MAX_ATTRIBUTE_VALUE_BYTES)
            slow.update(_flagged(too_long))
        elif pa.types.is_floating(kind_):
            slow.update(_flagged(pc.invert(pc.is_finite(column))))
        elif _is_temporal(kind_):
            column = _floor_seconds(column)
            slow.update(_flagged(pc.or_(pc.less(column, 0), pc.greater(column, _MAX_UNIX))))
        elif not (pa.types.is_integer(kind_) or pa.types.is_boolean(kind_)):
            # decimals, nested and other types: the row path converts them
            return mapper.map_rows(rows_from_arrow(batch, json_columns))
        has_nulls = has_nulls or column.null_count > 0
        columns.append(column.to_pylist())

    entries: list[Entry] = []
    dumps = orjson.dumps
    for index, (identifier, timestamp, values) in enumerate(
        zip(
            identifiers,
            timestamps,
            zip(*columns, strict=True) if columns else repeat(()),
            strict=False,
        )
    ):
        if index in slow:
            continue
        if has_nulls:
            attributes = {
                k: v for k, v in zip(attribute_columns, values, strict=True) if v is not None
            }
        else:
            attributes = dict(zip(attribute_columns, values, strict=True))
        data = dumps(identify_op(kind, identifier, attributes, timestamp))
        if len(data) > limits.MAX_ENTRY_BYTES:
            slow.add(index)
            continue
        entries.append(Entry(data, identifier, [LazyRow(batch, index, json_columns)]))

    rejections = []
    if slow:
        rest = mapper.map_rows(
            rows_from_arrow(batch.take(pa.array(sorted(slow), pa.int64())), json_columns)
        )
        entries.extend(rest.entries)
        rejections = rest.rejections
    return Mapped(entries, rejections, batch.num_rows)


def source_row_hashes(mapper: RowMapper, batch: Any) -> tuple[list[Any], list[int]] | None:
    """Per row of an identify batch: its identifier text and a 64-bit hash of its mapped values.

    `changes_only` compares these with the hashes stored when the person was last accepted and
    maps only the rows that differ. None when a column's type has no plain text form here, or
    an identifier repeats in the batch (then the order of the rows matters: map them all).
    """
    import hashlib

    mapping = mapper.mapping
    names = set(batch.schema.names)
    columns = [mapping.identifier, *mapper.compiled.attribute_columns]
    if mapping.timestamp:
        columns.append(mapping.timestamp)
    texts = []
    for name in columns:
        if name not in names:
            continue
        column = batch.column(name)
        kind = column.type
        if _is_temporal(kind):
            column = pc.cast(column, pa.int64()) if pa.types.is_timestamp(kind) else column
        elif not (
            _is_text(kind)
            or pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_decimal(kind)
        ):
            return None
        text = pc.cast(column, pa.string()) if not _is_text(column.type) else column
        # "\x00" marks a null, distinct from an empty string
        texts.append(pc.binary_join_element_wise("\x01", text, "").fill_null("\x00"))
    ident = batch.column(mapping.identifier)
    ident = pc.cast(ident, pa.string()) if pa.types.is_integer(ident.type) else ident
    if not _is_text(ident.type):
        return None
    counts = pc.value_counts(ident)
    if pc.any(pc.greater(counts.field("counts"), 1)).as_py():
        return None
    joined = pc.binary_join_element_wise(*texts, "\x1f") if len(texts) > 1 else texts[0]
    blake = hashlib.blake2b
    hashes = [
        int.from_bytes(blake(row.encode(), digest_size=8).digest(), "big", signed=True)
        for row in joined.to_pylist()
    ]
    return ident.to_pylist(), hashes
