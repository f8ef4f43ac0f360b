"""A columnar fast path for identify rows that arrive as a `pyarrow.RecordBatch`.

The JSON of every operation is written by Arrow kernels, column by column: strings are escaped
only where a byte needs it (a scan of the batch's text buffer finds none in the common case),
numbers take Arrow's text where it is the text orjson writes and orjson's where it is not, and
one element-wise join puts each row's operation together. The checks the row path makes value by
value (identifier text and length, value sizes, finite floats, timestamp range) are made on
whole columns. Any row a check flags, any identifier seen twice in the batch, and any column of
a type this path does not convert itself go through the row path instead, so what is sent and
what is rejected is byte for byte what the row path would give; only the cost differs. The
operations stay in Arrow (an `EntryBlock`) until the request bodies are joined.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
from array import array
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination import limits
from cio_destination.blocks import EntryBlock
from cio_destination.framing import frame_column
from cio_destination.operations import (
    _PHONE,
    UNITS_PER_SECOND,
    Mapped,
    Row,
    RowMapper,
    floor_divide,
    gc_paused,
    rows_from_arrow,
)
from cio_destination.values import MAX_UNIX, ValueProblem, to_unix_seconds

_UNITS = UNITS_PER_SECOND


class ColumnarPath:
    """Whether the columnar paths run, and how many rows' operations they have written.

    Switched off (`enabled = False`, or `CIO_DESTINATION_COLUMNAR=0` in the environment of the
    process), every row takes the row path, which must give the same operations and rejections
    byte for byte; tests compare the two and read `rows` to know the columnar path really ran.
    """

    def __init__(self) -> None:
        self.enabled = os.environ.get("CIO_DESTINATION_COLUMNAR", "1") != "0"
        self._rows = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        """Rows whose operations Arrow kernels wrote, since the process started."""
        return self._rows

    def wrote(self, rows: int) -> None:
        with self._lock:
            self._rows += rows


COLUMNAR_PATH = ColumnarPath()


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_temporal(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date32(kind) or pa.types.is_date64(kind)


def midnight_seconds(column: Any) -> Any:
    """Unix seconds of the midnight (UTC) of each date of a date32 or date64 column.

    A date64 holds milliseconds and may hold a time of day (Arrow's spec says it should not):
    the row path's `datetime.date` is the day it falls in, so whole days are counted here too.
    """
    if pa.types.is_date32(column.type):
        days = pc.cast(pc.cast(column, pa.int32()), pa.int64())
    else:
        days = floor_divide(pc.cast(pc.cast(column, pa.timestamp("ms")), pa.int64()), 86_400_000)
    return pc.multiply(days, 86_400)


def _floor_seconds(column: Any) -> Any:
    """Unix seconds (floored, as the row path floors) of a timestamp or date column."""
    kind = column.type
    if not pa.types.is_timestamp(kind):
        return midnight_seconds(column)
    raw, unit = pc.cast(column, pa.int64()), _UNITS[kind.unit]
    return raw if unit == 1 else floor_divide(raw, unit)


# -- JSON text of whole columns ------------------------------------------------------------------

# orjson writes these bytes of a string escaped (and every other byte as it is)
_ESCAPED = bytes(range(0x20)) + b'"\\'
_UNESCAPED = bytes(b for b in range(256) if b not in _ESCAPED)
_ESCAPED_PATTERN = r'[\x00-\x1f"\\]'
# bytes that can be part of a character Python's str.isspace() calls whitespace
_SPACE_BYTES = bytes([*range(0x09, 0x0E), *range(0x1C, 0x21), *range(0x80, 0x100)])
_NOT_SPACE = bytes(b for b in range(256) if b not in _SPACE_BYTES)
# Arrow's float text matches orjson's (after ".0" on whole numbers) without an exponent and away
# from zero; below this magnitude orjson switches to exponents sooner than Arrow does
_PLAIN_FLOAT_FROM = 1e-4
_NULL_TEXT = pa.scalar(None, pa.string())


def _value_bytes(column: Any) -> bytes:
    """The bytes of all values of a string array (its slice of the data buffer)."""
    if len(column) == 0 or column.buffers()[2] is None:
        return b""
    width = "q" if pa.types.is_large_string(column.type) else "i"
    offsets = memoryview(column.buffers()[1]).cast(width)
    start, stop = offsets[column.offset], offsets[column.offset + len(column)]
    return column.buffers()[2].to_pybytes()[start:stop]


def _any_byte_outside(column: Any, allowed: bytes) -> bool:
    return bool(_value_bytes(column).translate(None, allowed))


def _json_string_body(column: Any) -> Any:
    """A string column's values as the inside of JSON strings, escaped exactly as orjson does."""
    if not _any_byte_outside(column, _UNESCAPED):
        return column  # the common case: nothing to escape anywhere in the batch
    needs = pc.match_substring_regex(column, _ESCAPED_PATTERN).fill_null(False)
    escaped = [orjson.dumps(text)[1:-1].decode() for text in column.filter(needs).to_pylist()]
    return pc.replace_with_mask(column, needs, pa.array(escaped, column.type))


def _float_text(column: Any) -> Any:
    """A float column's values as orjson writes them (finite values; others are flagged)."""
    values = pc.cast(column, pa.float64())
    whole = pc.if_else(pc.equal(pc.floor(values), values), ".0", "")
    text = pc.binary_join_element_wise(pc.cast(values, pa.string()), whole, "")
    unlike = pc.and_(pc.less(pc.abs(values), _PLAIN_FLOAT_FROM), pc.not_equal(values, 0.0))
    if b"e" in _value_bytes(text):
        unlike = pc.or_(unlike, pc.match_substring(text, "e"))
    unlike = unlike.fill_null(False)
    if not pc.any(unlike).as_py():
        return text
    written = [orjson.dumps(value).decode() for value in values.filter(unlike).to_pylist()]
    return pc.replace_with_mask(text, unlike, pa.array(written, pa.string()))


# Arrow's text of a decimal: plain digits, or below 1e-6 an exponent, where only 0 is whole
_WHOLE_DECIMAL = r"^-?[0-9]+(\.0+)?$|^0E-[0-9]+$"
_WHOLE_DECIMAL_TAIL = r"\.0+$|E-[0-9]+$"


def _decimal_text(column: Any, flags: list[Any]) -> Any | None:
    """`decimal_to_number`'s JSON of each decimal: whole values as integers, others as the
    nearest double (parsed from the decimal's exact text, as `float(Decimal)` does); None for
    a negative scale (the row path writes those).

    Both are read from the exact text: Arrow's decimal arithmetic is not exact everywhere
    (its floor of a decimal128(38, 18) near 2**64 is off by billions).
    """
    if column.type.scale < 0:
        return None
    text = pc.cast(column, pa.string())
    whole = pc.match_substring_regex(text, _WHOLE_DECIMAL)
    digits = pc.replace_substring_regex(text, _WHOLE_DECIMAL_TAIL, "")
    # whole values from 18 digits up may leave the 64-bit range: the row path decides those
    flags.append(pc.and_(whole, pc.greater_equal(pc.binary_length(digits), 19)))
    nearest = _float_text(pc.cast(text, pa.float64()))
    return pc.if_else(whole, digits, nearest)


def join_pieces(pieces: list[Any]) -> Any:
    """Concatenate constants and columns row by row; a null piece is left out of its row.

    Adjacent constants are merged first. The pieces must hold a constant: with columns only,
    pyarrow 26 drops rows in which every piece is null instead of giving an empty string.
    """
    merged: list[Any] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    assert any(isinstance(piece, str) for piece in merged)
    return pc.binary_join_element_wise(*merged, "", null_handling="skip")


def comma_listed(items: list[tuple[str, Any, str, bool]]) -> Any:
    """Per row, the items (prefix, values, suffix, has nulls) joined by commas, nulls left out
    ("" where every value is null)."""
    fragments = [
        pc.binary_join_element_wise("," + prefix, values, suffix, "")
        for prefix, values, suffix, _ in items
    ]
    joined = join_pieces(["", *fragments])
    return pc.utf8_slice_codeunits(joined, 1)  # without the first item's comma


def _attribute_pieces(attributes: list[tuple[str, Any, str, bool]]) -> list[Any]:
    """The pieces of `,"attributes":{...}` for (prefix, values, suffix, has nulls) per column.

    A column with nulls becomes one piece per row (null where the value is), so its key goes
    too. Commas go after the columns before the first column without nulls and before the
    columns after it, so no row gets a stray one; with nulls in every column, the object is
    built on its own and left out of rows where every value is null, as the row path does.
    """
    anchor = next((i for i, (_, _, _, nullable) in enumerate(attributes) if not nullable), None)
    if anchor is None:
        inside = comma_listed(attributes)
        wrapped = pc.binary_join_element_wise(',"attributes":{', inside, "}", "")
        return [pc.if_else(pc.equal(pc.binary_length(inside), 0), _NULL_TEXT, wrapped)]
    pieces: list[Any] = [',"attributes":{']
    for index, (prefix, values, suffix, nullable) in enumerate(attributes):
        lead = "," if index > anchor else ""
        trail = "," if index < anchor else ""
        if nullable:
            pieces.append(pc.binary_join_element_wise(lead + prefix, values, suffix + trail, ""))
        else:
            pieces += [lead + prefix, values, suffix + trail]
    pieces.append("}")
    return pieces


def _as_binary(text: Any) -> Any:
    return text.view(pa.large_binary() if pa.types.is_large_string(text.type) else pa.binary())


# -- the columnar identify path ------------------------------------------------------------------


def map_identify_batch(
    mapper: RowMapper, batch: Any, source_rows: list[Row] | None = None
) -> Mapped:
    """Identify operations for a RecordBatch, identical to `mapper.map_rows` on its rows.

    The operations of rows the columns' checks pass come back as an `EntryBlock` (`block`);
    the rest go through the row path (`entries`, `rejections`). With `source_rows` (the dicts
    the batch was made of), the row path and rejections get those rows themselves.
    """
    batch = as_record_batch(batch)
    if batch is None:
        return Mapped([], [], 0)
    if not COLUMNAR_PATH.enabled:
        return by_row_path(mapper, batch, source_rows)
    with gc_paused():
        return _map_identify_batch(mapper, batch, source_rows)


def as_record_batch(items: Any) -> Any | None:
    """One RecordBatch of a batch or a table (its chunks combined); None for an empty table."""
    if not isinstance(items, pa.Table):
        return items
    return items.combine_chunks().to_batches()[0] if items.num_rows else None


# the Arrow type pyarrow must infer for a column of each dlt data type, for the columnar path
_INFERRED = {
    "text": pa.types.is_string,
    "bigint": pa.types.is_int64,
    "double": pa.types.is_float64,
    "bool": pa.types.is_boolean,
    "timestamp": pa.types.is_timestamp,  # naive values are UTC there, as in the row path
    "date": pa.types.is_date32,
    "decimal": pa.types.is_decimal,
}
# the Python type (and its subtypes but these) typed-jsonl gives for each of those dlt types:
# pyarrow converts a value of another type to fit the column (1 to 1.0 in a double column, a
# datetime to its date in a date one), where the row path sends the value as it is
_PYTHON_TYPES: dict[str, tuple[type, tuple[type, ...]]] = {
    "text": (str, ()),
    "bigint": (int, (bool,)),
    "double": (float, ()),
    "bool": (bool, ()),
    "timestamp": (dt.datetime, ()),
    "date": (dt.date, (dt.datetime,)),
    "decimal": (Decimal, ()),
}


def _of_type(values: list[Any], data_type: str) -> bool:
    """Whether every value (or None) has the Python type typed-jsonl gives for `data_type`."""
    allowed, excluded = _PYTHON_TYPES[data_type]
    return all(
        kind is type(None) or (issubclass(kind, allowed) and not issubclass(kind, excluded))
        for kind in set(map(type, values))
    )


def map_identify_rows(mapper: RowMapper, rows: list[Row], columns: dict[str, Any]) -> Mapped:
    """Identify operations for dict rows (as dlt's typed-jsonl gives them), identical to
    `mapper.map_rows(rows)`: through the columnar path when `rows_to_batch` can make them a
    batch of the mapped columns."""
    if not COLUMNAR_PATH.enabled:
        return mapper.map_rows(rows)
    mapping = mapper.mapping
    wanted = [mapping.identifier, *mapper.compiled.attribute_columns, mapping.timestamp]
    batch = None if mapping.clear_nulls else rows_to_batch(mapper, rows, columns, wanted)
    if batch is None:
        return mapper.map_rows(rows)
    return map_identify_batch(mapper, batch, source_rows=rows)


def rows_to_batch(
    mapper: RowMapper, rows: list[Row], columns: dict[str, Any], wanted: list[str | None]
) -> Any | None:
    """The `wanted` columns of dict rows as a RecordBatch, or None when they cannot all be.

    Each column must have a plain dlt type, its values the Python type typed-jsonl gives for
    it, and the type pyarrow infers from them that type: a value of another kind (an int in a
    double column, bytes in a text one) makes None rather than be converted."""
    if not rows:
        return None
    variants = [variant for variant, _ in mapper.compiled.variants]
    if variants and any(variant in row for row in rows for variant in variants):
        return None  # the row path reads those values back into their columns
    names: list[str] = []
    arrays = []
    with gc_paused():
        for name in dict.fromkeys(n for n in wanted if n is not None):
            if name not in columns:
                continue  # no row has a value for it
            data_type = columns[name].get("data_type") or ""
            expected = _INFERRED.get(data_type)
            if expected is None or name in mapper.compiled.json_columns:
                return None
            values = [row.get(name) for row in rows]
            if not _of_type(values, data_type):
                return None
            try:
                array = pa.array(values)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                return None
            if not (expected(array.type) or pa.types.is_null(array.type)):
                return None
            names.append(name)
            arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def by_row_path(mapper: RowMapper, batch: Any, source_rows: list[Row] | None) -> Mapped:
    if source_rows is not None:
        return mapper.map_rows(source_rows)
    return mapper.map_rows(rows_from_arrow(batch))


def identifier_text(batch: Any, column: str | None) -> Any | None:
    """The identifier column as text (integers as their digits), or None if it has no such form."""
    if column is None or column not in batch.schema.names:
        return None
    ident = batch.column(column)
    if not (pa.types.is_integer(ident.type) or _is_text(ident.type)):
        return None
    try:
        return pc.cast(ident, pa.string())  # one offset width for the joins
    except pa.ArrowInvalid:
        return None  # over 2 GiB of identifiers in one batch


def identifier_flags(ident: Any, kind: str) -> list[Any]:
    """Rows whose identifier the row path rejects (or might: it decides those)."""
    flags: list[Any] = [ident.is_null()]
    length = pc.binary_length(ident)
    flags.append(pc.equal(length, 0))
    flags.append(pc.greater(length, limits.MAX_IDENTIFIER_BYTES))
    if _any_byte_outside(ident, _NOT_SPACE):
        flags.append(blank_texts(ident))
    if kind == "email":
        flags.append(pc.invert(pc.match_substring(ident, "@")))
    elif kind == "phone":
        # RE2's `$` is the end of the text only (Python's also matches before a final newline)
        flags.append(pc.invert(pc.match_substring_regex(ident, f"^{_PHONE.pattern}$")))
    return flags


def blank_texts(column: Any) -> Any:
    """Whether each text is whitespace only, as Python's str.isspace() says."""
    return pa.array([text is not None and text.isspace() for text in column.to_pylist()])


def attribute_texts(
    batch: Any, columns: list[str], flags: list[Any], *, value_limit: bool
) -> list[tuple[str, Any, str, bool]] | None:
    """(prefix, JSON text of the values, suffix, has nulls) per attribute column, as the row
    path's `_attributes` writes them; rows it treats otherwise are added to `flags`. None when
    a column's type is one this path does not convert (the row path then maps the batch)."""
    attributes: list[tuple[str, Any, str, bool]] = []
    for name in columns:
        column = batch.column(name)
        kind = column.type
        key = orjson.dumps(name).decode() + ":"
        if pa.types.is_null(kind):
            continue  # every value is null: the row path leaves the attribute out
        if _is_text(kind):
            if pa.types.is_large_string(kind):
                try:
                    column = pc.cast(column, pa.string())  # one offset width for the joins
                except pa.ArrowInvalid:
                    return None  # over 2 GiB of text in one batch
            if value_limit:
                too_long = pc.greater(pc.binary_length(column), limits.MAX_ATTRIBUTE_VALUE_BYTES)
                flags.append(too_long)
            attributes.append((key + '"', _json_string_body(column), '"', column.null_count > 0))
            continue
        if pa.types.is_floating(kind):
            flags.append(pc.invert(pc.is_finite(column)))
            text = _float_text(column)
        elif _is_temporal(kind):
            seconds = _floor_seconds(column)
            flags.append(pc.or_(pc.less(seconds, 0), pc.greater(seconds, MAX_UNIX)))
            text = pc.cast(seconds, pa.string())
        elif pa.types.is_integer(kind):
            text = pc.cast(column, pa.string())
        elif pa.types.is_boolean(kind):
            text = pc.if_else(column, "true", "false")
        elif pa.types.is_decimal(kind):
            text = _decimal_text(column, flags)
            if text is None:
                return None
        else:
            return None  # nested and other types: the row path converts them
        attributes.append((key, text, "", column.null_count > 0))
    return attributes


def timestamp_pieces(batch: Any, name: str | None, flags: list[Any]) -> list[Any]:
    """The `,"timestamp":N` pieces (left out of rows without one) for the mapped column."""
    if name is None:
        return []
    column = batch.column(name)
    if _is_temporal(column.type):
        seconds = _floor_seconds(column)
        flags.append(pc.or_(pc.less(seconds, 0), pc.greater(seconds, MAX_UNIX)))
    else:
        converted: list[int | None] = []
        unconvertible: list[bool] = []
        for value in column.to_pylist():
            try:
                converted.append(None if value is None else to_unix_seconds(value))
                unconvertible.append(False)
            except ValueProblem:
                converted.append(None)
                unconvertible.append(True)
        seconds = pa.array(converted, pa.int64())
        flags.append(pa.array(unconvertible))
    text = pc.cast(seconds, pa.string())
    if text.null_count:
        return [pc.binary_join_element_wise(',"timestamp":', text, "")]
    return [',"timestamp":', text]


def finish(
    mapper: RowMapper,
    batch: Any,
    source_rows: list[Row] | None,
    pieces: list[Any],
    flags: list[Any],
    row_keys: Any | None,
    keys: Any | None = None,
    row_key_of: Callable[[Row], str] | None = None,
) -> Mapped:
    """Join the operations; rows any flag marks (or over the entry size limit) go through the
    row path, the rest become an `EntryBlock`."""
    rows = batch.num_rows
    operations = join_pieces(pieces)
    if len(operations) != rows:  # never expected; the row path is always right
        return by_row_path(mapper, batch, source_rows)
    flags.append(pc.greater(pc.binary_length(operations), limits.MAX_ENTRY_BYTES))
    slow = flags[0]
    for flag in flags[1:]:
        slow = pc.or_kleene(slow, flag)
    slow = slow.fill_null(False)

    mapped = Mapped([], [], rows)
    if not pc.any(slow).as_py():
        positions = pa.array(range(rows), pa.int64())
        mapped.block = EntryBlock(
            _as_binary(operations),
            row_keys,
            batch,
            positions,
            source_rows,
            keys,
            row_key_of,
        )
        COLUMNAR_PATH.wrote(rows)
        return mapped
    fast = pc.invert(slow)
    if pc.any(fast).as_py():
        mapped.block = EntryBlock(
            _as_binary(operations.filter(fast)),
            None if row_keys is None else row_keys.filter(fast),
            batch,
            pc.indices_nonzero(fast),
            source_rows,
            None if keys is None else keys.filter(fast),
            row_key_of,
        )
        COLUMNAR_PATH.wrote(len(mapped.block))
    if source_rows is not None:
        rest = mapper.map_rows([source_rows[i] for i in pc.indices_nonzero(slow).to_pylist()])
    else:
        rest = mapper.map_rows(rows_from_arrow(batch.filter(slow)))
    mapped.entries = rest.entries
    mapped.rejections = rest.rejections
    mapped.dropped = rest.dropped
    return mapped


def _map_identify_batch(mapper: RowMapper, batch: Any, source_rows: list[Row] | None) -> Mapped:
    mapping = mapper.mapping
    names = set(batch.schema.names)
    attribute_columns = [c for c in mapper.compiled.attribute_columns if c in names]
    ident = identifier_text(batch, mapping.identifier)
    if (
        ident is None
        or mapping.clear_nulls
        or len(attribute_columns) > limits.MAX_ATTRIBUTES_PER_IDENTIFY
        or (mapping.timestamp is not None and mapping.timestamp not in names)
        or any(name in mapper.compiled.json_columns for name in attribute_columns)
    ):
        return by_row_path(mapper, batch, source_rows)
    kind = mapping.identifier_type

    # rows the row path must see: every check it makes, made on whole columns
    flags = identifier_flags(ident, kind)
    counts = pc.value_counts(ident)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        flags.append(pc.is_in(ident, value_set=repeated))  # collapsed in row order there
    pieces: list[Any] = [
        '{"type":"person","action":"identify","identifiers":{' + orjson.dumps(kind).decode(),
        ':"',
        _json_string_body(ident),
        '"}',
    ]
    attributes = attribute_texts(batch, attribute_columns, flags, value_limit=True)
    if attributes is None:
        return by_row_path(mapper, batch, source_rows)
    if attributes:
        pieces += _attribute_pieces(attributes)
    pieces += timestamp_pieces(batch, mapping.timestamp, flags)
    pieces.append("}")
    return finish(mapper, batch, source_rows, pieces, flags, ident)


def source_row_hashes(mapper: RowMapper, batch: Any) -> tuple[list[Any], list[int]] | None:
    """Per row of an identify batch: its identifier text and a 64-bit hash of its mapped values.

    `changes_only` compares these with the hashes stored when the person was last accepted and
    maps only the rows that differ. None when a column's type has no plain text form here, or
    an identifier repeats in the batch (then the order of the rows matters: map them all).

    Two rows hash alike only if they are the same row under the same mapping: each value is
    framed by its length (see `cio_destination.framing`), and the hash is salted with the
    mapping and with the name and type of every column hashed, so no value can pass for a
    separator, a null, another column or another type (`0`, `"0"` and `0.0`; seconds and
    milliseconds). Hashes stored by an older encoding simply differ: such a row is mapped
    again, and the whole-operation hash of its fingerprint settles that it is unchanged.
    """
    import hashlib

    mapping = mapper.mapping
    names = set(batch.schema.names)
    if mapping.identifier not in names:
        return None  # every row is rejected: nothing to skip
    columns = [mapping.identifier, *mapper.compiled.attribute_columns]
    if mapping.timestamp:
        columns.append(mapping.timestamp)
    framed, layout = [], []
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
        framed.append(frame_column(text))
        layout.append([name, "text" if _is_text(kind) else str(kind)])
    ident = batch.column(mapping.identifier)
    ident = pc.cast(ident, pa.string()) if pa.types.is_integer(ident.type) else ident
    if not _is_text(ident.type):
        return None
    counts = pc.value_counts(ident)
    if pc.any(pc.greater(counts.field("counts"), 1)).as_py():
        return None
    if len({column.type for column in framed}) > 1:  # string and large_string: join as large
        framed = [pc.cast(column, pa.large_string()) for column in framed]
    joined = framed[0]
    if len(framed) > 1:
        joined = pc.binary_join_element_wise(*framed, pa.scalar("", joined.type))
    settings = [
        mapping.model_dump(mode="json", exclude_defaults=True),
        sorted(mapper.compiled.json_columns),
        layout,
    ]
    salt = hashlib.blake2b(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS), digest_size=16)
    base = hashlib.blake2b(digest_size=8, salt=salt.digest(), person=_SOURCE_HASH_PERSON)
    digests = bytearray()
    for row in _as_binary(joined).to_pylist():
        digest = base.copy()  # cheaper than a new salted hash per row
        digest.update(row)
        digests += digest.digest()
    hashes = array("q", digests)  # each digest read as a signed big-endian 64-bit number
    if sys.byteorder == "little":
        hashes.byteswap()
    return ident.to_pylist(), hashes.tolist()


_SOURCE_HASH_PERSON = b"cio-source-row-2"
