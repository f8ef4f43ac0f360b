"""Pure tests of cio_destination.values and event_ids: timestamps, JSON values, event data, idempotency keys."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
import string
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.event_ids import canonical_key, deterministic_ulid
from cio_destination.values import (
    MAX_NESTING,
    ValueProblem,
    datetime_to_unix,
    floor_divide,
    parse_json_object,
    recordable_json,
    to_json_value,
    to_unix_seconds,
)

UTC = dt.timezone.utc
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
PST = dt.timezone(dt.timedelta(hours=-8))
NPT = dt.timezone(dt.timedelta(hours=5, minutes=45))

# 2024-01-15T10:30:00Z and midnight UTC of that day.
T = 1_705_314_600
DAY = 1_705_276_800

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _assert_value_not_in_message(value: object, exc: BaseException) -> None:
    # Values shorter than 4 chars ("-", "5") could match ordinary words of any message.
    message = str(exc)
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        text = str(value)
    else:
        return
    if len(text) >= 4:
        assert text not in message


# --- to_unix_seconds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(dt.datetime(2024, 1, 15, 10, 30, tzinfo=UTC), id="utc"),
        pytest.param(dt.datetime(2024, 1, 15, 16, 0, tzinfo=IST), id="plus-05:30"),
        pytest.param(dt.datetime(2024, 1, 15, 2, 30, tzinfo=PST), id="minus-08:00"),
        pytest.param(dt.datetime(2024, 1, 15, 16, 15, tzinfo=NPT), id="plus-05:45"),
        pytest.param(
            dt.datetime(2024, 1, 14, 23, 30, tzinfo=dt.timezone(-dt.timedelta(hours=11))),
            id="minus-11:00-previous-day",
        ),
        pytest.param(dt.datetime(2024, 1, 15, 10, 30), id="naive-is-utc"),
        pytest.param(
            dt.datetime(2024, 1, 15, 10, 30, 0, 999_999, tzinfo=UTC), id="fraction-floored"
        ),
    ],
)
def test_to_unix_seconds_datetimes_give_the_same_instant(value):
    assert to_unix_seconds(value) == T


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(dt.datetime(9999, 12, 31, 23, 59, 59, 999_999), 253_402_300_799, id="last-us"),
        pytest.param(
            dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), 253_402_300_799, id="aware"
        ),
        pytest.param(dt.datetime(4147, 8, 20, 7, 32, 16, 999_993), 68_719_476_736, id="past-2**36"),
        pytest.param(
            dt.datetime(2500, 1, 1, 5, 30, 0, 999_999, tzinfo=IST), 16_725_225_600, id="offset"
        ),
        pytest.param(dt.datetime(1969, 12, 31, 23, 59, 59, 999_999), -1, id="before-1970"),
    ],
)
def test_datetimes_are_floored_to_the_second_they_are_in(value, expected):
    """Far-future datetimes hold more digits than a float timestamp() keeps: 999,999 us must
    not round up into the next second (the columnar path's integer arithmetic never does)."""
    assert datetime_to_unix(value) == expected
    assert to_json_value(value) == expected
    if expected >= 0:  # a timestamp column takes 1970 to the end of 9999
        assert to_unix_seconds(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(dt.date(2024, 1, 15), DAY, id="date-midnight-utc"),
        pytest.param(dt.date(1970, 1, 1), 0, id="epoch-date"),
        pytest.param(dt.date(1970, 1, 2), 86_400, id="day-after-epoch"),
    ],
)
def test_to_unix_seconds_date_is_midnight_utc(value, expected):
    assert to_unix_seconds(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2024-01-15T10:30:00Z", T, id="Z"),
        pytest.param("2024-01-15T10:30:00z", T, id="lower-z"),
        pytest.param("2024-01-15T10:30:00.123456Z", T, id="Z-fraction"),
        pytest.param("2024-01-15T10:30:00+00:00", T, id="plus-00:00"),
        pytest.param("2024-01-15T16:00:00+05:30", T, id="plus-05:30"),
        pytest.param("2024-01-15T02:30:00-08:00", T, id="minus-08:00"),
        pytest.param("2024-01-15T10:30:00", T, id="no-zone-is-utc"),
        pytest.param("2024-01-15 10:30:00", T, id="space-separator"),
        pytest.param("  2024-01-15T10:30:00Z  ", T, id="surrounding-whitespace"),
        pytest.param("2024-01-15", DAY, id="date-only"),
    ],
)
def test_to_unix_seconds_iso_strings(value, expected):
    assert to_unix_seconds(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        # seconds
        pytest.param(T, id="s-int"),
        pytest.param(float(T), id="s-float"),
        pytest.param(T + 0.75, id="s-float-fraction"),
        pytest.param(Decimal(T), id="s-decimal"),
        pytest.param(Decimal(f"{T}.5"), id="s-decimal-fraction"),
        # more digits than a double keeps: float() would round up into the next second
        pytest.param(Decimal(f"{T}.9999999999"), id="s-decimal-last-fraction"),
        pytest.param(str(T), id="s-digits"),
        pytest.param(f" {T} ", id="s-digits-whitespace"),
        # milliseconds
        pytest.param(T * 1_000, id="ms-int"),
        pytest.param(T * 1_000 + 999, id="ms-int-fraction"),
        pytest.param(float(T * 1_000 + 123), id="ms-float"),
        pytest.param(Decimal(T * 1_000 + 456), id="ms-decimal"),
        pytest.param(Decimal(f"{T * 1_000 + 999}.99999999"), id="ms-decimal-last-fraction"),
        pytest.param(str(T * 1_000 + 789), id="ms-digits"),
        # microseconds
        pytest.param(T * 1_000_000, id="us-int"),
        pytest.param(T * 1_000_000 + 999_999, id="us-int-fraction"),
        pytest.param(float(T * 1_000_000 + 500_000), id="us-float"),
        pytest.param(Decimal(T * 1_000_000 + 1), id="us-decimal"),
        pytest.param(str(T * 1_000_000 + 123_456), id="us-digits"),
        # nanoseconds
        pytest.param(T * 1_000_000_000, id="ns-int"),
        pytest.param(T * 1_000_000_000 + 999_999_999, id="ns-int-fraction"),
        pytest.param(float(T * 1_000_000_000), id="ns-float"),
        pytest.param(Decimal(T * 1_000_000_000 + 123), id="ns-decimal"),
        pytest.param(str(T * 1_000_000_000 + 123_456_789), id="ns-digits"),
    ],
)
def test_to_unix_seconds_epoch_numbers_in_any_unit(value):
    result = to_unix_seconds(value)
    assert type(result) is int
    assert result == T


@pytest.mark.parametrize(
    "value",
    [
        # negative epoch numbers
        pytest.param(-1, id="negative-int"),
        pytest.param(-T, id="negative-s"),
        pytest.param(-T * 1_000, id="negative-ms"),
        pytest.param(-1.5, id="negative-float"),
        pytest.param(Decimal("-5"), id="negative-decimal"),
        pytest.param("-5", id="negative-digits"),
        pytest.param(f"-{T * 1_000}", id="negative-ms-digits"),
        # booleans
        pytest.param(True, id="true"),
        pytest.param(False, id="false"),
        # garbage
        pytest.param("not a date", id="words"),
        pytest.param("secret-value-123", id="secret-like"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("2024-13-45", id="impossible-date"),
        pytest.param("12abc", id="digits-and-letters"),
        pytest.param("--5", id="double-minus"),
        pytest.param("-", id="lone-minus"),
        pytest.param("1.2.3", id="dotted"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("-inf"), id="minus-inf"),
        pytest.param(Decimal("NaN"), id="decimal-nan"),
        pytest.param(Decimal("sNaN"), id="decimal-snan"),
        pytest.param(Decimal("Infinity"), id="decimal-inf"),
        pytest.param(Decimal("1E+400"), id="decimal-past-double"),
        pytest.param(Decimal("1E+100000000"), id="decimal-huge-exponent"),
        pytest.param(None, id="none"),
        pytest.param([T], id="list"),
        pytest.param({"t": T}, id="dict"),
        pytest.param(b"1705314600", id="bytes"),
        pytest.param(object(), id="object"),
    ],
)
def test_to_unix_seconds_rejects_without_echoing_the_value(value):
    with pytest.raises(ValueProblem) as info:
        to_unix_seconds(value)
    _assert_value_not_in_message(value, info.value)


# --- to_json_value -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "expected_type"),
    [
        pytest.param(Decimal("42"), 42, int, id="decimal-integral"),
        pytest.param(Decimal("42.000"), 42, int, id="decimal-integral-scaled"),
        pytest.param(Decimal("1E+2"), 100, int, id="decimal-exponent"),
        pytest.param(Decimal("-7"), -7, int, id="decimal-negative-integral"),
        pytest.param(Decimal("19.99"), 19.99, float, id="decimal-fraction"),
        pytest.param(Decimal("-0.5"), -0.5, float, id="decimal-negative-fraction"),
        pytest.param("text", "text", str, id="str"),
        pytest.param(7, 7, int, id="int"),
        pytest.param(2.5, 2.5, float, id="float"),
        pytest.param(True, True, bool, id="bool"),
        pytest.param(None, None, type(None), id="none"),
        pytest.param(dt.datetime(2024, 1, 15, 16, 0, tzinfo=IST), T, int, id="datetime-aware"),
        pytest.param(dt.datetime(2024, 1, 15, 10, 30), T, int, id="datetime-naive"),
        pytest.param(dt.date(2024, 1, 15), DAY, int, id="date"),
        pytest.param(b"\x00\x01hi", base64.b64encode(b"\x00\x01hi").decode(), str, id="bytes"),
        pytest.param(bytearray(b"abc"), "YWJj", str, id="bytearray"),
        pytest.param(memoryview(b"abc"), "YWJj", str, id="memoryview"),
        pytest.param((1, Decimal("2")), [1, 2], list, id="tuple-to-list"),
    ],
)
def test_to_json_value_scalars(value, expected, expected_type):
    result = to_json_value(value)
    assert result == expected
    assert type(result) is expected_type


def test_to_json_value_nested_structures_are_converted():
    value = {
        "price": Decimal("19.99"),
        "qty": Decimal("3"),
        "items": [
            {"at": dt.datetime(2024, 1, 15, 2, 30, tzinfo=PST), "raw": b"hi"},
            Decimal("1.5"),
            [dt.date(2024, 1, 15)],
        ],
        "flag": False,
        7: "int key",
    }
    assert to_json_value(value) == {
        "price": 19.99,
        "qty": 3,
        "items": [{"at": T, "raw": "aGk="}, 1.5, [DAY]],
        "flag": False,
        "7": "int key",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"coupon": None}, {"coupon": None}, id="null-in-dict"),
        pytest.param([None, 1], [None, 1], id="null-in-list"),
        pytest.param({"a": {"b": None}}, {"a": {"b": None}}, id="null-deep"),
    ],
)
def test_to_json_value_nested_null_stays_null(value, expected):
    assert to_json_value(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("-inf"), id="minus-inf"),
        pytest.param(Decimal("NaN"), id="decimal-nan"),
        pytest.param(Decimal("Infinity"), id="decimal-inf"),
        pytest.param({"a": [1, float("nan")]}, id="nested-nan"),
        pytest.param([Decimal("NaN")], id="nested-decimal-nan"),
    ],
)
def test_to_json_value_rejects_non_finite_numbers(value):
    with pytest.raises(ValueProblem):
        to_json_value(value)


# --- parse_json_object -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}, id="dict"),
        pytest.param({}, {}, id="empty-dict"),
        pytest.param('{"a": 1, "b": {"c": "x"}}', {"a": 1, "b": {"c": "x"}}, id="json-string"),
        pytest.param(b'{"a": 1}', {"a": 1}, id="json-bytes"),
        pytest.param("{}", {}, id="empty-object-string"),
        pytest.param('  {"a": null}  ', {"a": None}, id="whitespace-and-null"),
    ],
)
def test_parse_json_object_accepts_objects(value, expected):
    assert parse_json_object(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('{"secret": ', id="invalid-json"),
        pytest.param("{not json-secret}", id="invalid-json-braces"),
        pytest.param("", id="empty-string"),
        pytest.param("[1, 2, 3]", id="json-array"),
        pytest.param("12345", id="json-number"),
        pytest.param('"secret-string"', id="json-string"),
        pytest.param("null", id="json-null"),
        pytest.param("true", id="json-bool"),
        pytest.param([1, 2], id="python-list"),
        pytest.param(42, id="python-int"),
        pytest.param(None, id="python-none"),
    ],
)
def test_parse_json_object_rejects_non_objects(value):
    with pytest.raises(ValueProblem) as info:
        parse_json_object(value)
    _assert_value_not_in_message(value, info.value)


# --- deterministic_ulid ------------------------------------------------------------------------

# Pinned once. If this changes, every event re-sent after an upgrade gets a new id and Customer.io
# creates it a second time: the derivation must never change silently.
GOLDEN_NAMESPACE = "orders"
GOLDEN_KEY = b'["o-1"]'
GOLDEN_ULID = "70BZVJC7C6P8R7JBB5GW84SSNR"


def test_deterministic_ulid_golden_value():
    assert canonical_key(["o-1"]) == GOLDEN_KEY
    assert deterministic_ulid(GOLDEN_NAMESPACE, GOLDEN_KEY) == GOLDEN_ULID


def _random_inputs(count: int) -> list[tuple[str, bytes]]:
    rng = random.Random(1234)
    inputs = [("", b""), ("t", b"\x00"), ("ünïcode", "ключ".encode())]
    for _ in range(count):
        namespace = "".join(rng.choices(string.ascii_lowercase + "_", k=rng.randint(1, 20)))
        inputs.append((namespace, rng.randbytes(rng.randint(0, 64))))
    return inputs


def _ulid_by_arithmetic(namespace: str, key: bytes) -> str:
    """The derivation written out: 128 hash bits as 26 Crockford chars, top two bits zero."""
    digest = hashlib.blake2b(digest_size=16, person=b"cio-dest-ulid-v1")
    digest.update(namespace.encode() + b"\x00" + key)
    number = int.from_bytes(digest.digest(), "big")
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(number >> (5 * i)) & 31] for i in reversed(range(26)))


def test_deterministic_ulid_equals_the_arithmetic_derivation():
    inputs = _random_inputs(2_000)

    assert [deterministic_ulid(n, k) for n, k in inputs] == [
        _ulid_by_arithmetic(n, k) for n, k in inputs
    ]


@pytest.mark.parametrize(("namespace", "key"), _random_inputs(40))
def test_deterministic_ulid_format(namespace, key):
    ulid = deterministic_ulid(namespace, key)
    assert len(ulid) == 26
    assert set(ulid) <= CROCKFORD
    assert ulid[0] in "01234567"  # a ULID holds 128 bits: the first char is at most 7
    assert deterministic_ulid(namespace, key) == ulid


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(("orders", b'["o-1"]'), ("orders", b'["o-2"]'), id="different-key"),
        pytest.param(("orders", b'["o-1"]'), ("refunds", b'["o-1"]'), id="different-table"),
        pytest.param(("ab", b"c"), ("a", b"bc"), id="namespace-key-boundary"),
        pytest.param(("orders", b""), ("orders", b"\x00"), id="empty-vs-nul"),
    ],
)
def test_deterministic_ulid_differs_for_different_inputs(a, b):
    assert deterministic_ulid(*a) != deterministic_ulid(*b)


def test_deterministic_ulid_no_collisions_over_many_keys():
    ids = {deterministic_ulid("orders", canonical_key([i])) for i in range(5_000)}
    assert len(ids) == 5_000


# --- canonical_key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param(
            [dt.datetime(2024, 1, 15, 16, 0, tzinfo=IST)],
            [dt.datetime(2024, 1, 15, 10, 30, tzinfo=UTC)],
            id="datetime-other-tz",
        ),
        pytest.param(
            [dt.datetime(2024, 1, 15, 2, 30, tzinfo=PST)],
            [dt.datetime(2024, 1, 15, 16, 0, tzinfo=IST)],
            id="datetime-two-offsets",
        ),
        pytest.param(
            [dt.datetime(2024, 1, 15, 10, 30)],
            [dt.datetime(2024, 1, 15, 10, 30, tzinfo=UTC)],
            id="naive-is-utc",
        ),
        pytest.param([Decimal("1.50")], [Decimal("1.5")], id="decimal-trailing-zero"),
        pytest.param([Decimal("100")], [Decimal("100.00")], id="decimal-integral-scale"),
        pytest.param([5], [5.0], id="int-vs-float"),
        pytest.param([{"b": 1, "a": 2}], [{"a": 2, "b": 1.0}], id="dict-order"),
        pytest.param([[1, Decimal("2.0")]], [(1.0, Decimal("2"))], id="list-vs-tuple"),
    ],
)
def test_canonical_key_equal_for_equal_values(left, right):
    assert canonical_key(left) == canonical_key(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param(["5"], [5], id="str-vs-int"),
        pytest.param([True], [1], id="bool-vs-int"),
        pytest.param([Decimal("1.5")], [Decimal("1.51")], id="decimal-values"),
        pytest.param(
            [dt.datetime(2024, 1, 15, 10, 30, tzinfo=UTC)],
            [dt.datetime(2024, 1, 15, 10, 30, tzinfo=IST)],
            id="same-wall-clock-other-instant",
        ),
        pytest.param(["a", "b"], ["b", "a"], id="order-matters"),
        pytest.param([None], [""], id="none-vs-empty"),
        pytest.param(
            [Decimal("1234567890123456789012345678901")],
            [Decimal("1234567890123456789012345678902")],
            id="decimals-differing-past-28-digits",
        ),
    ],
)
def test_canonical_key_differs_for_different_values(left, right):
    assert canonical_key(left) != canonical_key(right)


def test_decimal_keys_do_not_depend_on_the_threads_decimal_context():
    import decimal

    key = canonical_key([Decimal("12345.6789000")])
    with decimal.localcontext(decimal.Context(prec=3)):
        assert canonical_key([Decimal("12345.6789000")]) == key
    assert key == b'["12345.6789"]'


def test_canonical_key_same_for_dict_and_arrow_rows():
    dict_rows = [
        {
            "at": dt.datetime(2024, 1, 15, 16, 0, tzinfo=IST),
            "amount": Decimal("1.5"),
            "qty": 5,
            "code": "o-1",
            "naive": dt.datetime(2024, 1, 15, 10, 30),
        },
        {
            "at": dt.datetime(2024, 1, 15, 2, 30, tzinfo=PST),
            "amount": Decimal("100"),
            "qty": 7,
            "code": "o-2",
            "naive": dt.datetime(2024, 1, 15, 10, 30, 0, 250_000),
        },
    ]
    batch = pa.RecordBatch.from_pydict(
        {
            "at": pa.array([r["at"] for r in dict_rows], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([r["amount"] for r in dict_rows], pa.decimal128(12, 2)),
            "qty": pa.array([float(r["qty"]) for r in dict_rows], pa.float64()),
            "code": pa.array([r["code"] for r in dict_rows], pa.string()),
            "naive": pa.array([r["naive"] for r in dict_rows], pa.timestamp("us")),
        }
    )
    arrow_rows = batch.to_pylist()
    # the Arrow form really is a different representation of the same values
    assert arrow_rows[0]["amount"] == Decimal("1.50")
    assert isinstance(arrow_rows[0]["qty"], float)
    for dict_row, arrow_row in zip(dict_rows, arrow_rows, strict=True):
        for column in dict_row:
            assert canonical_key([dict_row[column]]) == canonical_key([arrow_row[column]]), column
        assert canonical_key(list(dict_row.values())) == canonical_key(list(arrow_row.values()))

    # the columnar path writes the keys of the Arrow form itself: the ids are those of the dicts
    from cio_destination.mapper import RowMapper, map_items
    from cio_destination.mapping import compile_mapping, parse_mapping

    key_columns = ["at", "qty", "code", "naive"]  # the types it writes (decimals it leaves)
    declared = {"action": "event", "identifier": "code", "event_name": "x", "event_id": key_columns}
    columns = {name: {"name": name} for name in batch.schema.names}
    mapper = RowMapper(compile_mapping("orders", parse_mapping("orders", declared), columns))
    mapped = map_items(mapper, batch)
    assert mapped.block is not None and len(mapped.block) == 2
    assert [entry.key for entry in mapped.block] == [
        deterministic_ulid("orders", canonical_key([row[c] for c in key_columns]))
        for row in dict_rows
    ]


# --- values JSON cannot carry: non-finite, beyond 64 bits, nested too deep ------------------------


def nested(levels: int, leaf: object = 1) -> object:
    """`levels` containers, dicts and lists in turn, around `leaf` (built without recursion)."""
    value = leaf
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def nested_text(levels: int) -> str:
    return '{"k":' * levels + "1" + "}" * levels


def levels_of(value: object) -> int:
    depth = 0
    while isinstance(value, (dict, list)):
        depth += 1
        value = value["k"] if isinstance(value, dict) else value[0]
    return depth


def test_to_json_value_takes_values_nested_up_to_the_limit():
    assert levels_of(to_json_value(nested(MAX_NESTING))) == MAX_NESTING
    assert levels_of(to_json_value(parse_json_object(nested_text(MAX_NESTING)))) == MAX_NESTING


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 300, 1_100, 5_000])
def test_to_json_value_refuses_deeper_values_without_recursing_into_them(levels: int):
    with pytest.raises(ValueProblem, match=f"nested deeper than {MAX_NESTING} levels"):
        to_json_value(nested(levels))


@pytest.mark.parametrize("levels", [300, 1_100, 5_000])
def test_parse_json_object_of_deep_text_is_a_value_problem(levels: int):
    with pytest.raises(ValueProblem, match=f"nested deeper than {MAX_NESTING} levels"):
        to_json_value(parse_json_object(nested_text(levels)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(2.0**63, b"[9223372036854775808]", id="uint64-range"),
        pytest.param(-(2.0**63), b"[-9223372036854775808]", id="int64-minimum"),
    ],
)
def test_canonical_key_of_whole_floats_within_64_bits_is_the_integer(value: float, expected):
    assert canonical_key([value]) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(2**64, id="int-beyond-64-bits"),
        pytest.param(2.0**64, id="whole-float-beyond-64-bits"),
        pytest.param(-1e300, id="whole-float-far-beyond-64-bits"),
        pytest.param(nested(MAX_NESTING + 1), id="too-deep"),
        pytest.param(nested(5_000), id="far-too-deep"),
    ],
)
def test_canonical_key_of_a_value_without_a_key_is_a_value_problem(value: object):
    with pytest.raises(ValueProblem):
        canonical_key([value])


def test_decimal_beyond_the_double_range_is_refused_not_sent_as_null():
    # float(Decimal("1e400")) is inf, which orjson would write as null
    with pytest.raises(ValueProblem, match="not a finite number"):
        to_json_value(Decimal("1e400"))
    with pytest.raises(ValueProblem):
        to_unix_seconds(Decimal("1e400"))  # a ValueError from int(nan) before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"a": 1, "b": [1.5, None]}, {"a": 1, "b": [1.5, None]}, id="plain"),
        pytest.param({"big": 2**70, "neg": -(2**70)}, {"big": str(2**70), "neg": str(-(2**70))}),
        pytest.param(
            {"x": float("nan"), "y": float("-inf")}, {"x": "nan", "y": "-inf"}, id="non-finite"
        ),
        pytest.param({"d": Decimal("1.50"), "b": b"hi"}, {"d": "1.50", "b": "aGk="}, id="types"),
        pytest.param({7: "int key"}, {"7": "int key"}, id="non-str-key"),
        pytest.param({"n": 10**5_000}, {"n": "1" + "0" * 5_000}, id="5001-digits"),
    ],
)
def test_recordable_json_writes_what_orjson_refuses(value: object, expected: object):
    assert orjson.loads(recordable_json(value)) == expected


@pytest.mark.parametrize("levels", [MAX_NESTING, MAX_NESTING + 1, 300, 1_100, 5_000])
def test_recordable_json_keeps_deep_values_as_text_below_the_limit(levels: int):
    value = nested(levels)

    record = orjson.loads(recordable_json({"data": value}))

    # readable back, and never deeper than a record written by dlt again can be
    assert levels_of(record["data"]) <= MAX_NESTING
    inner = record["data"]
    for _ in range(min(levels, MAX_NESTING)):
        if isinstance(inner, str):
            break
        inner = inner["k"] if isinstance(inner, dict) else inner[0]
    if levels <= MAX_NESTING:
        assert record["data"] == value
    else:
        assert isinstance(inner, str)
        assert inner.startswith(("[", "{")) and inner.count("1") == 1
        if levels < 1_000:  # orjson reads JSON up to 1024 levels
            assert levels_of(orjson.loads(inner)) + MAX_NESTING == levels


@pytest.mark.parametrize(
    "text", ["9" * 5_000, "1" * 22, "0" * 5_000 + "1" * 22], ids=["5000", "22", "zeros-then-22"]
)
def test_digit_strings_too_long_for_any_epoch_are_out_of_range_not_an_error(text: str):
    """int() of 4,300 digits or more raises ValueError: that failed the whole load."""
    with pytest.raises(ValueProblem, match="outside the years"):
        to_unix_seconds(text)


def test_leading_zeros_do_not_count_against_an_epoch_number():
    assert to_unix_seconds("0" * 5_000 + "1700000000") == 1_700_000_000


def test_floor_divide_rounds_down_as_python_does_with_and_without_negative_values():
    """Columns without a negative value take a shorter way (truncation is rounding down there):
    both ways give Python's `//`, and both are drawn."""
    seen = set()

    @given(
        st.lists(st.integers(-(2**63), 2**63 - 1) | st.none(), max_size=12),
        st.sampled_from([1, 7, 1_000, 1_000_000, 1_000_000_000]),
    )
    def check(values: list[int | None], divisor: int) -> None:
        got = floor_divide(pa.array(values, pa.int64()), divisor).to_pylist()
        assert got == [None if v is None else v // divisor for v in values]
        seen.add(any(v is not None and v < 0 for v in values))

    check()
    assert seen == {True, False}


@pytest.mark.parametrize("width", [64, 32])
def test_float_pieces_joined_are_orjson_s_text(width):
    """Each finite float as orjson writes it, the two pieces joined (a null stays null)."""
    from cio_destination.arrow_json import float_pieces, float_text

    finite = st.floats(allow_nan=False, allow_infinity=False, width=width)

    @given(st.lists(st.one_of(st.none(), finite)))
    def check(values):
        column = pa.array(values, pa.float64() if width == 64 else pa.float32())
        text, whole = float_pieces(column)
        expected = [None if v is None else orjson.dumps(v).decode() for v in column.to_pylist()]
        assert pa.compute.binary_join_element_wise(text, whole, "").to_pylist() == expected
        assert float_text(column).to_pylist() == expected

    check()


def test_float_members_are_one_text_column_unless_split():
    """Callers that take a member's values as one column (the changes_only diff) get one; the
    builders that join every piece of an operation at once ask for the two pieces."""
    from cio_destination.limits import attribute_texts

    batch = pa.RecordBatch.from_pydict({"ltv": pa.array([1.0, 2.5, None])})
    (joined,) = attribute_texts(batch, ["ltv"], [], value_limit=False)
    assert joined[1].to_pylist() == ["1.0", "2.5", None]
    (split,) = attribute_texts(batch, ["ltv"], [], value_limit=False, split_floats=True)
    text, whole = split[1]
    assert pa.compute.binary_join_element_wise(text, whole, "").to_pylist() == joined[1].to_pylist()
