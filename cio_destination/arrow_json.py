"""Writing JSON with Arrow kernels, a column at a time, exactly as orjson writes it.

The columnar paths put each row's operation together from constants and columns of JSON text:
strings are escaped only where a byte needs it (a scan of the column's text buffer finds none in
the common case), floats take Arrow's text where it is the text orjson writes and orjson's where
it is not, and one join makes each row's JSON (`join_pieces`: one `take` of the pieces' values in
row order, `interleaved`). No Customer.io rule lives here: what a value may be, and which rows
the row path must decide, is in `values` and `limits`.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

# orjson writes these bytes of a string escaped (and every other byte as it is)
_ESCAPED = bytes(range(0x20)) + b'"\\'
_UNESCAPED = bytes(b for b in range(256) if b not in _ESCAPED)
_ESCAPED_PATTERN = r'[\x00-\x1f"\\]'
# Arrow's float text matches orjson's (after ".0" on whole numbers) without an exponent and away
# from zero; below this magnitude orjson switches to exponents sooner than Arrow does
_PLAIN_FLOAT_FROM = 1e-4
NULL_TEXT = pa.scalar(None, pa.string())
"""A null string: a piece that leaves itself out of its row in `join_pieces`."""


def is_text(kind: pa.DataType) -> bool:
    """Whether an Arrow type holds strings (of either offset width)."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def as_string(column: Any) -> Any | None:
    """A text or integer column as `string` (one offset width for the joins); None when its
    text is over 2 GiB in one batch."""
    try:
        return pc.cast(column, pa.string())
    except pa.ArrowInvalid:
        return None


def as_binary(text: Any) -> Any:
    """A string column viewed as binary, without a copy."""
    return text.view(pa.large_binary() if pa.types.is_large_string(text.type) else pa.binary())


def value_bytes(column: Any) -> bytes:
    """The bytes of all values of a string array (its slice of the data buffer)."""
    if len(column) == 0 or column.buffers()[2] is None:
        return b""
    start, stop = value_span(column)
    return column.buffers()[2][start:stop].to_pybytes()  # type: ignore[no-any-return]


def value_span(column: Any) -> tuple[int, int]:
    """Where the values of a string or binary array lie in its data buffer: (start, stop)."""
    large = pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type)
    offsets = memoryview(column.buffers()[1]).cast("q" if large else "i")
    return offsets[column.offset], offsets[column.offset + len(column)]


def any_byte_outside(column: Any, allowed: bytes) -> bool:
    """Whether any value of a string array holds a byte that is not in `allowed`."""
    return bool(value_bytes(column).translate(None, allowed))


def json_key(name: str) -> str:
    """`"name":`, the JSON of an object member's name and its colon."""
    return orjson.dumps(name).decode() + ":"


def json_string_body(column: Any) -> Any:
    """A string column's values as the inside of JSON strings, escaped exactly as orjson does."""
    if not any_byte_outside(column, _UNESCAPED):
        return column  # the common case: nothing to escape anywhere in the batch
    needs = pc.match_substring_regex(column, _ESCAPED_PATTERN).fill_null(False)
    escaped = [orjson.dumps(text)[1:-1].decode() for text in column.filter(needs).to_pylist()]
    return pc.replace_with_mask(column, needs, pa.array(escaped, column.type))


def float_text(column: Any) -> Any:
    """A float column's values as orjson writes them (finite values only: JSON has no others)."""
    return pc.binary_join_element_wise(*float_pieces(column), "")


def float_pieces(column: Any) -> tuple[Any, Any]:
    """`float_text` in two pieces that a join puts together (one join of all of a row's pieces
    rather than one more per float column): Arrow's text of each value (orjson's where the two
    differ), and the ".0" orjson writes after a whole number ("" elsewhere)."""
    values = pc.cast(column, pa.float64())
    text = pc.cast(values, pa.string())
    whole = pc.if_else(pc.equal(pc.floor(values), values), ".0", "")
    unlike = pc.and_(pc.less(pc.abs(values), _PLAIN_FLOAT_FROM), pc.not_equal(values, 0.0))
    if b"e" in value_bytes(text):
        unlike = pc.or_(unlike, pc.match_substring(text, "e"))
    unlike = unlike.fill_null(False)
    if not pc.any(unlike).as_py():
        return text, whole
    written = [orjson.dumps(value).decode() for value in values.filter(unlike).to_pylist()]
    text = pc.replace_with_mask(text, unlike, pa.array(written, pa.string()))
    return text, pc.if_else(unlike, "", whole)


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
    joined = interleaved(merged)
    if joined is not None:
        return joined
    return pc.binary_join_element_wise(*merged, "", null_handling="skip")


_MAX_OFFSET = 2**31 - 1
_layouts: dict[tuple[tuple[bool, ...], int], tuple[pa.Array, pa.Array]] = {}


def interleaved(pieces: list[Any]) -> Any | None:
    """`join_pieces` of constants and `string` columns of one length (a null value leaves
    itself out of its row), by one `take` instead of Arrow's element-wise join; None where
    this way does not apply (a piece of another type or length, no column, over 2 GiB).

    The join visits every piece of every row, a constant as much as a column (an identify
    operation of 19 pieces: 0.23 us a row). Here the pieces' values lie one after another in
    one array (a constant's once) and one `take` puts each row's pieces side by side, in the
    rows' order (0.12 us a row): its data buffer is the joined text as it is, and a row starts
    where its first piece does (a null is a piece of no bytes).
    """
    columns = [piece for piece in pieces if not isinstance(piece, str)]
    if not columns:
        return None
    rows = len(columns[0])
    if rows == 0 or len(pieces) * (rows + 1) > _MAX_OFFSET:
        return None
    size = 0
    for column in columns:
        if not (
            isinstance(column, pa.Array) and column.type == pa.string() and len(column) == rows
        ):
            return None
        start, stop = value_span(column)
        size += stop - start
    size += rows * sum(len(piece.encode()) for piece in pieces if isinstance(piece, str))
    if size > _MAX_OFFSET:
        return None
    indices, row_starts = _layout(tuple(not isinstance(piece, str) for piece in pieces), rows)
    values = pa.concat_arrays(
        [pa.array([piece], pa.string()) if isinstance(piece, str) else piece for piece in pieces]
    )
    taken = pc.take(values, indices, boundscheck=False)
    ends = pa.Array.from_buffers(pa.int32(), len(taken) + 1, [None, taken.buffers()[1]])
    starts = pc.take(ends, row_starts, boundscheck=False)
    data = taken.buffers()[2] or pa.py_buffer(b"")
    return pa.Array.from_buffers(pa.string(), rows, [None, starts.buffers()[1], data])


def _layout(columns: tuple[bool, ...], rows: int) -> tuple[pa.Array, pa.Array]:
    """For pieces that are columns (True) or constants, laid out one after another: the index
    of each row's every piece, row after row, and where each row's first piece lands (and the
    end); kept for the last few layouts (an operation's pieces are the same unit after unit)."""
    known = _layouts.get((columns, rows))
    if known is not None:
        return known
    count = len(columns)
    starts = list(accumulate((rows if column else 1 for column in columns[:-1]), initial=0))
    position = _counting(count * rows)  # row * count + piece
    row = pc.divide(position, pa.scalar(count, pa.int32()))
    piece = pc.subtract(position, pc.multiply(row, pa.scalar(count, pa.int32())))
    step = pc.take(pa.array([int(column) for column in columns], pa.int32()), piece)
    indices = pc.add(pc.take(pa.array(starts, pa.int32()), piece), pc.multiply(step, row))
    row_starts = pc.multiply(_counting(rows + 1), pa.scalar(count, pa.int32()))
    if len(_layouts) >= 4:
        _layouts.clear()
    _layouts[(columns, rows)] = indices, row_starts
    return indices, row_starts


def _counting(count: int) -> pa.Array:
    """0, 1, ..., count - 1 as int32, by a kernel."""
    return pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int32()), count), start=-1)


def joined_sizes(pieces: list[Any], rows: int) -> Any:
    """Per row, the byte size of `join_pieces(pieces)` (int64), without joining them."""
    constant = pa.scalar(sum(len(piece.encode()) for piece in pieces if isinstance(piece, str)))
    sizes = None
    for piece in pieces:
        if not isinstance(piece, str):  # the lengths added as they come (one kernel a piece)
            length = pc.binary_length(piece)
            length = length.fill_null(0) if length.null_count else length
            sizes = length if sizes is None else pc.add_checked(sizes, length)
    if sizes is None:
        return pa.repeat(pc.cast(constant, pa.int64()), rows)
    return pc.add_checked(pc.cast(sizes, pa.int64()), pc.cast(constant, pa.int64()))


Member = tuple[str, Any, str, bool]
"""One member of a JSON object, per row: (prefix, values, suffix, has nulls); a null value
leaves the member out of its row. The values are a column, or a tuple of columns written one
after the other (`float_pieces`)."""


def _columns(values: Any) -> tuple[Any, ...]:
    """A member's values as a tuple of columns."""
    return values if isinstance(values, tuple) else (values,)


def comma_listed(items: list[Member]) -> Any:
    """Per row, the items joined by commas, nulls left out ("" where every value is null)."""
    fragments = [
        pc.binary_join_element_wise("," + prefix, *_columns(values), suffix, "")
        for prefix, values, suffix, _ in items
    ]
    joined = join_pieces(["", *fragments])
    return pc.utf8_slice_codeunits(joined, 1)  # without the first item's comma


def object_pieces(name: str, members: list[Member]) -> list[Any]:
    """The pieces of `,"name":{...}` for the members of an object.

    A member with nulls becomes one piece per row (null where the value is), so its key goes
    too. Commas go after the members before the first member without nulls and before the
    members after it, so no row gets a stray one; with nulls in every member, the object is
    built on its own and left out of rows where every value is null, as orjson would be given
    no such key.
    """
    head = "," + json_key(name) + "{"
    anchor = next((i for i, (_, _, _, nullable) in enumerate(members) if not nullable), None)
    if anchor is None:
        inside = comma_listed(members)
        wrapped = pc.binary_join_element_wise(head, inside, "}", "")
        return [pc.if_else(pc.equal(pc.binary_length(inside), 0), NULL_TEXT, wrapped)]
    pieces: list[Any] = [head]
    for index, (prefix, values, suffix, nullable) in enumerate(members):
        lead = "," if index > anchor else ""
        trail = "," if index < anchor else ""
        if nullable:
            joined = pc.binary_join_element_wise(
                lead + prefix, *_columns(values), suffix + trail, ""
            )
            pieces.append(joined)
        else:
            pieces += [lead + prefix, *_columns(values), suffix + trail]
    pieces.append("}")
    return pieces
