"""A columnar path for event, page and screen rows that arrive as a `pyarrow.RecordBatch`.

As for identify (`arrow_path`), the JSON of every operation is written by Arrow kernels and rows
any check flags go through the row path, which decides them. The event id, what Customer.io
de-duplicates on, must be the one the row path gives for the same row, or a rerun that took the
other path would create the event twice: the key's canonical JSON is written column by column
exactly as `canonical_key` writes it (column types without a proven columnar form send the
batch down the row path), each key is hashed, and Arrow kernels write the ids' base32 text.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination import limits
from cio_destination._values import _MAX_UNIX, ULID_PAIR_SHIFTS, ULID_PAIRS, ULID_PERSON
from cio_destination.arrow_path import (
    _NOT_SPACE,
    _UNITS,
    COLUMNAR_PATH,
    _any_byte_outside,
    _attribute_pieces,
    _float_text,
    _is_text,
    _json_string_body,
    as_record_batch,
    attribute_texts,
    blank_texts,
    by_row_path,
    comma_listed,
    finish,
    identifier_flags,
    identifier_text,
    join_pieces,
    midnight_seconds,
    rows_to_batch,
    timestamp_pieces,
)
from cio_destination.operations import Mapped, Row, RowMapper, floor_divide, gc_paused

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
    keys = _event_keys(batch, compiled.event_id_columns, flags)
    if name_pieces is None or keys is None:
        return by_row_path(mapper, batch, source_rows)
    event_ids = _event_ids(compiled.table, keys)

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
        event_ids,
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
        keys=event_ids,
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


# -- event ids -----------------------------------------------------------------------------------


def _event_keys(batch: Any, id_columns: tuple[str, ...], flags: list[Any]) -> Any | None:
    """Each row's `canonical_key` bytes, as text: of its event id columns, or of the whole row."""
    names = batch.schema.names
    rows = batch.num_rows
    if id_columns:
        texts = []
        present = []
        for name in id_columns:
            if name not in names:
                texts.append("null")
                continue
            text = _canonical_text(batch.column(name), flags)
            if text is None:
                return None
            texts.append(text.fill_null("null"))
            present.append(batch.column(name).is_valid())
        if not present:
            return None  # no key column in the batch (NULL in every row): the row path rejects
        any_value = present[0]
        for more in present[1:]:
            any_value = pc.or_(any_value, more)
        flags.append(pc.invert(any_value))  # the row path rejects: nothing to key on
        pieces: list[Any] = ["["]
        for index, text in enumerate(texts):
            pieces += ["," if index else "", text]
        pieces.append("]")
        return join_pieces(pieces)
    # no key columns: the whole row, [[name, value], ...] by name, null values left out
    items = []
    for name in sorted(names):
        column = batch.column(name)
        if pa.types.is_null(column.type):
            continue
        text = _canonical_text(column, flags)
        if text is None:
            return None
        items.append(("[" + orjson.dumps(name).decode() + ",", text, "]", column.null_count > 0))
    if not items:
        return pa.array(["[]"] * rows, pa.string())
    return join_pieces(["[", comma_listed(items), "]"])


def _canonical_text(column: Any, flags: list[Any]) -> Any | None:
    """orjson's text of `_canonical(value)` for each value (null where the value is null); rows
    this cannot write the same way are added to `flags`. None for a type it does not handle."""
    kind = column.type
    if _is_text(kind):
        try:
            column = pc.cast(column, pa.string())
        except pa.ArrowInvalid:
            return None
        return pc.binary_join_element_wise('"', _json_string_body(column), '"', "")
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "true", "false")
    if pa.types.is_date32(kind) or pa.types.is_date64(kind):  # its midnight's unix seconds
        return pc.cast(midnight_seconds(column), pa.string())
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.string())
    if pa.types.is_floating(kind):
        values = pc.cast(column, pa.float64())
        flags.append(pc.invert(pc.is_finite(values)))
        whole = pc.and_(pc.equal(pc.floor(values), values), pc.less(pc.abs(values), _MAX_EXACT_INT))
        flags.append(pc.and_(pc.equal(pc.floor(values), values), pc.invert(whole)))
        as_int = pc.cast(pc.cast(pc.if_else(whole, values, 0.0), pa.int64()), pa.string())
        return pc.if_else(whole, as_int, _float_text(values))  # whole floats key as integers
    if pa.types.is_timestamp(kind):
        return _iso_text(column, flags)
    return None


def _iso_text(column: Any, flags: list[Any]) -> Any:
    """`datetime.astimezone(UTC).isoformat()` of each timestamp (naive ones are UTC), in quotes;
    nanoseconds are rounded down to the microsecond, as the row path's datetimes are."""
    raw = pc.cast(column, pa.int64())
    if column.type.unit == "ns":
        micros = floor_divide(raw, 1_000)
    else:
        micros = pc.multiply(raw, 1_000_000 // _UNITS[column.type.unit])
    seconds = pc.divide(micros, 1_000_000)
    # 1970 to 9999 only: integer division and four-digit years need no care there
    flags.append(pc.or_(pc.less(micros, 0), pc.greater(seconds, _MAX_UNIX)))
    fraction = pc.subtract(micros, pc.multiply(seconds, 1_000_000))
    # Arrow's text of a naive timestamp[s] is "YYYY-MM-DD HH:MM:SS" (strftime is 15x slower)
    clock = pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.string())
    clock = pc.replace_substring(clock, " ", "T", max_replacements=1)
    digits = pc.utf8_lpad(pc.cast(fraction, pa.string()), 6, "0")
    dotted = pc.if_else(pc.equal(fraction, 0), "", pc.binary_join_element_wise(".", digits, ""))
    return pc.binary_join_element_wise('"', clock, dotted, '+00:00"', "")


def _event_ids(namespace: str, keys: Any) -> Any:
    """`deterministic_ulid(namespace, key)` of each key, as a string array.

    The keys are hashed one by one; the base32 text is written by Arrow kernels: the 128-bit
    digests become two uint64 columns, and each pair of chars is a 10-bit field of them looked
    up in the same table `deterministic_ulid` uses.
    """
    base = hashlib.blake2b(digest_size=16, person=ULID_PERSON)
    base.update(namespace.encode("utf-8") + b"\x00")
    digests = []
    for key in keys.view(pa.binary()).to_pylist():
        digest = base.copy()
        digest.update(key or b"")
        digests.append(digest.digest())
    count = len(digests)
    # little-endian words: bytes 15..8 of a big-endian digest are its low 64 bits
    low = _words(b"".join([d[:7:-1] for d in digests]), count)
    high = _words(b"".join([d[7::-1] for d in digests]), count)
    pairs = []
    for shift in ULID_PAIR_SHIFTS:
        if shift >= 64:
            field = pc.shift_right(high, _u64(shift - 64))
        elif shift + 10 <= 64:
            field = pc.shift_right(low, _u64(shift))
        else:  # straddles the words: the low word's top bits, under the high word's bottom ones
            below = 64 - shift
            field = pc.bit_wise_or(
                pc.shift_left(pc.bit_wise_and(high, _u64((1 << (10 - below)) - 1)), _u64(below)),
                pc.shift_right(low, _u64(shift)),
            )
        pairs.append(pc.take(_PAIRS, pc.bit_wise_and(field, _u64(1023))))
    return pc.binary_join_element_wise(*pairs, "")


_PAIRS = pa.array(ULID_PAIRS, pa.string())


def _u64(value: int) -> Any:
    return pa.scalar(value, pa.uint64())


def _words(data: bytes, count: int) -> Any:
    return pa.Array.from_buffers(pa.uint64(), count, [None, pa.py_buffer(data)])
