"""The source-row hash of `changes_only`: one 64-bit number per Arrow row of an identify table.

`changes_only` keeps, with each person's fingerprint, the hash of the source row Customer.io
last accepted (`cio_destination.state.fingerprints`), and maps only the rows whose hash is not
one kept (`cio_destination.diff.Diff.drop_unchanged_rows`). A re-sync in which nothing changed
spends most of its time here, so the hash is made a column at a time, with one Python call per
row only for the text of its text columns.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from array import array
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from cio_destination.actions.identify import repeated_values
from cio_destination.actions.rows import RowReader
from cio_destination.arrow_json import is_text
from cio_destination.entries import row_numbers
from cio_destination.framing import frame_into
from cio_destination.values import is_temporal

__all__ = ["SOURCE_HASH_PERSON", "UNIT_DIGEST_PERSON", "source_row_hashes", "unit_digest"]

SOURCE_HASH_PERSON = b"cio-source-row-5"
"""The version of the hash (the personalisation of its seed): hashes kept by another version
never match, so those rows are mapped once more and their fingerprints settle them."""
UNIT_DIGEST_PERSON = b"cio-unit-digest-1/" + SOURCE_HASH_PERSON
"""The version of `unit_digest`, which names the source-row hash's: a digest kept by another
version of either never matches."""

_U64 = pa.uint64()
_NO_LENGTH = (1 << 32) - 1
"""The length word's half of a null text (no text is that long here)."""
_HALF = pa.scalar(32, _U64)
_MOST_BINARY = (1 << 31) - 1
"""Bytes a binary array (32-bit offsets) holds at most: more take a large_binary one."""
_BIG_ENDIAN = sys.byteorder == "big"


def source_row_hashes(reader: RowReader, batch: Any) -> tuple[pa.Array, pa.Array] | None:
    """Per row of an identify batch: its identifier text and a 64-bit hash of its mapped values
    (int64), as two Arrow arrays.

    None when a column's type is not one hashed here, a text is 4 GiB long or more, or an
    identifier repeats in the batch (then the order of the rows matters: map them all).

    Every column the mapping reads is hashed: the identifier, the attributes, the timestamp,
    and dlt's variant columns of those (where it kept a value that did not fit the column's
    type, which the row path reads as the column's value). Two rows hash alike only if they
    are the same row under the same mapping, but for a 64-bit collision.

    The hash is XXH3-64 (stable across releases: never Python's or DuckDB's `hash()`), with
    no seed, of the row's bytes: a digest of the mapping and of the name and type of every
    column hashed, in order (8 bytes); the row's text values back to back; then 64-bit words,
    each as its 8 bytes, little-endian (the machine's order: a big-endian machine hashes
    otherwise, which only maps its rows once more): the byte lengths of the texts, two to a
    word in order (the first in the low half; a null: all ones), a number's, boolean's or
    time's bits per column in order (an integer as int64, a float as float64, a time as its
    int64 count; a null as 0), then one word per 64 such columns of whether each has a value
    (a bit each, in order). The words are as many for every row of a layout and the lengths
    cut the texts apart, so two rows give the same bytes only if they hold the same values: a
    collision of XXH3 is the only way two rows hash alike.
    """
    read = _columns_read(reader, batch)
    if read is None:
        return None
    ident, columns = read
    if repeated_values(ident) is not None:
        return None
    hashed = _hashed_columns(columns)
    if hashed is None:
        return None
    texts, words, layout = hashed
    salt = hashlib.blake2b(_settings(reader, layout), digest_size=8, person=SOURCE_HASH_PERSON)
    values = _row_bytes(salt.digest(), texts, words, len(ident)).to_pylist()
    numbers = array("Q")
    # each hash's 8 bytes, big-endian (a third less time than a Python int per row)
    numbers.frombytes(b"".join(map(xxhash.xxh3_64_digest, values)))
    if not _BIG_ENDIAN:
        numbers.byteswap()
    hashes = pa.Array.from_buffers(_U64, len(values), [None, pa.py_buffer(numbers)])
    return ident, hashes.view(pa.int64())


def unit_digest(reader: RowReader, batch: Any) -> bytes | None:
    """A 128-bit digest of the values of an identify batch that `source_row_hashes` hashes,
    under the same mapping and hash version: two batches with the same digest give the same
    source-row hashes, row for row, but for a collision of XXH3-128. A `changes_only` load
    keeps the digests of its units whose every row's hash was kept as it is
    (`cio_destination.state.fingerprints`), so the next load settles such a unit, read again
    unchanged, by this one digest: none of its rows is hashed or looked up.

    XXH3-128 of the framed parts (`cio_destination.framing`): the version
    (`UNIT_DIGEST_PERSON`, which names the source-row hash's), the settings the source-row
    hash is seeded with (the mapping, the JSON columns, the name and type of each column
    hashed, in order), then per column the row count, whether each row has a value (one byte
    a row; none where every row has one) and the bytes of the values that are there: a
    number's, time's or decimal's fixed-width bytes, a boolean as a byte, a text column's
    offsets and its bytes up to the last offset. Those bytes are the values (Arrow's layout),
    so equal parts are equal values. None where `source_row_hashes` would hash nothing, or
    for a column of a type it does not hash."""
    read = _columns_read(reader, batch)
    if read is None:
        return None
    columns = read[1]
    layout: list[list[str]] = []
    parts: list[bytes | memoryview | None] = []
    for name, column in columns:
        values = _value_bytes(column)
        if values is None:
            return None
        layout.append([name, str(column.type)])
        parts += values
    digest = xxhash.xxh3_128()
    frame_into(digest, [UNIT_DIGEST_PERSON, _settings(reader, layout), *parts])
    return digest.digest()


def _columns_read(
    reader: RowReader, batch: Any
) -> tuple[pa.Array, list[tuple[str, pa.Array]]] | None:
    """The identifier as text, and every column the mapping reads, in order: the identifier,
    the attributes, the timestamp, and dlt's variant columns of those (where it kept a value
    that did not fit the column's type, which the row path reads as the column's value).
    None without the identifier column (every row is rejected: nothing to skip), or with one
    that is not text or integers."""
    mapping = reader.mapping
    columns = {name: _whole(batch.column(name)) for name in batch.schema.names}
    if mapping.identifier not in columns:
        return None
    ident = columns[mapping.identifier]
    ident = pc.cast(ident, pa.string()) if pa.types.is_integer(ident.type) else ident
    if not is_text(ident.type):
        return None
    names = [mapping.identifier, *reader.compiled.attribute_columns]
    if mapping.timestamp:
        names.append(mapping.timestamp)
    read = set(names)
    names += [variant for variant, column in reader.compiled.variants if column in read]
    return ident, [(name, columns[name]) for name in names if name in columns]


def _settings(reader: RowReader, layout: list[list[str]]) -> bytes:
    """What the source-row hash is seeded with, besides its version: the mapping, the JSON
    columns, the layout of the columns hashed."""
    settings = [
        reader.mapping.model_dump(mode="json", exclude_defaults=True),
        sorted(reader.compiled.json_columns),
        layout,
    ]
    return orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)


def _value_bytes(column: pa.Array) -> list[bytes | memoryview | None] | None:
    """A column's parts of `unit_digest`: its row count, whether each row has a value (None:
    every row), the bytes of the values there; None for a type `source_row_hashes` does not
    hash."""
    kind = column.type
    if not (
        is_text(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_timestamp(kind)
        or is_temporal(kind)
    ):
        return None
    parts: list[bytes | memoryview | None] = [b"%d" % len(column), None]
    if column.null_count:  # the values there, and a byte a row for whether each is
        parts[1] = memoryview(pc.cast(column.is_valid(), pa.uint8()).buffers()[1])[: len(column)]
        column = column.drop_null()
    if pa.types.is_boolean(kind):
        column = pc.cast(column, pa.uint8())
    rows = len(column)
    if not rows:
        return parts
    if is_text(kind):
        return [*parts, *_text_bytes(column)]
    width = column.type.bit_width // 8
    start = column.offset
    return [*parts, memoryview(column.buffers()[1])[start * width : (start + rows) * width]]


def _text_bytes(column: pa.Array) -> tuple[memoryview, memoryview | bytes]:
    """A text column's offsets (from 0) and its bytes up to the last offset."""
    code = "q" if pa.types.is_large_string(column.type) else "i"
    width, rows = 8 if code == "q" else 4, len(column)

    def offsets() -> memoryview:
        start = column.offset
        return memoryview(column.buffers()[1])[start * width : (start + rows + 1) * width]

    if offsets().cast(code)[0]:  # a slice: its texts as an array of their own, offsets from 0
        column = pc.take(column, row_numbers(rows))
    found = offsets()
    end = found.cast(code)[-1]
    return found, memoryview(column.buffers()[2])[:end] if end else b""


def _whole(column: Any) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _row_bytes(
    head: bytes, texts: list[pa.Array], words: list[pa.Array | pa.Scalar], rows: int
) -> pa.Array:
    """Each row's bytes: `head`, its texts back to back (a null as no bytes), then each of its
    words' 8 bytes. The words are laid side by side in one numpy table, then every
    row's pieces by one take of the pieces (a third less time than Arrow's element-wise join
    of them), whose values are then the rows' bytes one after the other."""
    pieces = [pa.array([head], pa.binary())]
    pieces += [pc.fill_null(text, "") if text.null_count else text for text in texts]
    if words:
        buffer = pa.py_buffer(_side_by_side(words, rows))
        pieces.append(pa.Array.from_buffers(pa.binary(8 * len(words)), rows, [None, buffer]))
    size = sum(piece.nbytes for piece in pieces)
    large = size >= _MOST_BINARY or any(pa.types.is_large_string(t.type) for t in texts)
    kind, offset = (pa.large_binary(), pa.int64()) if large else (pa.binary(), pa.int32())
    together = pa.concat_arrays([piece.cast(kind) for piece in pieces])
    taken = pc.take(together, _row_major(rows, len(pieces)))
    offsets = pa.Array.from_buffers(offset, len(taken) + 1, [None, taken.buffers()[1]])
    starts = pc.take(offsets, _every(rows, len(pieces)))  # where each row's head begins
    return pa.Array.from_buffers(kind, rows, [None, starts.buffers()[1], taken.buffers()[2]])


def _side_by_side(words: list[pa.Array | pa.Scalar], rows: int) -> np.ndarray:
    """The words' numbers row by row (a row's words one after the other, in order)."""
    table = np.empty((rows, len(words)), np.uint64)
    for at, word in enumerate(words):
        table[:, at] = word.as_py() if isinstance(word, pa.Scalar) else word.to_numpy()
    return table


@functools.lru_cache(maxsize=8)
def _row_major(rows: int, pieces: int) -> pa.Array:
    """The positions that take each row's pieces from one array: the head (its one value
    first), then `pieces - 1` arrays of `rows` values each, one after the other. Made by numpy:
    from a Python range, Arrow took 33 ms for 300,000 positions, holding the GIL (a unit of
    each new size paid it, the last and first units of every load among them)."""
    row, piece = np.divmod(np.arange(rows * pieces, dtype=np.int64), pieces)
    return pa.array(np.where(piece == 0, 0, (piece - 1) * rows + row + 1))


@functools.lru_cache(maxsize=8)
def _every(rows: int, pieces: int) -> pa.Array:
    """Every `pieces`-th position, `rows + 1` of them: where each row starts, and the end."""
    return pa.array(np.arange(0, rows * pieces + 1, pieces, dtype=np.int64))


def _hashed_columns(
    columns: list[tuple[str, pa.Array]],
) -> tuple[list[pa.Array], list[pa.Array | pa.Scalar], list[list[str]]] | None:
    """The text columns (joined for XXH3), the 64-bit words in order (a scalar where every
    row's is the same), and the layout (the name and type of each column hashed); None for a
    type not hashed here, or a text too long for its half of a length word."""
    texts: list[pa.Array] = []
    lengths: list[pa.Array] = []
    numbers: list[pa.Array] = []
    layout: list[list[str]] = []
    flags: list[pa.Array | None] = []  # whether each column of numbers has a value (None: all)
    for name, column in columns:
        kind, label = column.type, "text"
        if pa.types.is_decimal(kind):  # its text: one value, one text, whatever its scale
            # a decimal apart from a text of the same digits: they map to a number and a string
            column, kind, label = pc.cast(column, pa.string()), pa.string(), "decimal"
        if is_text(kind):
            length = pc.binary_length(column)
            if pa.types.is_large_string(kind) and (pc.max(length).as_py() or 0) >= _NO_LENGTH:
                return None
            texts.append(column)
            length = pc.cast(length, _U64)
            lengths.append(pc.fill_null(length, _NO_LENGTH) if length.null_count else length)
            layout.append([name, label])
            continue
        bits = _bits(column)
        if bits is None:
            return None
        numbers.append(bits)
        flags.append(pc.cast(column.is_valid(), _U64) if column.null_count else None)
        layout.append([name, str(kind)])
    words: list[pa.Array | pa.Scalar] = []
    for at in range(0, len(lengths), 2):  # two lengths to a word
        pair = lengths[at : at + 2]
        words.append(
            pair[0] if len(pair) == 1 else pc.bit_wise_or(pair[0], pc.shift_left(pair[1], _HALF))
        )
    words += numbers
    for start in range(0, len(flags), 64):  # 64 columns' flags to a word, one bit each
        words.append(_flag_word(flags[start : start + 64]))
    return texts, words, layout


def _flag_word(flags: list[pa.Array | None]) -> pa.Array | pa.Scalar:
    """One bit per column, in order: whether the row has a value there (None: every row)."""
    constant = sum(1 << bit for bit, flag in enumerate(flags) if flag is None)
    word: pa.Array | pa.Scalar = pa.scalar(constant, _U64)
    for bit, flag in enumerate(flags):
        if flag is not None:
            word = pc.bit_wise_or(word, pc.shift_left(flag, pa.scalar(bit, _U64)))
    return word


def _bits(column: pa.Array) -> pa.Array | None:
    """A number's, boolean's or time's value as 64 bits (a null: 0); None for another type."""
    kind = column.type
    if pa.types.is_floating(kind):
        doubles = pc.cast(column, pa.float64()) if kind != pa.float64() else column
        return _filled(doubles, 0.0).view(_U64)
    if pa.types.is_timestamp(kind) or is_temporal(kind):
        column = pc.cast(column, pa.int64() if not pa.types.is_date32(kind) else pa.int32())
    elif not pa.types.is_integer(kind) and not pa.types.is_boolean(kind):
        return None
    if kind == pa.uint64():
        return _filled(column, 0)
    whole = column if column.type == pa.int64() else pc.cast(column, pa.int64())
    return _filled(whole, 0).view(_U64)


def _filled(column: pa.Array, value: Any) -> pa.Array:
    """`column` with `value` for its nulls (itself when it has none)."""
    return pc.fill_null(column, value) if column.null_count else column
