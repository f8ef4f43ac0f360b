"""Hypothesis strategies for the values a warehouse gives, as Arrow batches and as dict rows.

Arrow: every type a warehouse (or a parquet file) gives: string/large_string, int8..uint64,
float32/float64, decimal32..decimal256 of any precision and scale, date32/date64, timestamps of
every unit, naive and in fixed and named zones, bool and null. Dict rows: what dlt's typed-jsonl
gives for each dlt data type (str, int, float, bool, datetime, date, Decimal), plus values of
another kind than the column's type, which `rows_to_batch` must not let pyarrow convert.

Values lean to the edges where conversions differ: the 64-bit integer limits, -0.0, NaN,
infinities and subnormals, decimals around 2**53, 2**63 and 2**64, timestamps at 1970 and at the
end of year 9999 with and without a fraction of a second. Now and then an Arrow timestamp or date
lies outside the years 1 to 9999 that a Python datetime holds, anywhere in its type's range (a
DuckDB or parquet file holds such values; pyarrow cannot make Python objects of them).

Each strategy is built once per type (`functools.cache`) and drawn from many times: hypothesis
checks a strategy the first time it is drawn from, and building them anew in every example cost
the properties most of their time. The values drawn are the same either way.
"""

from __future__ import annotations

import datetime as dt
import functools
from decimal import Decimal
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
# the seconds Python's datetime can hold (what the row path's values are), and Customer.io's last
MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
DAY = 86_400
MIN_DAYS = MIN_SECONDS // DAY  # 0001-01-01 in days from 1970-01-01
MAX_DAYS = (MAX_SECONDS + 1) // DAY - 1  # 9999-12-31
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
INT64 = (-(2**63), 2**63 - 1)
ZONES = [
    None,
    "UTC",
    "+00:00",
    "+02:00",
    "-11:30",
    "+05:45",
    "+14:00",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Etc/GMT+12",
]
# seconds where conversions are tested hardest: the epoch, Customer.io's last second, the
# magnitudes the epoch-number heuristics switch units at, far-future seconds past 2**33
EDGE_SECONDS = [
    -1,
    0,
    1,
    1_700_000_000,
    2**31,
    2**33,
    99_999_999_999,
    100_000_000_000,
    MAX_SECONDS - 1,
    MAX_SECONDS,
    MIN_SECONDS,
]


@functools.cache
def rarely(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in `one_in` draws; False is the simplest draw, the one hypothesis starts
    from and shrinks to (hypothesis favours a range's ends, so True is a value inside it)."""
    return st.integers(0, one_in - 1).map(lambda n: n == 1)


characters = st.characters(codec="utf-8")  # any code point UTF-8 can hold (no lone surrogates)
# JSON escapes, whitespace that str.isspace() knows, and multi-byte characters
TRICKY = '"\\\x00\x01\x1f\x7f \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000é✓😀'
texts = st.one_of(
    st.text(characters, max_size=12),
    st.text(st.sampled_from(TRICKY), max_size=6),
    # long values: past the 1,000-byte attribute limit and the 32 KB entry limit
    st.builds(lambda c, n: c * n, st.sampled_from("aé✓😀\n"), st.integers(240, 8_500)),
)
# the texts of `texts` that are not blank and fit in 48 bytes (an event name's 100 among them);
# filtering `texts` instead threw away most examples that drew one
names = st.one_of(
    st.text(characters, min_size=1, max_size=12),
    st.text(st.sampled_from(TRICKY), min_size=1, max_size=6),
).filter(lambda text: bool(text.strip()))


# -- Arrow ---------------------------------------------------------------------------------------

INT_TYPES = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
]


@st.composite
def decimal_types(draw: st.DrawFn) -> pa.DataType:
    make, most = draw(
        st.sampled_from(
            [(pa.decimal32, 9), (pa.decimal64, 18), (pa.decimal128, 38), (pa.decimal256, 76)]
        )
    )
    precision = draw(st.integers(1, most))
    # a negative scale (Oracle's NUMBER(5, -2)); pyarrow cannot build those of decimal32/64
    scale = draw(st.integers(-3 if most > 18 else 0, precision))
    return make(precision, scale)


def temporal_types() -> st.SearchStrategy[pa.DataType]:
    return st.one_of(
        st.sampled_from([pa.date32(), pa.date64()]),
        st.builds(pa.timestamp, st.sampled_from(list(UNITS)), st.sampled_from(ZONES)),
    )


@functools.cache
def arrow_types() -> st.SearchStrategy[pa.DataType]:
    common = st.one_of(
        st.sampled_from([pa.string(), pa.large_string(), pa.bool_(), pa.null()]),
        st.sampled_from(INT_TYPES),
        st.sampled_from([pa.float32(), pa.float64()]),
        temporal_types(),
    )
    decimals = decimal_types()
    # decimals one column in eight: an event key with one takes the row path (by design)
    return rarely(8).flatmap(lambda decimal: decimals if decimal else common)


def _decimal_values(kind: pa.DataType) -> st.SearchStrategy[Decimal]:
    scale = kind.scale
    # the largest unscaled value (pyarrow takes those of a negative scale up to 10**precision)
    most = 10 ** max(kind.precision + min(scale, 0), 0) - 1
    # whole and almost whole values around the limits JSON numbers and doubles have
    near = [
        sign * (edge + offset) * 10 ** max(scale, 0) + tail
        for edge in (2**53, 2**63, 2**64)
        for offset in (-1, 0, 1)
        for sign in (1, -1)
        for tail in (0, 1)
    ]
    near = [unscaled for unscaled in near if abs(unscaled) <= most]
    unscaled = st.one_of(st.integers(-most, most), st.sampled_from([0, 1, -1, most, -most]))
    if near:
        unscaled = st.one_of(unscaled, st.sampled_from(near))
    return unscaled.map(lambda n: Decimal(f"{n}E{-scale}"))  # exact: scaleb() would round


@functools.cache
def _seconds(lowest: int, highest: int) -> st.SearchStrategy[int]:
    edges = [s for s in EDGE_SECONDS if lowest <= s <= highest]
    return st.one_of(st.integers(lowest, highest), st.sampled_from(edges))


def _timestamp_values(kind: pa.DataType, beyond: bool) -> st.SearchStrategy[int]:
    """Timestamps as integers of the type's unit, within the years 1 to 9999 in UTC (the
    datetimes the row path gets; in a zone, the local time may be past either end); `beyond`:
    one in eight anywhere in the unit's 64-bit range."""
    per_second = UNITS[kind.unit]
    lowest = max(MIN_SECONDS, INT64[0] // per_second + 1)
    highest = min(MAX_SECONDS, INT64[1] // per_second - 1)
    fraction = st.one_of(
        st.integers(0, per_second - 1), st.sampled_from(sorted({0, 1 % per_second, per_second - 1}))
    )
    held = st.builds(lambda s, f: s * per_second + f, _seconds(lowest, highest), fraction)
    if not beyond:
        return held
    return rarely(8).flatmap(lambda odd: _beyond_datetimes(per_second) if odd else held)


@functools.cache
def _beyond_datetimes(per_second: int) -> st.SearchStrategy[int]:
    """Integers of a unit with `per_second` to the second, outside the years 1 to 9999 where
    the unit reaches them (nanoseconds do not: any of their values), or at the unit's ends."""
    first, last = MIN_SECONDS * per_second, (MAX_SECONDS + 1) * per_second  # last is out
    edges = [INT64[0], INT64[1], first - 1, last]
    edges = [value for value in edges if INT64[0] <= value <= INT64[1]]
    ranges = [st.integers(*INT64)]
    if first - 1 >= INT64[0]:
        ranges.append(st.integers(INT64[0], first - 1))
    if last <= INT64[1]:
        ranges.append(st.integers(last, INT64[1]))
    return st.one_of(st.sampled_from(edges), *ranges)


@functools.cache
def values_of(kind: pa.DataType, beyond: bool = True) -> st.SearchStrategy[Any]:
    """Values of one Arrow type, in the form `arrow_array` takes; `beyond`: timestamps and
    dates outside the years 1 to 9999 now and then (no dict row holds those)."""
    if pa.types.is_null(kind):
        return st.none()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return texts
    if pa.types.is_boolean(kind):
        return st.booleans()
    if pa.types.is_integer(kind):
        bits = kind.bit_width
        if pa.types.is_signed_integer(kind):
            return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return st.integers(0, 2**bits - 1)
    if pa.types.is_floating(kind):
        return st.floats(width=kind.bit_width)  # with NaN, infinities, -0.0 and subnormals
    if pa.types.is_decimal(kind):
        return _decimal_values(kind)
    if pa.types.is_date(kind):
        dates = st.one_of(
            st.dates(), st.sampled_from([dt.date(1969, 12, 31), dt.date(1970, 1, 1), dt.date.max])
        )
        if pa.types.is_date32(kind):
            if not beyond:
                return dates
            # now and then a count of days outside the years 1 to 9999 (pa.array takes ints)
            beyond = st.one_of(
                st.sampled_from([-(2**31), 2**31 - 1, MIN_DAYS - 1, MAX_DAYS + 1]),
                st.integers(-(2**31), MIN_DAYS - 1),
                st.integers(MAX_DAYS + 1, 2**31 - 1),
            )
            return rarely(8).flatmap(lambda odd: beyond if odd else dates)
        # date64: milliseconds, now and then with a time of day (files carry those), and now
        # and then outside the years 1 to 9999
        days = dates.map(lambda d: (d - EPOCH.date()).days * DAY * 1_000)
        later = rarely(4).flatmap(
            lambda odd: st.integers(1, DAY * 1_000 - 1) if odd else st.just(0)
        )
        held = st.builds(int.__add__, days, later)
        if not beyond:
            return held
        return rarely(8).flatmap(lambda odd: _beyond_datetimes(1_000) if odd else held)
    if pa.types.is_timestamp(kind):
        return _timestamp_values(kind, beyond)
    raise AssertionError(f"no values for {kind}")


def arrow_array(kind: pa.DataType, values: list[Any]) -> pa.Array:
    if pa.types.is_timestamp(kind) or pa.types.is_date64(kind):
        return pa.array(values, pa.int64()).cast(kind)
    return pa.array(values, kind)


@functools.cache
def _value_lists(kind: pa.DataType, rows: int, nulls: bool) -> st.SearchStrategy[list[Any]]:
    values = st.one_of(st.none(), values_of(kind)) if nulls else values_of(kind)
    return st.lists(values, min_size=rows, max_size=rows)


@functools.cache
@st.composite
def arrow_columns(draw: st.DrawFn, kind: pa.DataType, rows: int) -> pa.Array:
    """One column of `rows` values of `kind`, with nulls in some columns."""
    return arrow_array(kind, draw(_value_lists(kind, rows, draw(st.booleans()))))


IDENTIFIER_TYPES = ["id", "email", "cio_id", "phone"]


@functools.cache
def identifiers(kind: str) -> st.SearchStrategy[Any]:
    """Identifier texts that pass the kind's checks, and some that do not."""
    plain = {
        "id": st.text(characters, min_size=1, max_size=20),
        "cio_id": st.text(characters, min_size=1, max_size=20),
        "email": st.builds(
            "{}@{}".format, st.text(characters, max_size=8), st.text(characters, max_size=8)
        ),
        "phone": st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True),
    }[kind]
    odd = st.one_of(
        st.sampled_from(["", " ", "\u3000", "x" * 151, "ü" * 76, "+0123", "+1415\n", "no-at"]),
        st.text(characters, max_size=6),
    )
    return rarely(6).flatmap(lambda pick: odd if pick else plain)


@functools.cache
def _identifier_lists(
    kind: str, type_: pa.DataType, rows: int, unique: bool
) -> st.SearchStrategy[list[Any]]:
    values = values_of(type_) if pa.types.is_integer(type_) else identifiers(kind)
    return st.lists(values, min_size=rows, max_size=rows, unique=unique)


_INT_TYPES = st.sampled_from(INT_TYPES)
_TEXT_TYPES = st.sampled_from([pa.string(), pa.large_string()])


@functools.cache
@st.composite
def identifier_columns(draw: st.DrawFn, kind: str, rows: int) -> pa.Array:
    """The identifier column: text (mostly distinct values) or integers, nulls now and then."""
    type_ = draw(_INT_TYPES if draw(rarely(5)) else _TEXT_TYPES)
    repeats = draw(st.booleans()) and draw(st.booleans())
    drawn = draw(_identifier_lists(kind, type_, rows, unique=not repeats))
    if draw(rarely(6)):
        drawn[draw(st.integers(0, rows - 1))] = None
    return pa.array(drawn, type_)


column_names = st.text(characters, min_size=1, max_size=8).filter(lambda n: n != "ident")


@st.composite
def arrow_batches(draw: st.DrawFn, kind: str, max_columns: int = 5) -> pa.RecordBatch:
    """A small batch: the identifier column "ident", then columns of any type."""
    rows = draw(st.integers(1, 6))
    names = draw(st.lists(column_names, max_size=max_columns, unique=True))
    arrays = [draw(identifier_columns(kind, rows))]
    for _ in names:
        arrays.append(draw(arrow_columns(draw(arrow_types()), rows)))
    return pa.RecordBatch.from_arrays(arrays, names=["ident", *names])


# -- dict rows, as dlt's typed-jsonl gives them ---------------------------------------------------

DLT_TYPES = ["text", "bigint", "double", "bool", "timestamp", "date", "decimal"]


_MICROS = st.one_of(st.integers(0, 999_999), st.sampled_from([0, 1, 999_999]))
_OFFSETS = st.one_of(st.none(), st.just(0), st.integers(-14 * 60, 14 * 60))


@st.composite
def datetimes(draw: st.DrawFn) -> dt.datetime:
    """Datetimes of the years 1 to 9999, naive (UTC) or with a fixed offset, at the edges often."""
    seconds = draw(_seconds(MIN_SECONDS + DAY, MAX_SECONDS - DAY))
    micros = draw(_MICROS)
    instant = EPOCH + dt.timedelta(seconds=seconds, microseconds=micros)
    offset = draw(_OFFSETS)
    if offset is None:
        return instant.replace(tzinfo=None)
    return instant.astimezone(dt.timezone(dt.timedelta(minutes=offset)))


@functools.cache
def dlt_values(data_type: str) -> st.SearchStrategy[Any]:
    """Values of a dlt data type as typed-jsonl decodes them."""
    if data_type == "text":
        return texts
    if data_type == "bigint":
        return st.integers(*INT64)
    if data_type == "double":
        return st.floats()
    if data_type == "bool":
        return st.booleans()
    if data_type == "timestamp":
        return datetimes()
    if data_type == "date":
        return st.dates()
    if data_type == "decimal":
        return st.one_of(
            _decimal_values(pa.decimal128(38, 9)),
            _decimal_values(pa.decimal256(76, 20)),
            st.decimals(allow_nan=False, allow_infinity=False),  # any exponent
        )
    raise AssertionError(data_type)


# values another column type could hold: pyarrow would convert them to fit (1 -> 1.0, a
# datetime -> its date) or refuse them
STRAYS = st.one_of(
    st.integers(-5, 5),
    st.floats(-5, 5),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=3),
    datetimes(),
    st.dates(),
    st.decimals(-5, 5, places=1),
    st.just(Decimal("NaN")),
)


@functools.cache
def _row_identifiers(kind: str, count: int, unique: bool) -> st.SearchStrategy[list[Any]]:
    values = rarely(6).flatmap(lambda missing: st.none() if missing else identifiers(kind))
    return st.lists(values, min_size=count, max_size=count, unique=unique)


@functools.cache
def _dlt_column_values(data_type: str, strays: bool, nulls: bool) -> st.SearchStrategy[Any]:
    values = dlt_values(data_type)
    if strays:
        values = st.one_of(values, STRAYS)
    return st.one_of(st.none(), values) if nulls else values


@st.composite
def dict_rows(
    draw: st.DrawFn, kind: str, max_columns: int = 5
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rows (nulls left out, as typed-jsonl gives them) and the table's columns with dlt types;
    now and then a value of another kind than its column's type."""
    count = draw(st.integers(1, 6))
    names = draw(st.lists(column_names, max_size=max_columns, unique=True))
    columns = {"ident": {"name": "ident", "data_type": "text"}}
    repeats = draw(st.booleans()) and draw(st.booleans())
    idents = draw(_row_identifiers(kind, count, unique=not repeats))
    rows: list[dict[str, Any]] = [{"ident": i} if i is not None else {} for i in idents]
    for name in names:
        data_type = draw(st.sampled_from(DLT_TYPES))
        columns[name] = {"name": name, "data_type": data_type}
        values = _dlt_column_values(data_type, strays=draw(rarely(8)), nulls=draw(st.booleans()))
        for row in rows:
            value = draw(values)
            if value is not None:
                row[name] = value
    return rows, columns
