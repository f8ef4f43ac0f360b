"""Pure tests of the row path (`cio_destination.mapper.RowMapper`): rows in, exact Track API v2
operations or rejections out (identify, event and send_email above all; see test_actions)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest

from cio_destination import limits
from cio_destination.entries import Entry, Mapped, Rejection, rows_from_arrow
from cio_destination.event_ids import canonical_key, deterministic_ulid
from cio_destination.mapper import RowMapper
from cio_destination.mapping import compile_mapping, parse_mapping

UTC = dt.timezone.utc
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
PST = dt.timezone(dt.timedelta(hours=-8))
T = 1_705_314_600  # 2024-01-15T10:30:00Z

# Pinned in test_values too: the id of the event of table "orders" whose event_id is "o-1".
GOLDEN_ULID = "70BZVJC7C6P8R7JBB5GW84SSNR"


def columns(*names: str, pk: tuple[str, ...] = (), json: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        column: dict[str, Any] = {"name": name, "data_type": "json" if name in json else "text"}
        if name in pk:
            column["primary_key"] = True
        out[name] = column
    return out


def mapper(table: str, table_columns: dict[str, Any], **declared: Any) -> RowMapper:
    return RowMapper(compile_mapping(table, parse_mapping(table, declared), table_columns))


def ops(mapped: Mapped) -> list[dict[str, Any]]:
    return [orjson.loads(entry.data) for entry in mapped.entries]


USERS = columns("id", "email", "name", "plan", "updated_at")
ORDERS = columns("order_id", "user_id", "kind", "total", "props", "created_at", json=("props",))


# --- identify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "table_columns", "row", "expected"),
    [
        pytest.param(
            {"identifier": "id"},
            USERS,
            {"id": "u-1", "email": "ann@example.com", "name": "Ann", "plan": None},
            {
                "identifiers": {"id": "u-1"},
                "attributes": {"email": "ann@example.com", "name": "Ann"},
            },
            id="by-id-none-left-out",
        ),
        pytest.param(
            {"identifier": "id"},
            USERS,
            {"id": 42, "name": "Ann"},
            {"identifiers": {"id": "42"}, "attributes": {"name": "Ann"}},
            id="int-identifier-as-string",
        ),
        pytest.param(
            {"identifier": "id"},
            USERS,
            {"id": Decimal("42"), "name": "Ann"},
            {"identifiers": {"id": "42"}, "attributes": {"name": "Ann"}},
            id="decimal-identifier-as-string",
        ),
        pytest.param(
            {"identifier": "email", "identifier_type": "email"},
            USERS,
            {"id": 1, "email": "ann@example.com", "plan": "pro"},
            {"identifiers": {"email": "ann@example.com"}, "attributes": {"id": 1, "plan": "pro"}},
            id="by-email",
        ),
        pytest.param(
            {"identifier": "cio", "identifier_type": "cio_id"},
            columns("cio", "plan"),
            {"cio": "a3000001", "plan": "pro"},
            {"identifiers": {"cio_id": "a3000001"}, "attributes": {"plan": "pro"}},
            id="by-cio-id",
        ),
        pytest.param(
            {"identifier": "phone", "identifier_type": "phone"},
            columns("phone", "plan"),
            {"phone": "+14155550100", "plan": "pro"},
            {"identifiers": {"phone": "+14155550100"}, "attributes": {"plan": "pro"}},
            id="by-phone",
        ),
        pytest.param(
            {"identifier": "id", "attributes": ["plan"]},
            USERS,
            {"id": 1, "email": "ann@example.com", "name": "Ann", "plan": "pro"},
            {"identifiers": {"id": "1"}, "attributes": {"plan": "pro"}},
            id="chosen-attributes",
        ),
        pytest.param(
            {"identifier": "id", "attributes": ["plan"]},
            USERS,
            {"id": 1, "name": "Ann", "plan": None},
            {"identifiers": {"id": "1"}},
            id="no-attributes-left",
        ),
        pytest.param(
            {"identifier": "id", "attributes": ["name", "plan"], "clear_nulls": True},
            USERS,
            {"id": 1, "name": "Ann", "plan": None},
            {"identifiers": {"id": "1"}, "attributes": {"name": "Ann", "plan": ""}},
            id="clear-nulls-sends-empty-string",
        ),
        pytest.param(
            {"identifier": "id", "attributes": ["name", "plan"], "clear_nulls": True},
            USERS,
            {"id": 1},
            {"identifiers": {"id": "1"}, "attributes": {"name": "", "plan": ""}},
            id="clear-nulls-absent-columns",
        ),
        pytest.param(
            {"identifier": "id", "timestamp": "updated_at"},
            USERS,
            {"id": 1, "plan": "pro", "updated_at": dt.datetime(2024, 1, 15, 16, 0, tzinfo=IST)},
            {"identifiers": {"id": "1"}, "attributes": {"plan": "pro"}, "timestamp": T},
            id="timestamp-datetime",
        ),
        pytest.param(
            {"identifier": "id", "timestamp": "updated_at"},
            USERS,
            {"id": 1, "updated_at": T * 1000},
            {"identifiers": {"id": "1"}, "timestamp": T},
            id="timestamp-ms",
        ),
        pytest.param(
            {"identifier": "id", "timestamp": "updated_at"},
            USERS,
            {"id": 1, "updated_at": "2024-01-15T02:30:00-08:00"},
            {"identifiers": {"id": "1"}, "timestamp": T},
            id="timestamp-iso",
        ),
        pytest.param(
            {"identifier": "id", "timestamp": "updated_at"},
            USERS,
            {"id": 1, "plan": "pro", "updated_at": None},
            {"identifiers": {"id": "1"}, "attributes": {"plan": "pro"}},
            id="timestamp-none-left-out",
        ),
        pytest.param(
            {"identifier": "id"},
            columns("id", "ltv", "seen", "signed_up", "vip", "prefs", json=("prefs",)),
            {
                "id": 1,
                "ltv": Decimal("19.99"),
                "seen": dt.datetime(2024, 1, 15, 2, 30, tzinfo=PST),
                "signed_up": dt.date(2024, 1, 15),
                "vip": False,
                "prefs": '{"news": true}',
            },
            {
                "identifiers": {"id": "1"},
                "attributes": {
                    "ltv": 19.99,
                    "seen": T,
                    "signed_up": 1_705_276_800,
                    "vip": False,
                    "prefs": {"news": True},
                },
            },
            id="value-conversion",
        ),
    ],
)
def test_identify_operation(declared, table_columns, row, expected):
    mapped = mapper("users", table_columns, action="identify", **declared).map_rows([row])
    assert mapped.rejections == []
    assert mapped.rows_in == 1
    assert ops(mapped) == [{"type": "person", "action": "identify", **expected}]
    assert mapped.entries[0].rows == [row]


@pytest.mark.parametrize(
    ("declared", "rows", "expected"),
    [
        pytest.param(
            {"identifier": "id"},
            [
                {"id": 1, "name": "Ann", "plan": "free"},
                {"id": 2, "name": "Bob"},
                {"id": 1, "plan": "pro", "email": "ann@example.com"},
            ],
            [
                {
                    "identifiers": {"id": "1"},
                    "attributes": {"name": "Ann", "plan": "pro", "email": "ann@example.com"},
                },
                {"identifiers": {"id": "2"}, "attributes": {"name": "Bob"}},
            ],
            id="later-row-wins",
        ),
        pytest.param(
            {"identifier": "id"},
            [{"id": 1, "plan": "pro"}, {"id": "1", "plan": None, "name": "Ann"}],
            [{"identifiers": {"id": "1"}, "attributes": {"plan": "pro", "name": "Ann"}}],
            id="none-does-not-erase-and-int-equals-string",
        ),
        pytest.param(
            {"identifier": "id", "clear_nulls": True, "attributes": ["plan"]},
            [{"id": 1, "plan": "pro"}, {"id": 1, "plan": None}],
            [{"identifiers": {"id": "1"}, "attributes": {"plan": ""}}],
            id="clear-nulls-later-none-clears",
        ),
        pytest.param(
            {"identifier": "id", "timestamp": "updated_at"},
            [
                {"id": 1, "plan": "a", "updated_at": T},
                {"id": 1, "plan": "b", "updated_at": T + 60},
                {"id": 1, "plan": "c", "updated_at": T + 30},
            ],
            [{"identifiers": {"id": "1"}, "attributes": {"plan": "c"}, "timestamp": T + 60}],
            id="latest-timestamp-kept",
        ),
        pytest.param(
            {"identifier": "id", "timestamp": "updated_at"},
            [{"id": 1, "plan": "a"}, {"id": 1, "updated_at": T}],
            [{"identifiers": {"id": "1"}, "attributes": {"plan": "a"}, "timestamp": T}],
            id="timestamp-from-later-row",
        ),
    ],
)
def test_identify_rows_of_one_person_collapse(declared, rows, expected):
    mapped = mapper("users", USERS, action="identify", **declared).map_rows(rows)
    assert mapped.rejections == []
    assert mapped.rows_in == len(rows)
    assert ops(mapped) == [{"type": "person", "action": "identify", **e} for e in expected]
    assert sum(len(entry.rows) for entry in mapped.entries) == len(rows)


def test_identify_collapsed_entry_carries_its_rows_in_order():
    rows = [{"id": 1, "plan": "a"}, {"id": 2, "plan": "b"}, {"id": 1, "plan": "c"}]
    mapped = mapper("users", USERS, action="identify", identifier="id").map_rows(rows)
    assert [entry.rows for entry in mapped.entries] == [[rows[0], rows[2]], [rows[1]]]
    assert [entry.row_key for entry in mapped.entries] == ["1", "2"]


# --- event -------------------------------------------------------------------------------------


def _order(**overrides: Any) -> dict[str, Any]:
    row = {
        "order_id": "o-1",
        "user_id": 7,
        "kind": "purchase_completed",
        "total": Decimal("19.99"),
        "props": None,
        "created_at": dt.datetime(2024, 1, 15, 16, 0, tzinfo=IST),
    }
    row.update(overrides)
    return row


ORDER_EVENT_ID = deterministic_ulid("orders", canonical_key(["o-1"]))


@pytest.mark.parametrize(
    ("declared", "row", "expected"),
    [
        pytest.param(
            {"event_name": "purchase", "event_id": "order_id", "timestamp": "created_at"},
            _order(),
            {
                "name": "purchase",
                "timestamp": T,
                "attributes": {"order_id": "o-1", "kind": "purchase_completed", "total": 19.99},
            },
            id="literal-name",
        ),
        pytest.param(
            {"event_name_column": "kind", "event_id": "order_id", "timestamp": "created_at"},
            _order(),
            {
                "name": "purchase_completed",
                "timestamp": T,
                "attributes": {"order_id": "o-1", "total": 19.99},
            },
            id="name-from-column",
        ),
        pytest.param(
            {
                "event_name_column": "kind",
                "event_id": "order_id",
                "event_data_column": "props",
                "timestamp": "created_at",
            },
            _order(props={"sku": "A1", "qty": 2, "price": Decimal("9.50")}),
            {
                "name": "purchase_completed",
                "timestamp": T,
                "attributes": {
                    "sku": "A1",
                    "qty": 2,
                    "price": 9.5,
                    "order_id": "o-1",
                    "total": 19.99,
                },
            },
            id="data-dict-merged-with-attributes",
        ),
        pytest.param(
            {
                "event_name_column": "kind",
                "event_id": "order_id",
                "event_data_column": "props",
                "timestamp": "created_at",
            },
            _order(props='{"sku": "A1", "qty": 2, "price": 9.5}'),
            {
                "name": "purchase_completed",
                "timestamp": T,
                "attributes": {
                    "sku": "A1",
                    "qty": 2,
                    "price": 9.5,
                    "order_id": "o-1",
                    "total": 19.99,
                },
            },
            id="data-json-string-merged-with-attributes",
        ),
        pytest.param(
            {
                "event_name_column": "kind",
                "event_id": "order_id",
                "event_data_column": "props",
                "attributes": [],
            },
            _order(props='{"coupon": null, "sku": "A1"}'),
            {"name": "purchase_completed", "attributes": {"coupon": None, "sku": "A1"}},
            id="data-json-null-stays-null",
        ),
        pytest.param(
            {"event_name": "purchase", "event_id": "order_id", "attributes": []},
            _order(),
            {"name": "purchase"},
            id="no-data-no-attributes-key",
        ),
        pytest.param(
            {
                "event_name": "purchase",
                "event_id": "order_id",
                "event_data_column": "props",
                "attributes": ["total"],
            },
            _order(props={}),
            {"name": "purchase", "attributes": {"total": 19.99}},
            id="empty-data-and-chosen-attributes",
        ),
    ],
)
def test_event_operation(declared, row, expected):
    mapped = mapper("orders", ORDERS, action="event", identifier="user_id", **declared).map_rows(
        [row]
    )
    assert mapped.rejections == []
    assert ops(mapped) == [
        {
            "type": "person",
            "action": "event",
            "identifiers": {"id": "7"},
            "id": ORDER_EVENT_ID,
            **expected,
        }
    ]
    assert mapped.entries[0].row_key == "o-1"


def test_event_id_golden_value():
    mapped = mapper(
        "orders", ORDERS, action="event", identifier="user_id", event_name="x", event_id="order_id"
    ).map_rows([_order()])
    assert orjson.loads(mapped.entries[0].data)["id"] == GOLDEN_ULID


def _event_id(
    table: str, table_columns: dict[str, Any], row: dict[str, Any], **declared: Any
) -> str:
    declared = {"action": "event", "identifier": "user_id", "event_name": "x", **declared}
    mapped = mapper(table, table_columns, **declared).map_rows([row])
    assert mapped.rejections == []
    return orjson.loads(mapped.entries[0].data)["id"]


@pytest.mark.parametrize(
    ("declared", "table_columns"),
    [
        pytest.param({"event_id": "order_id"}, ORDERS, id="explicit-event-id"),
        pytest.param({}, columns(*ORDERS, pk=("order_id",)), id="primary-key"),
        pytest.param({"event_id": ["order_id", "user_id"]}, ORDERS, id="composite"),
        pytest.param({}, ORDERS, id="whole-row"),
    ],
)
def test_event_id_same_row_same_id_across_calls(declared, table_columns):
    first = _event_id("orders", table_columns, _order(), **declared)
    second = _event_id("orders", table_columns, _order(), **declared)
    assert first == second


@pytest.mark.parametrize(
    ("declared", "table_columns", "other", "same"),
    [
        pytest.param(
            {"event_id": "order_id"}, ORDERS, _order(order_id="o-2"), False, id="explicit-other-key"
        ),
        pytest.param(
            {"event_id": "order_id"},
            ORDERS,
            _order(total=Decimal("5")),
            True,
            id="explicit-same-key-other-data",
        ),
        pytest.param(
            {},
            columns(*ORDERS, pk=("order_id",)),
            _order(order_id="o-2"),
            False,
            id="pk-other-key",
        ),
        pytest.param(
            {},
            columns(*ORDERS, pk=("order_id",)),
            _order(kind="refund"),
            True,
            id="pk-same-key-other-data",
        ),
        pytest.param(
            {"event_id": ["order_id", "user_id"]},
            ORDERS,
            _order(user_id=8),
            False,
            id="composite-other-part",
        ),
        pytest.param({}, ORDERS, _order(total=Decimal("20")), False, id="whole-row-other-value"),
        pytest.param(
            {},
            ORDERS,
            _order(created_at=dt.datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
            True,
            id="whole-row-same-instant-other-tz",
        ),
        pytest.param(
            {},
            ORDERS,
            _order(total=Decimal("19.990")),
            True,
            id="whole-row-same-decimal",
        ),
        pytest.param(
            {},
            ORDERS,
            {k: v for k, v in reversed(_order().items())},
            True,
            id="whole-row-column-order",
        ),
        pytest.param(
            {},
            ORDERS,
            {k: v for k, v in _order().items() if v is not None},
            True,
            id="whole-row-null-vs-absent",
        ),
    ],
)
def test_event_id_depends_only_on_the_key(declared, table_columns, other, same):
    base = _event_id("orders", table_columns, _order(), **declared)
    assert (_event_id("orders", table_columns, other, **declared) == base) is same


@pytest.mark.parametrize(
    "declared",
    [pytest.param({"event_id": "order_id"}, id="explicit"), pytest.param({}, id="whole-row")],
)
def test_event_id_differs_between_tables(declared):
    assert _event_id("orders", ORDERS, _order(), **declared) != _event_id(
        "refunds", ORDERS, _order(), **declared
    )


def test_event_id_pinned_derivations():
    row = _order()
    explicit = _event_id("orders", ORDERS, row, event_id=["order_id", "user_id"])
    assert explicit == deterministic_ulid("orders", canonical_key(["o-1", 7]))
    whole = _event_id("orders", ORDERS, row)
    assert whole == deterministic_ulid(
        "orders", canonical_key([[k, row[k]] for k in sorted(row) if row[k] is not None])
    )


def test_event_rows_each_become_one_entry_in_order():
    rows = [_order(order_id=f"o-{i}") for i in range(5)]
    mapped = mapper(
        "orders", ORDERS, action="event", identifier="user_id", event_name="x", event_id="order_id"
    ).map_rows(rows)
    assert [entry.row_key for entry in mapped.entries] == [f"o-{i}" for i in range(5)]
    assert [entry.rows for entry in mapped.entries] == [[row] for row in rows]
    assert len({orjson.loads(entry.data)["id"] for entry in mapped.entries}) == 5


# --- Arrow rows --------------------------------------------------------------------------------

ARROW_SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("user_id", pa.int64()),
        ("kind", pa.string()),
        ("total", pa.decimal128(10, 2)),
        ("props", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

DICT_ROWS = [
    _order(props={"sku": "A1", "qty": 2}),
    _order(
        order_id="o-2",
        user_id=8,
        kind="refund",
        total=Decimal("5.5"),
        props={"sku": "B2", "tags": ["x", "y"], "gift": None},
        created_at=dt.datetime(2024, 1, 16, 2, 30, tzinfo=PST),
    ),
    _order(order_id="o-3", user_id=9, total=None, props=None, created_at=None),
    _order(order_id="o-4", user_id=7, props={"sku": "A1"}),
]


def _arrow_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    data: dict[str, list[Any]] = {name: [] for name in ARROW_SCHEMA.names}
    for row in rows:
        for name in ARROW_SCHEMA.names:
            value = row.get(name)
            if name == "props" and value is not None:
                value = orjson.dumps(value).decode()  # JSON columns arrive as strings in parquet
            data[name].append(value)
    return pa.RecordBatch.from_pydict(data, schema=ARROW_SCHEMA)


@pytest.mark.parametrize(
    "declared",
    [
        pytest.param(
            {
                "action": "event",
                "identifier": "user_id",
                "event_name_column": "kind",
                "event_data_column": "props",
                "event_id": "order_id",
                "timestamp": "created_at",
            },
            id="event-with-data-column",
        ),
        pytest.param(
            {"action": "event", "identifier": "user_id", "event_name": "order"},
            id="event-whole-row-key",
        ),
        pytest.param({"action": "identify", "identifier": "user_id"}, id="identify-json-attribute"),
        pytest.param(
            {"action": "identify", "identifier": "order_id", "timestamp": "created_at"},
            id="identify-timestamp",
        ),
    ],
)
def test_rows_from_arrow_give_the_same_entries(declared):
    row_mapper = mapper("orders", ORDERS, **declared)
    from_dicts = row_mapper.map_rows(DICT_ROWS)
    batch = _arrow_batch(DICT_ROWS)
    assert isinstance(batch.column(batch.schema.get_field_index("props"))[0].as_py(), str)
    from_arrow = row_mapper.map_rows(rows_from_arrow(batch))
    assert from_dicts.rejections == from_arrow.rejections == []
    assert from_dicts.rows_in == from_arrow.rows_in == len(DICT_ROWS)
    assert [(e.data, e.row_key) for e in from_arrow.entries] == [
        (e.data, e.row_key) for e in from_dicts.entries
    ]


def test_rows_from_arrow_shape():
    rows = list(rows_from_arrow(_arrow_batch(DICT_ROWS[1:3])))
    assert rows[0]["props"] == '{"sku":"B2","tags":["x","y"],"gift":null}'  # the mapper reads it
    assert rows[0]["total"] == Decimal("5.50")
    assert rows[0]["created_at"] == dt.datetime(2024, 1, 16, 10, 30, tzinfo=UTC)
    # nulls are left out, as typed-jsonl leaves them
    assert rows[1] == {"order_id": "o-3", "user_id": 9, "kind": "purchase_completed"}


# --- rejections --------------------------------------------------------------------------------

IDENTIFY = {"action": "identify", "identifier": "id"}
EVENT = {
    "action": "event",
    "identifier": "user_id",
    "event_name_column": "kind",
    "event_data_column": "props",
    "event_id": "order_id",
    "timestamp": "created_at",
}
WIDE = columns("id", *(f"a{i}" for i in range(301)))
BIG_ATTRS = columns("id", *(f"b{i}" for i in range(40)))


def _identify_ok(i: int) -> dict[str, Any]:
    return {
        "id": f"ok-{i}",
        "email": f"ok{i}@example.com",
        "phone": f"+1415555010{i}",
        "name": "Ok",
    }


def _event_ok(i: int) -> dict[str, Any]:
    return _order(order_id=f"ok-{i}", props={"sku": "A1"})


# (declared mapping, table columns, good-row factory, bad row, reason, field, offending value)
REJECTIONS = [
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"id": "x" * 151, "name": "Ann"},
        "identifier_too_long",
        "id",
        "x" * 151,
        id="identifier-over-150-bytes",
    ),
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"id": "é" * 76, "name": "Ann"},
        "identifier_too_long",
        "id",
        "é" * 76,
        id="identifier-over-150-bytes-multibyte",
    ),
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"id": "😀" * 38, "name": "Ann"},
        "identifier_too_long",
        "id",
        "😀" * 38,
        id="identifier-over-150-bytes-emoji",
    ),
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"id": None, "name": "Ann"},
        "missing_identifier",
        "id",
        None,
        id="identifier-none",
    ),
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"name": "Ann"},
        "missing_identifier",
        "id",
        None,
        id="identifier-absent",
    ),
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"id": "   ", "name": "Ann"},
        "missing_identifier",
        "id",
        None,
        id="identifier-blank",
    ),
    pytest.param(
        {**IDENTIFY, "identifier": "email", "identifier_type": "email"},
        USERS,
        _identify_ok,
        {"email": "ann.example.com", "name": "Ann"},
        "invalid_identifier",
        "email",
        "ann.example.com",
        id="bad-email",
    ),
    pytest.param(
        {**IDENTIFY, "identifier": "phone", "identifier_type": "phone"},
        columns("phone", "name"),
        _identify_ok,
        {"phone": "4155550100", "name": "Ann"},
        "invalid_identifier",
        "phone",
        "4155550100",
        id="phone-without-plus",
    ),
    pytest.param(
        {**IDENTIFY, "identifier": "phone", "identifier_type": "phone"},
        columns("phone", "name"),
        _identify_ok,
        {"phone": "+1 415 555 0100", "name": "Ann"},
        "invalid_identifier",
        "phone",
        "+1 415 555 0100",
        id="phone-with-spaces",
    ),
    pytest.param(
        {**IDENTIFY, "identifier": "phone", "identifier_type": "phone"},
        columns("phone", "name"),
        _identify_ok,
        {"phone": "+14155550100\n", "name": "Ann"},
        "invalid_identifier",
        "phone",
        "+14155550100",
        id="phone-with-trailing-newline",
    ),
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"id": "u-9", "name": "n" * 1001},
        "attribute_value_too_long",
        "name",
        "n" * 1001,
        id="attribute-value-over-1000-bytes",
    ),
    pytest.param(
        IDENTIFY,
        USERS,
        _identify_ok,
        {"id": "u-9", "name": "é" * 501},
        "attribute_value_too_long",
        "name",
        "é" * 501,
        id="attribute-value-over-1000-bytes-multibyte",
    ),
    pytest.param(
        IDENTIFY,
        WIDE,
        lambda i: {"id": f"ok-{i}", "a0": "v"},
        {"id": "u-9", **{f"a{i}": f"val-{i:03d}" for i in range(301)}},
        "too_many_attributes",
        "attributes",
        "val-300",
        id="301-attributes",
    ),
    pytest.param(
        {**IDENTIFY, "timestamp": "updated_at"},
        USERS,
        _identify_ok,
        {"id": "u-9", "updated_at": "not-a-time"},
        "invalid_timestamp",
        "updated_at",
        "not-a-time",
        id="identify-invalid-timestamp",
    ),
    pytest.param(
        {**IDENTIFY, "timestamp": "updated_at"},
        USERS,
        _identify_ok,
        {"id": "u-9", "updated_at": "--1705314600"},
        "invalid_timestamp",
        "updated_at",
        "--1705314600",
        id="identify-invalid-timestamp-minus",
    ),
    pytest.param(
        IDENTIFY,
        BIG_ATTRS,
        lambda i: {"id": f"ok-{i}", "b0": "v"},
        {"id": "u-9", **{f"b{i}": f"{i:03d}" + "z" * 897 for i in range(40)}},
        "entry_too_large",
        None,
        "z" * 897,
        id="identify-entry-over-32000-bytes",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(kind="k" * 101),
        "event_name_too_long",
        "kind",
        "k" * 101,
        id="event-name-over-100-bytes",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(kind="€" * 34),
        "event_name_too_long",
        "kind",
        "€" * 34,
        id="event-name-over-100-bytes-multibyte",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(kind=""),
        "missing_event_name",
        "kind",
        None,
        id="event-name-empty",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(kind=None),
        "missing_event_name",
        "kind",
        None,
        id="event-name-none",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(props={"blob": "z" * 100_001}),
        "event_data_too_large",
        "props",
        "z" * 100_001,
        id="event-data-over-100000-bytes",
    ),
    pytest.param(
        {"action": "event", "identifier": "user_id", "event_name": "x", "event_id": "order_id"},
        columns("order_id", "user_id", "blob"),
        lambda i: {"order_id": f"ok-{i}", "user_id": 7, "blob": "small"},
        {"order_id": "o-9", "user_id": 7, "blob": "z" * 100_001},
        "event_data_too_large",
        "attributes",
        "z" * 100_001,
        id="event-attributes-over-100000-bytes",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(props='{"coupon": "SECRET10", '),
        "invalid_event_data",
        "props",
        "SECRET10",
        id="event-data-invalid-json",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(props='["SECRET10", 2]'),
        "invalid_event_data",
        "props",
        "SECRET10",
        id="event-data-json-array",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(props=["SECRET10", 2]),
        "invalid_event_data",
        "props",
        "SECRET10",
        id="event-data-list",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(created_at="yesterday-ish"),
        "invalid_timestamp",
        "created_at",
        "yesterday-ish",
        id="event-invalid-timestamp",
    ),
    pytest.param(
        EVENT,
        ORDERS,
        _event_ok,
        _order(props={"blob": "z" * 40_000}),
        "entry_too_large",
        None,
        "z" * 40_000,
        id="event-entry-over-32000-bytes",
    ),
]


@pytest.mark.parametrize(
    ("declared", "table_columns", "good", "bad", "reason", "field", "value"), REJECTIONS
)
def test_rejection(declared, table_columns, good, bad, reason, field, value):
    row_mapper = mapper("t", table_columns, **declared)
    good_rows = [good(1), good(2)]
    rows = [good_rows[0], bad, good_rows[1]]
    mapped = row_mapper.map_rows(rows)
    assert mapped.rows_in == 3
    assert len(mapped.rejections) == 1, [r.reason for r in mapped.rejections]
    rejection = mapped.rejections[0]
    assert isinstance(rejection, Rejection)
    assert rejection.row is bad
    assert (rejection.reason, rejection.field) == (reason, field)
    assert rejection.message
    if value is not None:
        assert value not in rejection.message
    # the valid rows of the same call still go out, in order
    assert len(mapped.entries) == 2
    assert [entry.rows for entry in mapped.entries] == [[good_rows[0]], [good_rows[1]]]
    for entry in mapped.entries:
        assert len(entry.data) <= limits.MAX_ENTRY_BYTES


@pytest.mark.parametrize(
    ("declared", "table_columns", "bad", "field"),
    [
        pytest.param(IDENTIFY, USERS, {"id": "u-9", "name": 2**70}, "name", id="identify-huge-int"),
        pytest.param(
            IDENTIFY,
            USERS,
            {"id": "u-9", "name": -(2**64)},
            "name",
            id="identify-huge-negative-int",
        ),
        pytest.param(EVENT, ORDERS, _order(total=2**70), "total", id="event-huge-int-attribute"),
    ],
)
def test_unserializable_value_is_a_rejection_not_an_exception(declared, table_columns, bad, field):
    """A row-level problem never fails the load: a value JSON cannot carry is rejected."""
    row_mapper = mapper("t", table_columns, **declared)
    ok = [{"id": "ok-1"}, {"id": "ok-2"}] if declared is IDENTIFY else [_event_ok(1), _event_ok(2)]
    mapped = row_mapper.map_rows([ok[0], bad, ok[1]])
    assert [(r.reason, r.field) for r in mapped.rejections] == [("invalid_value", field)]
    assert len(mapped.entries) == 2


def test_entry_too_large_rejects_every_row_of_a_collapsed_identify():
    rows = [
        {"id": "u-1", **{f"b{i}": "z" * 900 for i in range(20)}},
        {"id": "u-1", **{f"b{i}": "z" * 900 for i in range(20, 40)}},
        {"id": "u-2", "b0": "ok"},
    ]
    mapped = mapper("t", BIG_ATTRS, **IDENTIFY).map_rows(rows)
    assert [(r.row, r.reason, r.field) for r in mapped.rejections] == [
        (rows[0], "entry_too_large", None),
        (rows[1], "entry_too_large", None),
    ]
    assert ops(mapped) == [
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": "u-2"},
            "attributes": {"b0": "ok"},
        }
    ]


def test_entries_are_entry_objects():
    mapped = mapper("users", USERS, **IDENTIFY).map_rows([{"id": 1}])
    assert all(
        isinstance(entry, Entry) and isinstance(entry.data, bytes) for entry in mapped.entries
    )


# --- values JSON cannot carry never fail a load ---------------------------------------------------


def _nested(levels: int) -> Any:
    """An object holding lists: `levels` containers in all, two bytes of JSON each."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"k": value}


def _nested_text(levels: int) -> str:
    return '{"k":' + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}"


WHOLE_ROW_EVENT = {"action": "event", "identifier": "user_id", "event_name": "x"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 2.0**64, 1e300])
@pytest.mark.parametrize("attributes", [None, ["user_id"]], ids=["sent", "not-sent"])
def test_whole_row_keyed_event_with_a_value_without_a_key_is_rejected(value, attributes):
    """No event_id, no primary key: the row is the key, and NaN has no stable key, nor has a
    whole float beyond 64 bits (whole floats key as integers), as with an explicit event_id."""
    declared = dict(WHOLE_ROW_EVENT, **({"attributes": attributes} if attributes else {}))
    row_mapper = mapper("orders", columns("user_id", "score"), **declared)
    bad = {"user_id": 8, "score": value}

    mapped = row_mapper.map_rows([{"user_id": 7, "score": 1.5}, bad, {"user_id": 9}])

    assert [(r.row, r.reason, r.field) for r in mapped.rejections] == [
        (bad, "invalid_event_id", "score")
    ]
    assert mapped.rejections[0].row_key.startswith("row:")
    assert [orjson.loads(e.data)["identifiers"] for e in mapped.entries] == [
        {"id": "7"},
        {"id": "9"},
    ]


DEEP = 300  # past orjson's 254 levels
DEEPER = 1_100  # past Python's recursion limit
DEEPEST = 2_000  # past what orjson reads


@pytest.mark.parametrize("levels", [DEEP, DEEPER, DEEPEST])
@pytest.mark.parametrize(
    ("declared", "table_columns", "bad_row", "reason", "field"),
    [
        pytest.param(
            {"action": "event", "event_name": "x", "event_data_column": "data", "event_id": "k"},
            columns("k", "user_id", "data"),
            lambda n: {"k": 2, "user_id": 8, "data": _nested_text(n)},
            "invalid_event_data",
            "data",
            id="event-data-text",
        ),
        pytest.param(
            {"action": "event", "event_name": "x", "event_data_column": "data"},
            columns("user_id", "data"),
            lambda n: {"user_id": 8, "data": _nested_text(n)},
            "invalid_event_data",
            "data",
            id="event-data-text-whole-row-key",
        ),
        pytest.param(
            {"action": "event", "event_name": "x", "attributes": ["user_id"]},
            columns("user_id", "data", json=("data",)),
            lambda n: {"user_id": 8, "data": _nested(n)},
            "invalid_event_id",
            "data",
            id="whole-row-key-json-column",
        ),
        pytest.param(
            {"action": "event", "event_name": "x", "event_id": ["k", "data"]},
            columns("k", "user_id", "data", json=("data",)),
            lambda n: {"k": 2, "user_id": 8, "data": _nested(n)},
            "invalid_event_id",
            "k,data",
            id="composite-event-id",
        ),
        pytest.param(
            {"action": "identify"},
            columns("user_id", "data", json=("data",)),
            lambda n: {"user_id": 8, "data": _nested(n)},
            "invalid_value",
            "data",
            id="identify-json-attribute",
        ),
        pytest.param(
            {
                "action": "send_email",
                "transactional_message_id": 3,
                "message_data_column": "data",
                "event_id": "k",
            },
            columns("k", "user_id", "data"),
            lambda n: {"k": 2, "user_id": 8, "data": _nested_text(n)},
            "invalid_event_data",
            "data",
            id="send-email-message-data",
        ),
        pytest.param(
            {"action": "object_identify", "object_type_id": "1", "object_id": "user_id"},
            columns("user_id", "data", json=("data",)),
            lambda n: {"user_id": 8, "data": _nested(n)},
            "invalid_value",
            "data",
            id="object-attribute",
        ),
        pytest.param(
            {"action": "add_relationships", "object_type_id": "1", "object_id": "k"},
            columns("k", "user_id", "data", json=("data",)),
            lambda n: {"k": 2, "user_id": 8, "data": _nested(n)},
            "invalid_value",
            "data",
            id="relationship-attribute",
        ),
    ],
)
def test_deeply_nested_value_rejects_its_row_and_the_rest_go_out(
    declared, table_columns, bad_row, reason, field, levels
):
    from cio_destination.state.rejects import row_to_json

    if not declared["action"].startswith("object_"):
        declared = {"identifier": "user_id", **declared}
    row_mapper = mapper("t", table_columns, **declared)
    good = [
        {"k": 1, "user_id": 7, "data": '{"a": 1}'},
        {"k": 3, "user_id": 9, "data": '{"b": 2}'},
    ]
    bad = bad_row(levels)

    mapped = row_mapper.map_rows([good[0], bad, good[1]])

    assert [(r.row, r.reason, r.field) for r in mapped.rejections] == [(bad, reason, field)]
    assert "nested deeper than 250 levels" in mapped.rejections[0].message
    assert len(mapped.entries) == 2
    assert orjson.loads(row_to_json(mapped.rejections[0].row))["user_id"] == 8  # recordable


@pytest.mark.parametrize(("levels", "sent"), [(250, True), (251, False)])
def test_nesting_limit_is_the_same_for_event_data_and_attributes(levels, sent):
    event = mapper(
        "t",
        columns("k", "user_id", "data", "extra"),
        action="event",
        identifier="user_id",
        event_name="x",
        event_id="k",
        event_data_column="data",
        attributes=["extra"],
    )
    from_text = event.map_rows([{"k": 1, "user_id": 7, "data": _nested_text(levels)}])
    from_attribute = event.map_rows([{"k": 1, "user_id": 7, "extra": _nested(levels)}])
    person = mapper("t", columns("user_id", "extra"), action="identify", identifier="user_id")
    identify = person.map_rows([{"user_id": 7, "extra": _nested(levels)}])

    assert [len(m.entries) for m in (from_text, from_attribute, identify)] == [int(sent)] * 3


@pytest.mark.parametrize(
    "value",
    [2**70, float("nan"), {1: "int key"}, b"\x00", _nested(DEEP), 10**5_000],
    ids=["huge-int", "nan", "int-key", "bytes", "deep", "5001-digits"],
)
def test_row_keys_are_made_of_any_value(value):
    """The row key of a rejection is made for every row, whatever its values hold."""
    row_mapper = mapper(
        "t",
        columns("k", "j", "user_id"),
        action="event",
        identifier="user_id",
        event_name="x",
        event_id=["k", "j"],
    )
    mapped = row_mapper.map_rows([{"k": value, "j": "j-1"}])  # no identifier: rejected

    assert len(mapped.rejections) == 1
    assert orjson.loads(mapped.rejections[0].row_key)[1] == "j-1"  # the values, as JSON


@pytest.mark.parametrize("key_columns", [("k",), ("k", "j")], ids=["one", "two"])
def test_a_row_key_of_an_integer_str_refuses_is_its_digits(key_columns):
    table = columns("k", "j", "user_id", pk=key_columns)  # names a row without its identifier
    row_mapper = mapper("t", table, action="delete", identifier="user_id")

    mapped = row_mapper.map_rows([{"k": 10**5_000, "j": 1}])  # no identifier: rejected

    assert "1" + "0" * 5_000 in mapped.rejections[0].row_key


ODD_TEXTS = [{"a": 1}, [1], b"\xff", float("nan"), Decimal("Infinity"), False]


@pytest.mark.parametrize("value", ODD_TEXTS, ids=["dict", "list", "bytes", "nan", "inf", "bool"])
@pytest.mark.parametrize(
    ("declared", "column", "reason"),
    [
        (
            {"action": "event", "event_name_column": "v", "event_id": "k"},
            "v",
            "invalid_event_name",
        ),
        (
            {"action": "add_device", "device_token": "v", "device_platform": "ios"},
            "v",
            "invalid_device_token",
        ),
        ({"action": "delete_device", "device_token": "v"}, "v", "invalid_device_token"),
    ],
    ids=["event-name", "add-device-token", "delete-device-token"],
)
def test_a_value_without_a_text_rejects_its_row_instead_of_sending_its_repr(
    value, declared, column, reason
):
    """An event name, a device token from a dict, bytes or NaN went out as Python's repr
    ("{'a': 1}", "b'\\xff'", "nan"); a JSON column's object as an event name too."""
    row_mapper = mapper("t", columns("user_id", "k", "v"), identifier="user_id", **declared)

    mapped = row_mapper.map_rows([{"user_id": "u", "k": 1, "v": value}])

    assert [(r.reason, r.field) for r in mapped.rejections] == [(reason, column)]
    assert not mapped.entries


@pytest.mark.parametrize("value", ["\ud800", 2**70], ids=["lone-surrogate", "huge-int"])
def test_an_operation_json_cannot_carry_rejects_its_row(value):
    """Whatever a rule lets through, orjson refusing an operation rejects its row: a person
    seen twice merged the second row's attributes unchecked, and writing the merged operation
    failed the whole load."""
    row_mapper = mapper("t", columns("user_id", "a", "b"), action="identify", identifier="user_id")
    rows = [{"user_id": "u", "a": "x"}, {"user_id": "u", "b": value}, {"user_id": "v", "a": "y"}]
    with pytest.MonkeyPatch.context() as patch:  # as if the attribute rule let it through
        patch.setattr(limits, "to_json_value", lambda v: v)
        mapped = row_mapper.map_rows(rows)

    assert [(r.row, r.reason, r.field) for r in mapped.rejections] == [
        (rows[1], "invalid_value", "b")
    ]
    assert [orjson.loads(e.data)["identifiers"]["id"] for e in mapped.entries] == ["u", "v"]


# --- row keys of rows without their key -------------------------------------------------------

KEYED_USERS = columns("id", "email", "plan", "order_id", "token", pk=("id",))


@pytest.mark.parametrize(
    ("declared", "row", "reason"),
    [
        pytest.param(
            {"action": "identify", "identifier": "email", "identifier_type": "email"},
            {"id": 42, "plan": "pro"},
            "missing_identifier",
            id="identify",
        ),
        pytest.param(
            {"action": "event", "identifier": "email", "event_name": "x", "event_id": "order_id"},
            {"id": 42, "email": "a@example.com"},
            "missing_event_id",
            id="event-without-its-event-id",
        ),
        pytest.param(
            {"action": "delete", "identifier": "email"},
            {"id": 42},
            "missing_identifier",
            id="delete",
        ),
        pytest.param(
            {"action": "delete_device", "identifier": "email", "device_token": "token"},
            {"id": 42},
            "missing_identifier",
            id="device",
        ),
    ],
)
def test_row_without_its_key_is_named_by_the_primary_key(declared, row, reason):
    mapped = mapper("users", KEYED_USERS, **declared).map_rows([row])

    assert [(r.reason, r.row_key) for r in mapped.rejections] == [(reason, "42")]


def test_row_without_its_key_and_without_a_primary_key_has_an_empty_row_key():
    mapped = mapper("users", USERS, **IDENTIFY).map_rows([{"name": "Ann"}])

    assert [(r.reason, r.row_key) for r in mapped.rejections] == [("missing_identifier", "")]


def test_composite_primary_key_names_the_row_as_json():
    table = columns("tenant", "n", "email", pk=("tenant", "n"))
    row_mapper = mapper("users", table, action="identify", identifier="email")

    mapped = row_mapper.map_rows([{"tenant": "acme", "n": 7}])

    assert [r.row_key for r in mapped.rejections] == ['["acme",7]']


# --- a mapped column dlt left out of the schema (NULL in every row so far) ------------------------


@pytest.mark.parametrize(
    ("declared", "rows", "expected_ops", "reasons"),
    [
        pytest.param(
            {"action": "identify", "identifier": "id", "attributes": ["name", "plan"]},
            [{"id": 1, "name": "Ann"}],
            [{"identifiers": {"id": "1"}, "attributes": {"name": "Ann"}}],
            [],
            id="attribute-is-simply-absent",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "timestamp": "seen_at"},
            [{"id": 1, "name": "Ann"}],
            [{"identifiers": {"id": "1"}, "attributes": {"name": "Ann"}}],
            [],
            id="timestamp-absent",
        ),
        pytest.param(
            {"action": "identify", "identifier": "email", "identifier_type": "email"},
            [{"id": 1, "name": "Ann"}, {"id": 2}],
            [],
            [("1", "missing_identifier", "email"), ("2", "missing_identifier", "email")],
            id="identifier-absent-rejects-every-row",
        ),
        pytest.param(
            {"action": "event", "identifier": "id", "event_name": "x", "event_id": "order_id"},
            [{"id": 1}],
            [],
            [("1", "missing_event_id", "order_id")],
            id="event-id-absent",
        ),
        pytest.param(
            {"action": "event", "identifier": "id", "event_name_column": "kind", "event_id": "id"},
            [{"id": 1}],
            [],
            [("1", "missing_event_name", "kind")],
            id="event-name-column-absent",
        ),
        pytest.param(
            {"action": "event", "identifier": "id", "event_name": "x", "event_data_column": "p"},
            [{"id": 1, "name": "Ann"}],
            [{"identifiers": {"id": "1"}, "name": "x", "attributes": {"name": "Ann"}}],
            [],
            id="event-data-column-absent",
        ),
        pytest.param(
            {
                "action": "add_device",
                "identifier": "id",
                "device_token": "tok",
                "device_platform": "ios",
            },
            [{"id": 1}],
            [],
            [("[1,null]", "missing_device_token", "tok")],
            id="device-token-absent",
        ),
    ],
)
def test_absent_column_maps_as_null(declared, rows, expected_ops, reasons):
    row_mapper = mapper("t", columns("id", "name", pk=("id",)), **declared)

    mapped = row_mapper.map_rows(rows)

    sent = [
        {k: v for k, v in op.items() if k in ("identifiers", "name", "attributes")}
        for op in ops(mapped)
    ]
    assert sent == expected_ops
    assert [(r.row_key, r.reason, r.field) for r in mapped.rejections] == reasons


# --- JSON text columns (json_columns, and columns dlt types as json) ------------------------------

PEOPLE = columns("id", "prefs", "plan")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"theme": "dark", "n": [1, 2]}', {"theme": "dark", "n": [1, 2]}),
        ("[1, 2]", [1, 2]),
        ("42", 42),
        ('"{\\"a\\": 1}"', '{"a": 1}'),  # a JSON string holding JSON: parsed once, not twice
        ("null", None),
    ],
)
def test_json_column_text_is_sent_as_the_value_it_holds(text: str, expected: Any):
    row_mapper = mapper("people", PEOPLE, **IDENTIFY, json_columns=["prefs"])

    mapped = row_mapper.map_rows([{"id": 1, "prefs": text, "plan": '{"not": "json_columns"}'}])

    attributes = ops(mapped)[0]["attributes"]
    assert attributes["plan"] == '{"not": "json_columns"}'  # other text columns stay text
    assert attributes.get("prefs") == expected


@pytest.mark.parametrize("table_columns", [PEOPLE, columns("id", "prefs", "plan", json=("prefs",))])
def test_json_column_text_that_is_not_json_rejects_the_row(table_columns):
    declared = {**IDENTIFY, "json_columns": ["prefs"]} if table_columns is PEOPLE else IDENTIFY
    row_mapper = mapper("people", table_columns, **declared)
    bad = {"id": 2, "prefs": '{"theme": "SECRET'}

    mapped = row_mapper.map_rows([{"id": 1, "prefs": "{}"}, bad])

    assert [(r.row, r.row_key, r.reason, r.field) for r in mapped.rejections] == [
        (bad, "2", "invalid_json", "prefs")
    ]
    assert "SECRET" not in mapped.rejections[0].message
    assert len(mapped.entries) == 1


def test_json_column_already_decoded_passes_as_it_is():
    row_mapper = mapper("people", PEOPLE, **IDENTIFY, json_columns=["prefs"])

    mapped = row_mapper.map_rows([{"id": 1, "prefs": {"theme": "dark"}}])

    assert ops(mapped)[0]["attributes"] == {"prefs": {"theme": "dark"}}


@pytest.mark.parametrize("shape", ["dict", "arrow"])
def test_json_columns_in_event_data_and_in_message_data(shape: str):
    table = columns("k", "user_id", "meta", "data")
    event = mapper(
        "t",
        table,
        action="event",
        identifier="user_id",
        event_name="x",
        event_id="k",
        event_data_column="data",
        json_columns=["meta"],
    )
    send = mapper(
        "t",
        table,
        action="send_email",
        identifier="user_id",
        transactional_message_id=3,
        event_id="k",
        message_data_column="data",
        json_columns=["meta"],
    )
    row = {"k": 1, "user_id": 7, "meta": '{"tier": 2}', "data": '{"sku": "A"}'}

    def rows() -> Any:
        return [row] if shape == "dict" else rows_from_arrow(pa.RecordBatch.from_pylist([row]))

    event_op = ops(event.map_rows(rows()))[0]
    send_body = ops(send.map_rows(rows()))[0]

    assert event_op["attributes"] == {"sku": "A", "k": 1, "meta": {"tier": 2}}
    assert send_body["message_data"] == {"sku": "A", "k": 1, "meta": {"tier": 2}}


def test_bad_json_in_a_json_typed_event_data_column_is_still_invalid_event_data():
    table = columns("k", "user_id", "data", json=("data",))
    event = mapper(
        "t",
        table,
        action="event",
        identifier="user_id",
        event_name="x",
        event_id="k",
        event_data_column="data",
    )

    mapped = event.map_rows([{"k": 1, "user_id": 7, "data": "{oops"}])

    assert [(r.reason, r.field) for r in mapped.rejections] == [("invalid_event_data", "data")]


@pytest.mark.parametrize("declared", [{"event_id": "k"}, {}], ids=["event-id", "whole-row"])
def test_json_column_as_text_or_decoded_gives_one_event_id(declared):
    """Arrow rows carry JSON columns as text, dict rows as objects: one row, one event id."""
    table = columns("k", "user_id", "meta", json=("meta",))
    event = mapper("t", table, action="event", identifier="user_id", event_name="x", **declared)
    as_text = {"k": 1, "user_id": 7, "meta": '{"b": 1, "a": [1, 2]}'}
    decoded = {"k": 1, "user_id": 7, "meta": {"a": [1, 2], "b": 1}}

    assert ops(event.map_rows([as_text])) == ops(event.map_rows([decoded]))


def test_rows_from_arrow_keep_json_text_for_the_mapper_to_read():
    batch = pa.RecordBatch.from_pylist([{"id": 1, "prefs": '"quoted"'}])

    assert list(rows_from_arrow(batch)) == [{"id": 1, "prefs": '"quoted"'}]
    mapped = mapper("people", PEOPLE, **IDENTIFY, json_columns=["prefs"]).map_rows(
        rows_from_arrow(batch)
    )
    assert ops(mapped)[0]["attributes"] == {"prefs": "quoted"}


# --- dlt's variant columns: a value that did not fit its column's type ----------------------------


def variant_columns(*names: str, **typed: str) -> dict[str, Any]:
    """Columns as dlt's schema has them once it stored values in variant columns."""
    out = columns(*names)
    for name, data_type in typed.items():
        out[name] = {"name": name, "data_type": data_type}
        for kind in ("text", "bigint"):
            variant = f"{name}\u25b6v_{kind}"
            out[variant] = {"name": variant, "data_type": kind, "variant": True}
    return out


@pytest.mark.parametrize(
    ("declared", "row", "expected"),
    [
        pytest.param(
            {"attributes": ["age"]},
            {"id": 1, "age\u25b6v_text": "unknown"},
            {"age": "unknown"},
            id="chosen-attribute",
        ),
        pytest.param(
            {},
            {"id": 1, "age\u25b6v_text": "unknown", "name": "Ann"},
            {"age": "unknown", "name": "Ann"},
            id="default-attributes-name-the-column-not-its-variant",
        ),
        pytest.param(
            {},
            {"id": 1, "prefs\u25b6v_text": "plain", "age": 3},
            {"prefs": "plain", "age": 3},  # a JSON string scalar, already decoded: not re-read
            id="json-scalar-string",
        ),
        pytest.param(
            {},
            {"id": 1, "prefs\u25b6v_bigint": 42},
            {"prefs": 42},
            id="json-scalar-number",
        ),
    ],
)
def test_a_value_dlt_stored_in_a_variant_column_is_its_column_s_value(declared, row, expected):
    table = variant_columns("id", "name", age="bigint", prefs="json")
    row_mapper = mapper("people", table, **IDENTIFY, **declared)

    mapped = row_mapper.map_rows([row])

    assert ops(mapped)[0]["attributes"] == expected


def test_an_identifier_in_a_variant_column_identifies_the_row():
    table = variant_columns("name", id="bigint")
    mapped = mapper("people", table, **IDENTIFY).map_rows([{"id\u25b6v_text": "u-7", "name": "A"}])

    assert ops(mapped) == [
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": "u-7"},
            "attributes": {"name": "A"},
        }
    ]


def test_declared_json_column_text_in_a_variant_column_is_read_as_json():
    table = variant_columns("id", prefs="json")
    row_mapper = mapper("people", table, **IDENTIFY, json_columns=["prefs"])

    mapped = row_mapper.map_rows([{"id": 1, "prefs\u25b6v_text": '{"theme": "dark"}'}])

    assert ops(mapped)[0]["attributes"] == {"prefs": {"theme": "dark"}}


def test_whole_row_key_of_a_row_with_a_variant_is_the_key_of_the_row_it_stands_for():
    table = variant_columns("user_id", score="bigint")
    event = mapper("t", table, action="event", identifier="user_id", event_name="x")
    plain = mapper(
        "t", columns("user_id", "score"), action="event", identifier="user_id", event_name="x"
    )

    as_variant = ops(event.map_rows([{"user_id": 7, "score\u25b6v_text": "n/a"}]))
    as_column = ops(plain.map_rows([{"user_id": 7, "score": "n/a"}]))

    assert as_variant == as_column


# --- oversized_attribute = "drop_attribute" -----------------------------------------------------

BIOS = columns("id", "bio", "plan", "prefs")
LONG = "x" * (limits.MAX_ATTRIBUTE_VALUE_BYTES + 1)


def test_an_oversized_attribute_rejects_the_person_by_default():
    mapped = mapper("people", BIOS, **IDENTIFY).map_rows([{"id": 1, "bio": LONG, "plan": "pro"}])

    assert [(r.reason, r.field) for r in mapped.rejections] == [("attribute_value_too_long", "bio")]
    assert mapped.entries == [] and mapped.dropped == []


def test_drop_attribute_sends_the_person_without_it_and_records_what_was_dropped():
    row_mapper = mapper("people", BIOS, **IDENTIFY, oversized_attribute="drop_attribute")
    row = {"id": 1, "bio": LONG, "plan": "pro", "prefs": {"long": LONG}}

    mapped = row_mapper.map_rows([row, {"id": 2, "bio": "short"}])

    assert ops(mapped) == [
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": "1"},
            "attributes": {"plan": "pro"},
        },
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"id": "2"},
            "attributes": {"bio": "short"},
        },
    ]
    assert mapped.rejections == []
    assert [(d.row, d.row_key, d.reason, d.field) for d in mapped.dropped] == [
        (row, "1", "attribute_dropped", "bio"),
        (row, "1", "attribute_dropped", "prefs"),
    ]
    assert all(LONG not in d.message and "1000-byte" in d.message for d in mapped.dropped)


def test_drop_attribute_in_a_collapsed_person_keeps_the_other_row_s_value():
    row_mapper = mapper("people", BIOS, **IDENTIFY, oversized_attribute="drop_attribute")
    rows = [
        {"id": 1, "bio": LONG, "plan": "pro"},
        {"id": 1, "bio": "short"},
        {"id": 1, "bio": LONG},
    ]

    mapped = row_mapper.map_rows(rows)

    assert ops(mapped)[0]["attributes"] == {"plan": "pro", "bio": "short"}
    assert [(d.row, d.field) for d in mapped.dropped] == [(rows[0], "bio"), (rows[2], "bio")]


def test_a_person_rejected_anyway_has_its_rejection_and_no_dropped_record():
    wide = columns("id", "bio", *(f"a{i}" for i in range(301)))
    row_mapper = mapper("people", wide, **IDENTIFY, oversized_attribute="drop_attribute")
    row = {"id": 1, "bio": LONG, **{f"a{i}": i for i in range(301)}}

    mapped = row_mapper.map_rows([row])

    assert [r.reason for r in mapped.rejections] == ["too_many_attributes"]
    assert mapped.dropped == []


def test_drop_attribute_for_device_attributes():
    row_mapper = mapper(
        "devices",
        columns("id", "tok", "model", "notes"),
        action="add_device",
        identifier="id",
        device_token="tok",
        device_platform="ios",
        oversized_attribute="drop_attribute",
    )
    row = {"id": 1, "tok": "t-1", "model": "X", "notes": LONG}

    mapped = row_mapper.map_rows([row])

    assert ops(mapped)[0]["device"] == {
        "token": "t-1",
        "platform": "ios",
        "attributes": {"model": "X"},
    }
    assert [(d.row, d.reason, d.field) for d in mapped.dropped] == [
        (row, "attribute_dropped", "notes")
    ]
    assert mapped.rejections == []
