"""Golden files: the exact requests every action sends, from dict rows and from Arrow tables.

Each case runs a real dlt pipeline into pytest-httpx and compares every request (path and body,
byte for byte) and every rejection (row key, reason, field) with `tests/golden/<case>.json`. The
same rows as dicts and as an Arrow table must give the same file.
They pin what Customer.io receives while the inside of the destination changes: a refactor must
leave them untouched. A deliberate change of the wire format rewrites them with
`CIO_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`; review that diff like code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import dlt
import httpx
import pyarrow as pa
import pytest
from pytest_httpx import HTTPXMock

from cio_destination import customerio, customerio_adapter, rejected_rows

from .conftest import with_region

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden"
UTC = dt.timezone.utc

# One wide table whose columns every case draws on: text with quotes, control characters and
# non-ASCII, whole and fractional floats, decimals, dates, timestamps, booleans and nulls, plus
# rows each action rejects locally.
ROWS: list[dict[str, Any]] = [
    {
        "uid": 1,
        "email": "ada@example.com",
        "name": 'Ada "Countess" Lovelace\n',
        "score": 12.5,
        "visits": 3,
        "vip": True,
        "balance": Decimal("10.25"),
        "born": dt.date(1990, 5, 1),
        "seen": dt.datetime(2024, 5, 1, 12, 30, 15, 250_000, tzinfo=UTC),
        "plan": "pro",
        "note": "ünïcode ✓ \\ tab\t",
        "token": "tok-1",
        "platform": "ios",
        "account": "acme",
        "other_uid": 101,
        "page_url": "https://example.com/a?b=c",
        "order_id": 5001,
    },
    {
        "uid": 2,
        "email": "bob@example.com",
        "name": "Bob",
        "score": 0.0001,
        "visits": 0,
        "vip": False,
        "balance": Decimal("-3.00"),
        "born": None,
        "seen": dt.datetime(2024, 5, 2, 0, 0, tzinfo=UTC),
        "plan": None,
        "note": "",
        "token": "tok-2",
        "platform": "android",
        "account": "globex",
        "other_uid": 102,
        "page_url": "/pricing",
        "order_id": 5002,
    },
    {
        "uid": 3,
        "email": "carol-at-example.com",
        "name": "Carol",
        "score": 1e16,
        "visits": 9_007_199_254_740_993,
        "vip": True,
        "balance": Decimal("123456789.50"),
        "born": dt.date(2000, 1, 1),
        "seen": dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        "plan": "free",
        "note": "x" * 1_200,
        "token": "tok-3",
        "platform": "windows",
        "account": "initech",
        "other_uid": 103,
        "page_url": "/",
        "order_id": 5003,
    },
    {
        "uid": None,
        "email": None,
        "name": "Nobody",
        "score": -2.0,
        "visits": -7,
        "vip": None,
        "balance": None,
        "born": None,
        "seen": None,
        "plan": "pro",
        "note": "no identifier",
        "token": None,
        "platform": None,
        "account": None,
        "other_uid": None,
        "page_url": None,
        "order_id": 5004,
    },
]

ARROW_SCHEMA = pa.schema(
    [
        ("uid", pa.int64()),
        ("email", pa.string()),
        ("name", pa.string()),
        ("score", pa.float64()),
        ("visits", pa.int64()),
        ("vip", pa.bool_()),
        ("balance", pa.decimal128(12, 2)),
        ("born", pa.date32()),
        ("seen", pa.timestamp("us", "UTC")),
        ("plan", pa.string()),
        ("note", pa.string()),
        ("token", pa.string()),
        ("platform", pa.string()),
        ("account", pa.string()),
        ("other_uid", pa.int64()),
        ("page_url", pa.string()),
        ("order_id", pa.int64()),
    ]
)

PERSON_ATTRIBUTES = ["email", "name", "score", "visits", "vip", "balance", "born", "plan", "note"]

CASES: dict[str, dict[str, Any]] = {
    "identify": {
        "action": "identify",
        "identifier": "uid",
        "attributes": PERSON_ATTRIBUTES,
        "timestamp": "seen",
    },
    "identify_by_email": {
        "action": "identify",
        "identifier": "email",
        "identifier_type": "email",
        "attributes": ["name", "plan", "balance"],
    },
    "event": {
        "action": "event",
        "identifier": "uid",
        "event_name": "purchase_completed",
        "event_id": "order_id",
        "timestamp": "seen",
        "attributes": ["name", "score", "balance", "vip", "born"],
    },
    "event_keyed_by_the_whole_row": {
        "action": "event",
        "identifier": "uid",
        "event_name": "signed_up",
        "attributes": ["plan"],
    },
    "page": {
        "action": "page",
        "identifier": "uid",
        "event_name_column": "page_url",
        "event_id": "order_id",
        "attributes": ["note"],
    },
    "screen": {
        "action": "screen",
        "identifier": "uid",
        "event_name": "home",
        "event_id": ["order_id", "uid"],
        "timestamp": "seen",
    },
    "delete": {"action": "delete", "identifier": "uid"},
    "suppress": {"action": "suppress", "identifier": "email", "identifier_type": "email"},
    "unsuppress": {"action": "unsuppress", "identifier": "uid"},
    "merge": {"action": "merge", "identifier": "uid", "secondary_identifier": "other_uid"},
    "add_device": {
        "action": "add_device",
        "identifier": "uid",
        "device_token": "token",
        "device_platform_column": "platform",
        "device_last_used": "seen",
        "attributes": ["plan", "visits"],
    },
    "delete_device": {"action": "delete_device", "identifier": "uid", "device_token": "token"},
    "add_relationships": {
        "action": "add_relationships",
        "identifier": "uid",
        "object_type_id": "1",
        "object_id": "account",
        "attributes": ["plan"],
    },
    "delete_relationships": {
        "action": "delete_relationships",
        "identifier": "uid",
        "object_type_id": "1",
        "object_id": "account",
    },
    "object_identify": {
        "action": "object_identify",
        "object_type_id": "1",
        "object_id": "account",
        "attributes": ["name", "visits", "balance"],
    },
    "object_delete": {"action": "object_delete", "object_type_id": "1", "object_id": "account"},
    "send_email": {
        "action": "send_email",
        "identifier": "email",
        "identifier_type": "email",
        "transactional_message_id": "welcome",
        "to": "email",
        "event_id": "order_id",
        "attributes": ["name", "score"],
    },
}


def _answer(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v1/send/email":
        return httpx.Response(200, json={"delivery_id": "d", "queued_at": 1})
    return httpx.Response(200, json={})


def _data(shape: str) -> Any:
    if shape == "arrow":
        return [pa.Table.from_pylist(ROWS, schema=ARROW_SCHEMA)]
    return [{k: v for k, v in row.items() if v is not None} for row in ROWS]


def _run(case: str, shape: str, httpx_mock: HTTPXMock, tmp_path: Path) -> dict[str, Any]:
    httpx_mock.add_callback(with_region(_answer), is_reusable=True)
    resource = customerio_adapter(dlt.resource(_data(shape), name="golden"), **CASES[case])
    pipeline = dlt.pipeline(
        f"golden_{case}_{shape}",
        destination=customerio(
            site_id="site",
            api_key="key",
            app_api_key="app-key",
            track_url="http://127.0.0.1:9",
            app_url="http://127.0.0.1:9",
        ),
        pipelines_dir=str(tmp_path),
        dev_mode=True,
    )
    pipeline.run(resource)
    requests = sorted(
        [request.url.path, request.content.decode()]
        for request in httpx_mock.get_requests(method="POST")
    )
    rejections = sorted(
        [r["row_key"], r["reason"], r["field"]] for r in rejected_rows(pipeline, table="golden")
    )
    return {"requests": requests, "rejections": rejections}


@pytest.mark.parametrize("shape", ["dicts", "arrow"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_requests_match_the_golden_file(
    case: str, shape: str, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    got = _run(case, shape, httpx_mock, tmp_path)
    path = GOLDEN / f"{case}.json"
    if os.environ.get("CIO_UPDATE_GOLDEN") == "1" and shape == "dicts":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    assert path.exists(), f"no golden file {path.name}: run with CIO_UPDATE_GOLDEN=1 once"
    assert got == json.loads(path.read_text())
