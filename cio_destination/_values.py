"""Turn warehouse values into what Customer.io's Track API accepts.

Pure functions, no I/O. Timestamps become integer unix seconds; Decimals become JSON numbers;
datetimes inside attributes become unix seconds too (what Customer.io segments compare on).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import re
from decimal import Context, Decimal
from typing import Any

import orjson

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)

# Epoch numbers are told apart by magnitude: seconds stay below 1e11 until the year 5138, and
# ms / us / ns values of any date after 1973 are above the next threshold.
_MS_FROM = 1e11
_US_FROM = 1e14
_NS_FROM = 1e17

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# used with fullmatch: `$` would also match before a trailing newline
_DIGITS = re.compile(r"[0-9]+")
# Customer.io timestamps are unix seconds from 1970 up to the end of year 9999.
_MAX_UNIX = 253_402_300_799
_OUT_OF_RANGE = "outside the years 1970 to 9999 that Customer.io timestamps cover"
# the integer digits of the largest epoch number of those years (in nanoseconds), less one
_MOST_EPOCH_DIGITS = len(str(_MAX_UNIX * 1_000_000_000)) - 1
# orjson (and JSON consumers in general) take integers in the signed/unsigned 64-bit range.
_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1
MAX_NESTING = 250
"""The most containers a value may nest. orjson writes at most 254 levels in all, and an
operation (or a key, or a stored rejection read back by dlt) wraps a value in up to four."""


class ValueProblem(ValueError):
    """A value cannot be converted; the message never contains the value itself."""


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
        if _DIGITS.fullmatch(stripped):
            seconds = _epoch_number_to_unix(int(stripped))
        else:
            seconds = datetime_to_unix(_parse_iso(stripped))
    else:
        raise ValueProblem(f"a {type(value).__name__} is not a timestamp")
    if not 0 <= seconds <= _MAX_UNIX:
        raise ValueProblem(_OUT_OF_RANGE)
    return seconds


def decimal_to_number(value: Decimal) -> int | float:
    if not value.is_finite():
        raise ValueProblem("not a finite number")
    if value == value.to_integral_value():
        number = int(value)
        if _MIN_INT <= number <= _MAX_INT:
            return number
    number = float(value)
    if not math.isfinite(number):  # beyond the double range: orjson would write null
        raise ValueProblem("not a finite number")
    return number


def _too_deep() -> ValueProblem:
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
        if not _MIN_INT <= value <= _MAX_INT:
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
            raise _too_deep()
        if isinstance(value, dict):
            return {str(k): _json_ready(v, level + 1) for k, v in value.items()}
        return [_json_ready(v, level + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    # UUIDs, numpy scalars and the like: their text form is what a warehouse user expects.
    return str(value)


def parse_json_text(text: str | bytes) -> Any:
    """The value a JSON text holds; `ValueProblem` when it is not JSON (or nests too deep)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson reads at most 1024 levels and says so only in its message
        if exc.msg.startswith("depth limit"):
            raise _too_deep() from None
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
            raise _too_deep()
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
        return value if _MIN_INT <= value <= _MAX_INT else str(value)
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


def deterministic_ulid(namespace: str, key: bytes) -> str:
    """A ULID-formatted id derived from (namespace, key): same input, same id, on any machine.

    Customer.io de-duplicates events by this id and does not use its time part, so all 128 bits
    come from a hash. 26 Crockford base32 chars carry 130 bits; the top two are zero.
    """
    digest = hashlib.blake2b(digest_size=16, person=ULID_PERSON)
    digest.update(namespace.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(key)
    number = int.from_bytes(digest.digest(), "big")
    return "".join([ULID_PAIRS[(number >> shift) & 1023] for shift in ULID_PAIR_SHIFTS])


ULID_PERSON = b"cio-dest-ulid-v1"
# two Crockford chars per 10 bits: 13 lookups write the 26 chars of a 130-bit number
ULID_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
ULID_PAIR_SHIFTS = tuple(range(120, -1, -10))
