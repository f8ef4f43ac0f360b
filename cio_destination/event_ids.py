"""The event id: the one key definition of a row, and the ULID Customer.io de-duplicates on.

An event (and a transactional send) carries an id derived from its row's key, so a replay, a
rerun or a full re-sync never creates it twice. That holds only if every path gives the same id
for the same row, so the key and the id are defined here once, in their row form
(`canonical_key`, `deterministic_ulid`: one row's values) and their column form (`event_keys`,
`event_ids`: a whole RecordBatch, written by Arrow kernels), side by side. The column form writes
exactly the bytes the row form writes; rows it cannot write that way are flagged for the row form,
and tests/test_equivalence.py holds the two to byte equality over generated values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Context, Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import (
    as_binary,
    as_string,
    comma_listed,
    float_text,
    is_text,
    join_pieces,
    json_string_body,
)
from cio_destination.limits import Reject
from cio_destination.values import (
    MAX_NESTING,
    MAX_UNIX,
    UNITS_PER_SECOND,
    ValueProblem,
    floor_divide,
    midnight_seconds,
    outside_datetimes,
    to_json_value,
    too_deep,
)

_UTC = dt.timezone.utc
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID_PERSON = b"cio-dest-ulid-v1"
# two Crockford chars per 10 bits: 13 lookups write the 26 chars of a 130-bit number
_ULID_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_ULID_PAIR_SHIFTS = tuple(range(120, -1, -10))
_ULID_PAIR_TEXTS = pa.array(_ULID_PAIRS, pa.string())
_MAX_EXACT_INT = 2**53  # floats up to here are whole numbers Arrow casts to int64 exactly


# -- the key: row form ---------------------------------------------------------------------------


def canonical_key(values: list[Any]) -> bytes:
    """Stable bytes for an idempotency key, equal for the same row in dict and Arrow form.

    Raises `ValueProblem` for a value with no stable JSON (see `to_json_value`).
    """
    return _canonical_json([_canonical(v, 0) for v in values])


def canonical_row_key(row: dict[str, Any]) -> bytes:
    """The idempotency key of a whole row: `[[name, value], ...]` by name, nulls left out."""
    return _canonical_json([[k, _canonical(row[k], 0)] for k in sorted(row) if row[k] is not None])


def _canonical_json(items: list[Any]) -> bytes:
    try:
        return orjson.dumps(items, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # a big int, or a whole float keyed as one
        raise ValueProblem(
            "a whole number outside the 64-bit range JSON consumers accept"
        ) from None


def _canonical(value: Any, level: int) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_UTC)
        return value.astimezone(_UTC).isoformat()
    if isinstance(value, Decimal):
        return _decimal_key(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # beyond 64 bits, canonical_key refuses it
    if isinstance(value, (dict, list, tuple)):
        if level >= MAX_NESTING:
            raise too_deep()
        if isinstance(value, dict):
            return {str(k): _canonical(v, level + 1) for k, v in value.items()}
        return [_canonical(v, level + 1) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return to_json_value(value)


def _decimal_key(value: Decimal) -> str:
    """A decimal's text without trailing zeros, exact at any precision.

    `Decimal.normalize()` rounds to the thread's context (28 digits by default), which would give
    two decimals differing past that digit one event id, and make ids depend on a setting of the
    caller's; a context as precise as the value itself changes nothing else.
    """
    if not value.is_finite():
        return str(value)
    return str(value.normalize(Context(prec=max(28, len(value.as_tuple().digits)))))


def row_event_id(row: dict[str, Any], columns: tuple[str, ...], namespace: str) -> str:
    """The event id of one row: the ULID of its key, the values of its event id `columns` (the
    whole row where there are none); a `Reject` when the row has no key to give."""
    if columns:
        values = [row.get(c) for c in columns]
        if all(v is None for v in values):
            raise Reject(
                "missing_event_id",
                ",".join(columns),
                "the event id columns are all empty, so the event cannot be de-duplicated",
            )
        try:
            key = canonical_key(values)
        except ValueProblem as exc:  # a NaN, an integer orjson cannot write, ...
            raise Reject("invalid_event_id", ",".join(columns), str(exc)) from None
    else:
        try:
            key = canonical_row_key(row)
        except ValueProblem as exc:
            raise Reject(
                "invalid_event_id",
                _unkeyable_column(row),
                f"the event's key is the whole row (no event_id, no primary key), and this"
                f" column's value has none: {exc}",
            ) from None
    return deterministic_ulid(namespace, key)


def _unkeyable_column(row: dict[str, Any]) -> str | None:
    """The first column (by name, as keys are written) whose value has no canonical key."""
    for name in sorted(row):
        try:
            canonical_key([row[name]])
        except ValueProblem:
            return name
    return None


# -- the key: column form ------------------------------------------------------------------------


def event_keys(batch: Any, id_columns: tuple[str, ...], flags: list[Any]) -> Any | None:
    """Each row's key as text, the bytes the row form writes: `canonical_key` of its event id
    columns, or `canonical_row_key` of the whole row without them.

    Rows the column form cannot write as the row form does are added to `flags`, and so are
    rows with no key value at all; None when a key column's type has no column form here.
    """
    names = batch.schema.names
    rows = batch.num_rows
    if id_columns:
        texts: list[list[Any]] = []
        present = []
        for name in id_columns:
            if name not in names:
                texts.append(["null"])
                continue
            column = batch.column(name)
            text = _canonical_pieces(column, flags)
            if text is None:
                return None
            if column.null_count:  # a null's text is "null": its pieces are joined first
                text = [_joined(text).fill_null("null")]
            texts.append(text)  # else its pieces go into the key's one join
            present.append(column.is_valid())
        if not present:
            return None  # no key column in the batch (NULL in every row): the row path rejects
        any_value = present[0]
        for more in present[1:]:
            any_value = pc.or_(any_value, more)
        flags.append(pc.invert(any_value))  # the row path rejects: nothing to key on
        pieces: list[Any] = ["["]
        for index, text in enumerate(texts):
            pieces += ["," if index else "", *text]
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
    """orjson's text of `_canonical(value)` for each value of a column (null where the value is
    null); rows this cannot write the same way are added to `flags`. None for a type it does not
    handle."""
    pieces = _canonical_pieces(column, flags)
    return None if pieces is None else _joined(pieces)


def _joined(pieces: list[Any]) -> Any:
    """The pieces joined row by row (null where a column piece is null)."""
    if len(pieces) == 1:
        return pieces[0]
    return pc.binary_join_element_wise(*pieces, "")


def _canonical_pieces(column: Any, flags: list[Any]) -> list[Any] | None:
    """`_canonical_text` as the constants and columns a join puts together (see there)."""
    kind = column.type
    if is_text(kind):
        column = as_string(column)
        if column is None:
            return None
        return ['"', json_string_body(column), '"']
    if pa.types.is_integer(kind):
        return [pc.cast(column, pa.string())]
    if pa.types.is_boolean(kind):
        return [pc.if_else(column, "true", "false")]
    if pa.types.is_date32(kind) or pa.types.is_date64(kind):  # its midnight's unix seconds
        seconds = midnight_seconds(column)
        flags.append(outside_datetimes(seconds))
        return [pc.cast(seconds, pa.string())]
    if pa.types.is_null(kind):
        return [pa.nulls(len(column), pa.string())]
    if pa.types.is_floating(kind):
        values = pc.cast(column, pa.float64())
        flags.append(pc.invert(pc.is_finite(values)))
        whole = pc.and_(pc.equal(pc.floor(values), values), pc.less(pc.abs(values), _MAX_EXACT_INT))
        flags.append(pc.and_(pc.equal(pc.floor(values), values), pc.invert(whole)))
        as_int = pc.cast(pc.cast(pc.if_else(whole, values, 0.0), pa.int64()), pa.string())
        return [pc.if_else(whole, as_int, float_text(values))]  # whole floats key as integers
    if pa.types.is_timestamp(kind):
        return _iso_pieces(column, flags)
    return None


def _iso_pieces(column: Any, flags: list[Any]) -> list[Any]:
    """`datetime.astimezone(UTC).isoformat()` of each timestamp (naive ones are UTC), in quotes,
    as the pieces of a join; nanoseconds are rounded down to the microsecond, as the row path's
    datetimes are."""
    raw = pc.cast(column, pa.int64())
    per_second = UNITS_PER_SECOND[column.type.unit]
    # 1970 to 9999 only: integer division and four-digit years need no care there. Judged on
    # the count itself: a multiplication of a count far beyond would wrap around into them.
    last = min((MAX_UNIX + 1) * per_second - 1, 2**63 - 1)  # nanoseconds end before 9999
    beyond = pc.or_(pc.less(raw, 0), pc.greater(raw, last))
    flags.append(beyond)
    if pc.any(beyond).as_py():
        raw = pc.if_else(beyond, pa.scalar(0, pa.int64()), raw)
    if column.type.unit == "ns":
        micros = floor_divide(raw, 1_000)
    else:
        micros = pc.multiply(raw, 1_000_000 // per_second)
    seconds = pc.divide(micros, 1_000_000)
    fraction = pc.subtract(micros, pc.multiply(seconds, 1_000_000))
    # Arrow's text of a naive timestamp[s] is "YYYY-MM-DD HH:MM:SS" (strftime is 15x slower)
    clock = pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.string())
    clock = pc.replace_substring(clock, " ", "T", max_replacements=1)
    whole = pc.equal(fraction, 0)
    if pc.all(whole).as_py():  # whole seconds (nulls aside): no fraction to write in any row
        return ['"', clock, '+00:00"']
    digits = pc.utf8_lpad(pc.cast(fraction, pa.string()), 6, "0")
    dotted = pc.if_else(whole, "", pc.binary_join_element_wise(".", digits, ""))
    return ['"', clock, dotted, '+00:00"']


# -- the id: row form and column form --------------------------------------------------------------


def deterministic_ulid(namespace: str, key: bytes) -> str:
    """A ULID-formatted id derived from (namespace, key): same input, same id, on any machine.

    Customer.io de-duplicates events by this id and does not use its time part, so all 128 bits
    come from a hash. 26 Crockford base32 chars carry 130 bits; the top two are zero.
    """
    digest = hashlib.blake2b(digest_size=16, person=_ULID_PERSON)
    digest.update(namespace.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(key)
    number = int.from_bytes(digest.digest(), "big")
    return "".join([_ULID_PAIRS[(number >> shift) & 1023] for shift in _ULID_PAIR_SHIFTS])


def event_ids(namespace: str, keys: Any) -> Any:
    """`deterministic_ulid(namespace, key)` of each key, as a string array.

    The keys are hashed one by one (`hashlib`: no kernel computes BLAKE2b); the base32 text is
    written by kernels. All the digests reversed at once are the rows' 128-bit numbers as
    little-endian 64-bit words, low then high, rows last to first. Each pair of chars is a 10-bit
    field of them, looked up as its two ASCII bytes (one uint16) in the table
    `deterministic_ulid` uses; one `take` puts every row's 13 pairs side by side, and those 26
    bytes a row are the string array's data as they are.
    """
    base = hashlib.blake2b(digest_size=16, person=_ULID_PERSON)
    base.update(namespace.encode("utf-8") + b"\x00")
    fresh = base.copy
    digests: list[bytes] = []
    keep = digests.append
    for key in as_binary(keys).to_pylist():
        digest = fresh()  # cheaper than a new keyed hash per row
        digest.update(key or b"")
        keep(digest.digest())
    count = len(keys)
    if not count:
        return pa.array([], pa.string())
    numbers = b"".join(digests)[::-1]
    words = pa.Array.from_buffers(pa.uint64(), 2 * count, [None, pa.py_buffer(numbers)])
    pairs = []
    for shift in _ULID_PAIR_SHIFTS:
        if shift >= 64:  # in the high word: right at the odd positions
            field = pc.shift_right(words, _u64(shift - 64))
        elif shift + 10 <= 64:  # in the low word: right at the even positions
            field = pc.shift_right(words, _u64(shift))
        else:  # the low word's top bits under the high word's bottom ones (the next position)
            below = 64 - shift
            top = pc.bit_wise_and(words.slice(1), _u64((1 << (10 - below)) - 1))
            field = pc.bit_wise_or(
                pc.shift_left(top, _u64(below)),
                pc.shift_right(words.slice(0, 2 * count - 1), _u64(shift)),
            )
        code = pc.bit_wise_and(field, _u64(1023))  # < 1024: within the table, unchecked
        pairs.append(pc.take(_ULID_PAIR_CODES, code, boundscheck=False))
    text = pc.take(pa.concat_arrays(pairs), _side_by_side(count), boundscheck=False)
    offsets = pc.multiply(_counting(count + 1), pa.scalar(26, pa.int32()))
    return pa.Array.from_buffers(
        pa.string(), count, [None, offsets.buffers()[1], text.buffers()[1]]
    )


_ULID_PAIR_CODES = pa.array(
    [int.from_bytes(pair.encode("ascii"), "little") for pair in _ULID_PAIRS], pa.uint16()
)
# per pair: whether its field is read at the odd (high word) positions, and whether its field
# array is one short (the straddling pair's: 2 values a row, less the last)
_PAIR_ODD = [int(shift >= 64) for shift in _ULID_PAIR_SHIFTS]
_PAIR_SHORT = [int(shift < 64 < shift + 10) for shift in _ULID_PAIR_SHIFTS]
_interleavings: dict[int, pa.Array] = {}


def _side_by_side(count: int) -> pa.Array:
    """The `take` indices that put the 13 field arrays of `count` rows side by side, row after
    row in the rows' order (their words lie last row first); kept for the last few counts."""
    known = _interleavings.get(count)
    if known is not None:
        return known
    starts, at = [], 0
    for odd, short in zip(_PAIR_ODD, _PAIR_SHORT, strict=True):
        starts.append(at + odd)
        at += 2 * count - short
    pairs = len(starts)
    position = _counting(pairs * count)  # row * pairs + pair
    row = pc.divide(position, pairs)
    pair = pc.subtract(position, pc.multiply(row, pairs))
    word = pc.multiply(pc.subtract(count - 1, row), 2)  # the row's low word
    indices = pc.cast(pc.add(pc.take(pa.array(starts, pa.int32()), pair), word), pa.int32())
    if len(_interleavings) >= 4:
        _interleavings.clear()
    _interleavings[count] = indices
    return indices


def _counting(count: int) -> pa.Array:
    """0, 1, ..., count - 1 as int32, by a kernel (a Python range costs a Python int each)."""
    return pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int32()), count), start=-1)


def _u64(value: int) -> Any:
    return pa.scalar(value, pa.uint64())
