"""Warehouse values as Customer.io's Track API takes them, each conversion in its row form (one
Python value) and, where the columnar paths need it, its column form (a whole Arrow column), side
by side: a change to one is a change to both, and tests/test_equivalence.py holds them to the
same bytes.

Timestamps become integer unix seconds between 1970 and the end of 9999 (the years Customer.io
timestamps cover); Decimals become JSON numbers (exact integers where whole, else the nearest
double); datetimes inside attributes become unix seconds too (what Customer.io segments compare
on); any value becomes JSON-ready or a `ValueProblem`, whose message never holds the value. An
Arrow value Python has no form for (a date past the year 9999) reaches the row path as an
`Unreadable`, which every conversion refuses. Pure, no I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import float_text

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)

# Epoch numbers are told apart by magnitude: seconds stay below 1e11 until the year 5138, and
# ms / us / ns values of any date after 1973 are above the next threshold.
_MS_FROM = 1e11
_US_FROM = 1e14
_NS_FROM = 1e17

# used with fullmatch: `$` would also match before a trailing newline
DIGITS = re.compile(r"[0-9]+")
"""Digits only (with `fullmatch`): a string that is a whole number."""
MAX_UNIX = 253_402_300_799
"""The last unix second Customer.io timestamps take: they run from 1970 to the end of 9999."""
_FIRST_UNIX = -62_135_596_800  # 0001-01-01T00:00:00Z, the first second a datetime holds
_OUT_OF_RANGE = "outside the years 1970 to 9999 that Customer.io timestamps cover"
# the integer digits of the largest epoch number of those years (in nanoseconds), less one
_MOST_EPOCH_DIGITS = len(str(MAX_UNIX * 1_000_000_000)) - 1
# orjson (and JSON consumers in general) take integers in the signed/unsigned 64-bit range.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
MAX_NESTING = 250
"""The most containers a value may nest. orjson writes at most 254 levels in all, and an
operation (or a key, or a stored rejection read back by dlt) wraps a value in up to four."""
UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
"""Ticks per second of each Arrow timestamp unit."""


class ValueProblem(ValueError):
    """A value cannot be converted; the message never contains the value itself."""


# -- Arrow values Python has no form for ----------------------------------------------------------


class Unreadable:
    """An Arrow value Python has no form for (a timestamp or date outside the years 1 to 9999
    that a datetime holds), in its place in a row: every rule refuses it with a `ValueProblem`,
    so its row is rejected wherever the value is read (and sent where it is not), and a
    rejection record keeps its `text`."""

    __slots__ = ("kind", "text")

    def __init__(self, text: str, kind: str) -> None:
        self.text = text
        self.kind = kind

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Unreadable({self.text!r}, {self.kind!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unreadable) and (other.text, other.kind) == (self.text, self.kind)

    def __hash__(self) -> int:
        return hash((self.text, self.kind))

    def problem(self) -> ValueProblem:
        """Why no rule takes it (without the value)."""
        if self.kind.startswith(("timestamp", "date")):
            return ValueProblem(f"a {self.kind} value outside the years 1 to 9999")
        return ValueProblem(f"a {self.kind} value Python cannot hold")  # a duration past 2.7M years


_UNREADABLE = (OverflowError, ValueError, pa.ArrowException)


def python_values(column: Any) -> list[Any]:
    """The values of an Arrow array as Python objects, as `to_pylist` gives them; a value
    Python has no form for is an `Unreadable` (`to_pylist` raises for the whole array)."""
    try:
        return column.to_pylist()  # type: ignore[no-any-return]
    except _UNREADABLE:
        pass
    values: list[Any] = []
    for index in range(len(column)):
        try:
            values.append(column[index].as_py())
        except _UNREADABLE:
            values.append(Unreadable(_arrow_text(column.slice(index, 1)), str(column.type)))
    return values


def _arrow_text(value: Any) -> str:
    """The text of a one-value array Python cannot read: Arrow's own (timestamps in UTC, as
    ISO-8601), or its count of the type's unit from the unix epoch where Arrow has none."""
    kind = value.type
    storage = pa.int32() if pa.types.is_date32(kind) else pa.int64()
    if pa.types.is_timestamp(kind):
        value = value.view(pa.int64()).view(pa.timestamp(kind.unit))  # its UTC time
    try:
        text = pc.cast(value, pa.string())[0].as_py()
    except pa.ArrowException:
        text = None
    if text is not None and not text.startswith("<"):  # "<value out of range: N>"
        if not pa.types.is_timestamp(kind):
            return text
        return re.sub(r"\.0+$", "", text).replace(" ", "T") + "+00:00"  # as isoformat()
    try:
        count = value.view(storage)[0].as_py()
    except (pa.ArrowException, TypeError, ValueError):
        return f"a {kind} value"
    unit = "days" if pa.types.is_date32(kind) else getattr(kind, "unit", "ms")
    return f"{count} {unit} from the unix epoch"


# -- timestamps ----------------------------------------------------------------------------------


def datetime_to_unix(value: dt.datetime) -> int:
    """The unix second a datetime (naive ones are UTC) falls in, as the columnar path counts it.

    Integer arithmetic: a float `timestamp()` of a far-future time keeps too few digits, and
    rounds 999,999 microseconds up into the next second (9999-12-31T23:59:59.999999 left the
    range Customer.io takes).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        delta = value - _NAIVE_EPOCH
    else:
        delta = value - _EPOCH
    return delta.days * 86_400 + delta.seconds


def _epoch_number_to_unix(number: int | float) -> int:
    magnitude = abs(number)
    if magnitude >= _NS_FROM:
        return int(number // 1_000_000_000)
    if magnitude >= _US_FROM:
        return int(number // 1_000_000)
    if magnitude >= _MS_FROM:
        return int(number // 1_000)
    return int(number // 1)


def _parse_iso(text: str) -> dt.datetime:
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        return dt.datetime.fromisoformat(candidate)
    except ValueError:
        pass
    try:
        day = dt.date.fromisoformat(candidate)
    except ValueError as exc:
        raise ValueProblem("not an ISO-8601 date/time or an epoch number") from exc
    return dt.datetime(day.year, day.month, day.day, tzinfo=_UTC)


def to_unix_seconds(value: Any) -> int:
    """Convert a timestamp-column value to integer unix seconds.

    Accepts datetimes (naive ones are UTC), dates (midnight UTC), ISO-8601 strings, and epoch
    numbers (or digit strings) in seconds, milliseconds, microseconds or nanoseconds. The result
    must fall between 1970 and the end of year 9999.
    """
    if isinstance(value, dt.datetime):
        seconds = datetime_to_unix(value)
    elif isinstance(value, dt.date):
        seconds = datetime_to_unix(dt.datetime(value.year, value.month, value.day))
    elif isinstance(value, bool):
        raise ValueProblem("a boolean is not a timestamp")
    elif isinstance(value, (int, float, Decimal)):
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueProblem("not a finite number")
            if value.adjusted() > _MOST_EPOCH_DIGITS:  # no second of 1970-9999, in any unit
                raise ValueProblem(_OUT_OF_RANGE)
            # exact: float() keeps too few digits, 1700000000.9999999999 would round up a
            # second (and the whole number is all the unit division needs)
            value = math.floor(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueProblem("not a finite number")
        seconds = _epoch_number_to_unix(value)
    elif isinstance(value, str):
        stripped = value.strip()
        if DIGITS.fullmatch(stripped):
            digits = stripped.lstrip("0") or "0"
            if len(digits) > _MOST_EPOCH_DIGITS + 1:  # and int() refuses 4,300 digits
                raise ValueProblem(_OUT_OF_RANGE)
            seconds = _epoch_number_to_unix(int(digits))
        else:
            seconds = datetime_to_unix(_parse_iso(stripped))
    elif isinstance(value, Unreadable):
        raise value.problem()
    else:
        raise ValueProblem(f"a {type(value).__name__} is not a timestamp")
    if not 0 <= seconds <= MAX_UNIX:
        raise ValueProblem(_OUT_OF_RANGE)
    return seconds


def is_temporal(kind: pa.DataType) -> bool:
    """Whether an Arrow type holds timestamps or dates (the types the column forms convert)."""
    return pa.types.is_timestamp(kind) or pa.types.is_date32(kind) or pa.types.is_date64(kind)


def floor_divide(values: Any, divisor: int) -> Any:
    """`value // divisor` (rounded down, as Python does) of each value of an int64 Arrow array."""
    quotient = pc.divide(values, divisor)  # integer division truncates toward zero
    lowest = pc.min(values).as_py()
    if lowest is None or lowest >= 0:
        return quotient  # no negative value: truncating is rounding down
    behind = pc.and_(pc.less(values, 0), pc.not_equal(pc.multiply(quotient, divisor), values))
    return pc.subtract(quotient, pc.cast(behind, pa.int64()))


def midnight_seconds(column: Any) -> Any:
    """Unix seconds of the midnight (UTC) of each date of a date32 or date64 column.

    A date64 holds milliseconds and may hold a time of day (Arrow's spec says it should not):
    the row form's `datetime.date` is the day it falls in, so whole days are counted here too.
    """
    if pa.types.is_date32(column.type):
        days = pc.cast(pc.cast(column, pa.int32()), pa.int64())
    else:
        days = floor_divide(pc.cast(pc.cast(column, pa.timestamp("ms")), pa.int64()), 86_400_000)
    return pc.multiply(days, 86_400)


def floor_seconds(column: Any) -> Any:
    """`datetime_to_unix` of each value of a timestamp or date column: unix seconds, floored."""
    kind = column.type
    if not pa.types.is_timestamp(kind):
        return midnight_seconds(column)
    raw, unit = pc.cast(column, pa.int64()), UNITS_PER_SECOND[kind.unit]
    return raw if unit == 1 else floor_divide(raw, unit)


def outside_timestamp_range(seconds: Any) -> Any:
    """Per value of a column of unix seconds: outside the years Customer.io timestamps cover."""
    return pc.or_(pc.less(seconds, 0), pc.greater(seconds, MAX_UNIX))


def outside_datetimes(seconds: Any) -> Any:
    """Per value of a column of unix seconds: outside the years 1 to 9999 a datetime holds (the
    row form gets an `Unreadable` for those)."""
    return pc.or_(pc.less(seconds, _FIRST_UNIX), pc.greater(seconds, MAX_UNIX))


def timestamp_column(column: Any) -> tuple[Any, Any]:
    """`to_unix_seconds` of each value of a column, and the values it refuses (null seconds).

    Timestamp and date columns are converted by kernels; other types value by value.
    """
    if is_temporal(column.type):
        seconds = floor_seconds(column)
        return seconds, outside_timestamp_range(seconds)
    converted: list[int | None] = []
    refused: list[bool] = []
    for value in python_values(column):
        try:
            converted.append(None if value is None else to_unix_seconds(value))
            refused.append(False)
        except ValueProblem:
            converted.append(None)
            refused.append(True)
    return pa.array(converted, pa.int64()), pa.array(refused, pa.bool_())


# -- numbers -------------------------------------------------------------------------------------

# str() of an int refuses more digits than sys.get_int_max_str_digits() (4,300 by default)
_STR_BITS = 13_000


def int_text(value: int) -> str:
    """The digits of an integer of any size (`str()` refuses those of thousands of digits)."""
    if value.bit_length() <= _STR_BITS:
        return str(value)
    return str(Decimal(value))  # exact, and not held to str()'s limit


def decimal_to_number(value: Decimal) -> int | float:
    """A Decimal as a JSON number: an exact integer where it is whole and within 64 bits, else
    the nearest double."""
    if not value.is_finite():
        raise ValueProblem("not a finite number")
    if value == value.to_integral_value():
        number = int(value)
        if MIN_INT <= number <= MAX_INT:
            return number
    number = float(value)
    if not math.isfinite(number):  # beyond the double range: orjson would write null
        raise ValueProblem("not a finite number")
    return number


# Arrow's text of a decimal: plain digits, or below 1e-6 an exponent, where only 0 is whole
_WHOLE_DECIMAL = r"^-?[0-9]+(\.0+)?$|^0E-[0-9]+$"
_WHOLE_DECIMAL_TAIL = r"\.0+$|E-[0-9]+$"


def decimal_column(column: Any, flags: list[Any]) -> Any | None:
    """`decimal_to_number`'s JSON of each decimal of a column: whole values as integers, others
    as the nearest double (parsed from the decimal's exact text, as `float(Decimal)` does).

    Whole values of 19 digits or more may leave the 64-bit range: they are added to `flags` for
    the row form to decide. None for a negative scale (the row form writes those).
    Both are read from the exact text: Arrow's decimal arithmetic is not exact everywhere
    (its floor of a decimal128(38, 18) near 2**64 is off by billions).
    """
    if column.type.scale < 0:
        return None
    text = pc.cast(column, pa.string())
    whole = pc.match_substring_regex(text, _WHOLE_DECIMAL)
    digits = pc.replace_substring_regex(text, _WHOLE_DECIMAL_TAIL, "")
    flags.append(pc.and_(whole, pc.greater_equal(pc.binary_length(digits), 19)))
    nearest = float_text(pc.cast(text, pa.float64()))
    return pc.if_else(whole, digits, nearest)


# -- JSON values ---------------------------------------------------------------------------------


def too_deep() -> ValueProblem:
    """The problem of a value nested deeper than `MAX_NESTING`."""
    return ValueProblem(f"nested deeper than {MAX_NESTING} levels")


def to_json_value(value: Any) -> Any:
    """Make one attribute value JSON-ready for orjson (which handles str/int/float/bool/None).

    Raises `ValueProblem` for a value JSON cannot carry: a non-finite number, an integer beyond
    64 bits, containers nested deeper than `MAX_NESTING`.
    """
    return _json_ready(value, 0)


def _json_ready(value: Any, level: int) -> Any:
    """`to_json_value` of a value inside `level` containers."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise ValueProblem("an integer outside the 64-bit range JSON consumers accept")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueProblem("not a finite number")
        return value
    if isinstance(value, dt.datetime):
        return datetime_to_unix(value)
    if isinstance(value, dt.date):
        return datetime_to_unix(dt.datetime(value.year, value.month, value.day))
    if isinstance(value, Decimal):
        return decimal_to_number(value)
    if isinstance(value, (dict, list, tuple)):
        if level >= MAX_NESTING:
            raise too_deep()
        if isinstance(value, dict):
            return {str(k): _json_ready(v, level + 1) for k, v in value.items()}
        return [_json_ready(v, level + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Unreadable):
        raise value.problem()
    # UUIDs, numpy scalars and the like: their text form is what a warehouse user expects.
    return str(value)


def parse_json_text(text: str | bytes) -> Any:
    """The value a JSON text holds; `ValueProblem` when it is not JSON (or nests too deep)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson reads at most 1024 levels and says so only in its message
        if exc.msg.startswith("depth limit"):
            raise too_deep() from None
        raise ValueProblem("not valid JSON") from None


def parse_json_object(value: Any) -> dict[str, Any]:
    """Event data from a JSON column: a dict, or a string holding a JSON object."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (str, bytes)):
        parsed = parse_json_text(value)
        if isinstance(parsed, dict):
            return parsed
        raise ValueProblem(f"JSON holds a {type(parsed).__name__}, not an object")
    raise ValueProblem(f"a {type(value).__name__} is not a JSON object")


# -- records of any value ------------------------------------------------------------------------


def recordable_json(value: Any) -> bytes:
    """JSON of any value or row, for rejection records and row keys: it never raises.

    What orjson refuses or would blur is written as text: integers beyond 64 bits as their
    digits, non-finite floats as `nan`/`inf`, Decimals as their digits, bytes in base64, other
    objects as `str()`. Containers nested deeper than `MAX_NESTING` below the top become a
    string holding their JSON, so a record stays readable (and writable again by dlt).
    """
    return orjson.dumps(_recordable(value, 0))


def _recordable(value: Any, level: int) -> Any:
    if isinstance(value, (dict, list, tuple)):
        if level > MAX_NESTING:
            return _json_text(value)
        if isinstance(value, dict):
            return {str(k): _recordable(v, level + 1) for k, v in value.items()}
        return [_recordable(v, level + 1) for v in value]
    return _recordable_leaf(value)


def _recordable_leaf(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value if MIN_INT <= value <= MAX_INT else int_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dt.date, dt.time)):
        return value  # orjson writes them as ISO-8601 text
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


class _Piece(str):
    """Text `_json_text` has already written as JSON (a bracket, a comma, a key)."""


def _json_text(value: Any) -> str:
    """The JSON text of a container of any depth, written without recursion."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Piece):
            out.append(item)
        elif isinstance(item, dict):
            pieces: list[Any] = [_Piece("{")]
            for index, (key, child) in enumerate(item.items()):
                name = orjson.dumps(str(key)).decode()
                pieces += [_Piece(("," if index else "") + name + ":"), child]
            stack.extend(reversed([*pieces, _Piece("}")]))
        elif isinstance(item, (list, tuple)):
            pieces = [_Piece("[")]
            for index, child in enumerate(item):
                pieces += [_Piece(",")] if index else []
                pieces.append(child)
            stack.extend(reversed([*pieces, _Piece("]")]))
        else:
            out.append(orjson.dumps(_recordable_leaf(item)).decode())
    return "".join(out)
