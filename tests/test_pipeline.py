"""Whole dlt pipelines from DuckDB (and plain Python data) into the emulator on loopback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dlt
import duckdb
import httpx
import orjson
import pyarrow as pa
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed
from dlt.sources.sql_database import sql_table
from pytest_httpx import HTTPXMock

from cio_destination import (
    CredentialsError,
    MappingError,
    customerio,
    customerio_adapter,
    rejected_rows,
    sync_report,
)
from cio_destination.emulator import Emulator
from cio_destination.event_ids import canonical_key, deterministic_ulid

from .conftest import API_KEY, SITE_ID, with_region

UTC = dt.timezone.utc


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            """CREATE TABLE users (account_no INTEGER, email VARCHAR, name VARCHAR, plan VARCHAR,
               ltv DECIMAL(10, 2), signed_up TIMESTAMPTZ, updated_at TIMESTAMP, tags JSON)"""
        )
        con.execute(
            """INSERT INTO users VALUES
            (1, 'ada@example.com', 'Ada', 'pro', 1250.50, '2024-01-03 09:00:00+00',
             '2024-06-01 10:00:00', '["a", "b"]'),
            (2, 'grace@example.com', 'Grace', NULL, 0.00, '2024-02-11 12:30:00+01',
             '2024-06-02 11:00:00', NULL),
            (3, 'bad-email', 'Bad', 'free', 1.00, NULL, '2024-06-03 12:00:00', NULL)"""
        )
        con.execute(
            """CREATE TABLE orders (order_id INTEGER, user_id INTEGER, total DECIMAL(10, 2),
               created_at TIMESTAMPTZ, data JSON)"""
        )
        con.execute(
            """INSERT INTO orders VALUES
            (101, 1, 49.00, '2024-06-01 10:05:00+00', '{"sku": "BOOK-1", "qty": 1}'),
            (102, 1, 15.50, '2024-06-02 16:40:00+02', '{"sku": "PEN-9"}'),
            (103, 2, 120.00, '2024-06-03 09:00:00+00', '[1, 2]'),
            (104, NULL, 5.00, '2024-06-04 09:00:00+00', '{}')"""
        )
    return f"duckdb:///{path}"


def warehouse_resources(url: str, backend: str) -> list:
    users = sql_table(credentials=url, table="users", backend=backend)
    customerio_adapter(
        users,
        action="identify",
        identifier="email",
        identifier_type="email",
        timestamp="updated_at",
        json_columns=["tags"],  # DuckDB's JSON reflects as text through duckdb_engine
    )
    orders = sql_table(credentials=url, table="orders", backend=backend)
    customerio_adapter(
        orders,
        action="event",
        identifier="user_id",
        event_name="purchase_completed",
        event_id="order_id",
        event_data_column="data",
        timestamp="created_at",
    )
    return [users, orders]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlalchemy", "pyarrow"])
def test_warehouse_tables_become_people_and_events(
    backend: str, warehouse: str, emulator: Emulator, make_pipeline
):
    pipeline = make_pipeline()

    info = pipeline.run(warehouse_resources(warehouse, backend))

    assert not info.has_failed_jobs
    # the events of user 1 also created a person with id 1, as Customer.io does
    assert [
        (p["identifiers"]["id"], p["attributes"])
        for p in emulator.people
        if "email" not in p["identifiers"]
    ] == [("1", {})]
    people = sorted(
        (p for p in emulator.people if "email" in p["identifiers"]),
        key=lambda p: p["identifiers"]["email"],
    )
    assert [p["identifiers"]["email"] for p in people] == ["ada@example.com", "grace@example.com"]
    assert all("id" not in p["identifiers"] for p in people)
    assert people[0]["attributes"] == {
        "account_no": 1,
        "name": "Ada",
        "plan": "pro",
        "ltv": 1250.5,
        "signed_up": 1704272400,
        "tags": ["a", "b"],
    }
    assert people[1]["attributes"] == {
        "account_no": 2,
        "name": "Grace",
        "ltv": 0,
        "signed_up": 1707651000,
    }

    events = sorted(emulator.events, key=lambda e: e["attributes"]["total"])
    assert [(e["name"], e["identifiers"], e["timestamp"], e["attributes"]) for e in events] == [
        (
            "purchase_completed",
            {"id": "1"},
            1717339200,
            {"sku": "PEN-9", "order_id": 102, "total": 15.5},
        ),
        (
            "purchase_completed",
            {"id": "1"},
            1717236300,
            {"sku": "BOOK-1", "qty": 1, "order_id": 101, "total": 49},
        ),
    ]
    assert {e["id"] for e in events} == {
        deterministic_ulid("orders", canonical_key([101])),
        deterministic_ulid("orders", canonical_key([102])),
    }

    rejected = sorted(rejected_rows(pipeline), key=lambda r: r["row_key"])
    load_id = info.loads_ids[-1]
    assert [
        (r["load_id"], r["table"], r["action"], r["row_key"], r["reason"], r["field"])
        for r in rejected
    ] == [
        (load_id, "orders", "event", "103", "invalid_event_data", "data"),
        (load_id, "orders", "event", "104", "missing_identifier", "user_id"),
        (load_id, "users", "identify", "bad-email", "invalid_identifier", "email"),
    ]
    assert rejected[2]["row"]["name"] == "Bad"
    assert all("bad-email" not in r["message"] for r in rejected)


@pytest.mark.slow
def test_same_rows_in_both_shapes_get_the_same_event_ids(
    warehouse: str, emulator: Emulator, make_pipeline
):
    make_pipeline("jsonl").run(warehouse_resources(warehouse, "sqlalchemy"))
    first = sorted(e["id"] for e in emulator.events)
    emulator.reset()

    make_pipeline("arrow").run(warehouse_resources(warehouse, "pyarrow"))

    assert sorted(e["id"] for e in emulator.events) == first


@pytest.mark.slow
def test_rerun_and_full_resync_create_no_duplicate_event(
    warehouse: str, emulator: Emulator, make_pipeline
):
    pipeline = make_pipeline()
    pipeline.run(warehouse_resources(warehouse, "sqlalchemy"))
    assert len(emulator.events) == 2

    pipeline.run(warehouse_resources(warehouse, "sqlalchemy"))
    pipeline.run(warehouse_resources(warehouse, "pyarrow"), refresh="drop_sources")

    assert len(emulator.events) == 2
    assert emulator.duplicate_events == 4


@pytest.mark.slow
def test_mapping_from_config_without_code(emulator: Emulator, make_pipeline):
    rows = [{"uid": 7, "plan": "pro", "seen": "2024-05-01T00:00:00Z"}]
    pipeline = make_pipeline(
        tables={"accounts": {"action": "identify", "identifier": "uid", "timestamp": "seen"}}
    )

    pipeline.run(dlt.resource(rows, name="accounts"))

    assert [(p["identifiers"]["id"], p["attributes"]) for p in emulator.people] == [
        ("7", {"plan": "pro"})
    ]


@pytest.mark.slow
def test_mapping_from_env_config(emulator: Emulator, make_pipeline, monkeypatch):
    monkeypatch.setenv(
        "DESTINATION__CUSTOMERIO__TABLES",
        orjson.dumps(
            {
                "signups": {
                    "action": "event",
                    "identifier": "uid",
                    "event_name": "signed_up",
                    "event_id": "uid",
                }
            }
        ).decode(),
    )
    pipeline = make_pipeline()

    pipeline.run(dlt.resource([{"uid": 9, "source": "ads"}], name="signups"))

    assert [(e["name"], e["identifiers"], e["attributes"]) for e in emulator.events] == [
        ("signed_up", {"id": "9"}, {"source": "ads"})
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        (None, "action"),
        ({"action": "upsert", "identifier": "uid"}, "action"),
        ({"action": "identify"}, "identifier"),
        ({"action": "identify", "identifier": "uid", "event_name": "x"}, "event_name"),
        ({"action": "event", "identifier": "uid", "timestamp": "ts"}, "event_name"),
    ],
)
def test_bad_mapping_stops_the_load_before_any_request(
    mapping: dict | None, key: str, emulator: Emulator, make_pipeline
):
    good = customerio_adapter(
        dlt.resource([{"uid": i} for i in range(5)], name="good"),
        action="identify",
        identifier="uid",
    )
    bad = dlt.resource([{"uid": 1, "plan": "x"}], name="bad")
    pipeline = make_pipeline(tables={"bad": mapping} if mapping else None)

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run([good, bad])

    # dlt reports the terminal job error by its text
    assert f"Customer.io mapping of table 'bad', key '{key}'" in str(raised.value)
    assert emulator.requests == []


@pytest.mark.slow
def test_bad_credentials_stop_the_load_and_the_fixed_run_completes(
    emulator: Emulator, tmp_path: Path
):
    rows = [{"uid": i, "n": i} for i in range(50)]
    resource = customerio_adapter(
        dlt.resource(rows, name="people"), action="identify", identifier="uid"
    )
    pipeline = dlt.pipeline(
        "creds",
        destination=customerio(site_id=SITE_ID, api_key="wrong-key", track_url=emulator.url),
        pipelines_dir=str(tmp_path),
    )

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(resource)

    assert "destination.customerio.api_key" in str(raised.value)
    assert "wrong-key" not in str(raised.value)
    assert len(emulator.requests) <= 2
    assert emulator.people == []
    assert pipeline.list_normalized_load_packages() != []

    fixed = dlt.pipeline(
        pipeline.pipeline_name,
        destination=customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url),
        pipelines_dir=pipeline.pipelines_dir,
    )
    fixed.run()

    assert len(emulator.people) == 50
    assert fixed.list_normalized_load_packages() == []


@pytest.mark.slow
def test_bodies_fill_close_to_500_kb(emulator: Emulator, make_pipeline):
    rows = [
        {
            "uid": i,
            "email": f"person{i:06d}@example.com",
            "company": "Example Corporation Ltd",
            "plan": "enterprise-annual",
            "country": "Netherlands",
            "city": "Amsterdam",
            "title": "Senior Data Engineer",
            "score": i % 97,
            "active": True,
        }
        for i in range(20_000)
    ]
    resource = customerio_adapter(
        dlt.resource(rows, name="people"), action="identify", identifier="uid"
    )
    pipeline = make_pipeline()

    pipeline.run(resource)

    assert len(emulator.people) == 20_000
    batch_requests = [r for r in emulator.requests if r.path == "/api/v2/batch"]
    assert len(batch_requests) <= 13
    assert sum(r.ops for r in batch_requests) == 20_000


@pytest.mark.slow
def test_207_from_customerio_rejects_only_the_named_rows(httpx_mock: HTTPXMock, tmp_path: Path):
    def answer(request: httpx.Request) -> httpx.Response:
        batch = orjson.loads(request.content)["batch"]
        errors = [
            {"batch_index": i, "reason": "invalid", "field": "identifiers", "message": "no"}
            for i, op in enumerate(batch)
            if op["identifiers"]["id"] in {"3", "7"}
        ]
        return httpx.Response(207 if errors else 200, json={"errors": errors} if errors else {})

    httpx_mock.add_callback(with_region(answer), is_reusable=True)
    resource = customerio_adapter(
        dlt.resource([{"uid": i} for i in range(10)], name="people"),
        action="identify",
        identifier="uid",
    )
    pipeline = dlt.pipeline(
        "p207",
        destination=customerio(site_id="s", api_key="k", track_url="http://127.0.0.1:1"),
        pipelines_dir=str(tmp_path),
        dev_mode=True,
    )

    info = pipeline.run(resource)

    assert not info.has_failed_jobs
    rejected = sorted(rejected_rows(pipeline), key=lambda r: r["row_key"])
    assert [(r["row_key"], r["reason"], r["field"], r["row"]) for r in rejected] == [
        ("3", "invalid", "identifiers", {"uid": 3}),
        ("7", "invalid", "identifiers", {"uid": 7}),
    ]


@pytest.mark.slow
def test_rejected_rows_load_back_into_a_warehouse(
    emulator: Emulator, make_pipeline, tmp_path: Path
):
    resource = customerio_adapter(
        dlt.resource([{"uid": "1"}, {"uid": ""}, {"uid": "x" * 200}], name="people"),
        action="identify",
        identifier="uid",
    )
    pipeline = make_pipeline()
    pipeline.run(resource)
    sink = dlt.pipeline(
        "rejects_sink",
        destination=dlt.destinations.duckdb(str(tmp_path / "rejects.duckdb")),
        pipelines_dir=str(tmp_path / "sink"),
        dev_mode=True,
    )

    sink.run(rejected_rows(pipeline))
    sink.run(rejected_rows(pipeline))  # merging on reject_id: no duplicates

    with sink.sql_client() as client:
        rows = client.execute_sql(
            "SELECT reason, field FROM customerio_rejected_rows ORDER BY reason"
        )
    assert [tuple(r) for r in rows] == [
        ("identifier_too_long", "uid"),
        ("missing_identifier", "uid"),
    ]


@pytest.mark.slow
def test_plain_http_to_a_remote_host_is_refused(tmp_path: Path):
    from dlt.common.configuration.exceptions import ConfigurationValueError

    resource = customerio_adapter(
        dlt.resource([{"uid": 1}], name="people"), action="identify", identifier="uid"
    )
    pipeline = dlt.pipeline(
        "insecure",
        destination=customerio(site_id="s", api_key="k", track_url="http://example.com"),
        pipelines_dir=str(tmp_path),
        dev_mode=True,
    )
    with pytest.raises(ConfigurationValueError) as raised:
        pipeline.run(resource)
    assert "track_url must use https://" in str(raised.value)


def test_credentials_error_is_terminal_for_dlt():
    from dlt.common.destination.exceptions import DestinationTerminalException

    assert issubclass(CredentialsError, DestinationTerminalException)
    assert issubclass(MappingError, DestinationTerminalException)


@pytest.mark.slow
def test_destination_by_string_reference_with_env_config(
    emulator: Emulator, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__SITE_ID", SITE_ID)
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__API_KEY", API_KEY)
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__TRACK_URL", emulator.url)
    pipeline = dlt.pipeline(
        "by_string", destination="cio_destination.customerio", pipelines_dir=str(tmp_path)
    )
    resource = customerio_adapter(
        dlt.resource([{"uid": 5, "plan": "pro"}], name="people"),
        action="identify",
        identifier="uid",
    )

    pipeline.run(resource)

    assert [(p["identifiers"]["id"], p["attributes"]) for p in emulator.people] == [
        ("5", {"plan": "pro"})
    ]


@pytest.mark.slow
def test_a_status_nobody_documents_rejects_every_row_of_its_request(
    httpx_mock: HTTPXMock, tmp_path: Path
):
    def answer(request: httpx.Request) -> httpx.Response:
        ids = {op["identifiers"]["id"] for op in orjson.loads(request.content)["batch"]}
        return httpx.Response(409 if "3" in ids else 200, json={})

    httpx_mock.add_callback(with_region(answer), is_reusable=True)
    resource = customerio_adapter(
        dlt.resource([{"uid": i, "pad": "x" * 200} for i in range(10)], name="people"),
        action="identify",
        identifier="uid",
    )
    pipeline = dlt.pipeline(
        "p409",
        destination=customerio(
            site_id="s", api_key="k", track_url="http://127.0.0.1:1", max_request_bytes=1_000
        ),
        pipelines_dir=str(tmp_path),
        dev_mode=True,
    )

    info = pipeline.run(resource)

    assert not info.has_failed_jobs
    sent = [
        op["identifiers"]["id"]
        for r in httpx_mock.get_requests(method="POST")
        for op in orjson.loads(r.content)["batch"]
    ]
    assert sorted(sent, key=int) == [str(i) for i in range(10)]
    refused = {
        op["identifiers"]["id"]
        for r in httpx_mock.get_requests(method="POST")
        if "3" in {o["identifiers"]["id"] for o in orjson.loads(r.content)["batch"]}
        for op in orjson.loads(r.content)["batch"]
    }
    rejected = list(rejected_rows(pipeline))
    assert sorted(r["row_key"] for r in rejected) == sorted(refused)
    assert {r["reason"] for r in rejected} == {"http_409"}
    assert 0 < len(refused) < 10
    report = sync_report(pipeline).tables[0]
    assert (report.accepted, report.rejected) == (10 - len(refused), len(refused))


def _deep_json_text(levels: int) -> str:
    return '{"k":' + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}"


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["dicts", "arrow"])
def test_rows_json_cannot_carry_are_rejected_and_the_load_completes(
    shape: str, emulator: Emulator, make_pipeline
):
    """An event table keyed by the whole row (no event_id, no primary key): a NaN or infinite
    score (Arrow keeps them; dlt's JSONL writer makes them null, and the adapter's step notes
    them), a whole float beyond 64 bits (whole floats key as integers), and event data nested
    deeper than JSON writers go each reject their own row only, from dicts as from Arrow."""
    rows = [
        {"user_id": 1, "score": 1.5, "data": '{"a": 1}'},
        {"user_id": 2, "score": 2.0**64, "data": None},
        {"user_id": 3, "score": 2.5, "data": _deep_json_text(300)},
        {"user_id": 4, "score": 3.5, "data": _deep_json_text(2_000)},
        {"user_id": 5, "score": float("nan"), "data": None},
        {"user_id": 6, "score": float("inf"), "data": None},
    ]
    data: Any = rows if shape == "dicts" else pa.Table.from_pylist(rows)
    resource = customerio_adapter(
        dlt.resource(data, name="scores"),
        action="event",
        identifier="user_id",
        event_name="scored",
        event_data_column="data",
    )
    pipeline = make_pipeline()

    info = pipeline.run(resource)

    assert not info.has_failed_jobs
    assert not pipeline.has_pending_data
    sent = sorted((e["identifiers"]["id"], e["attributes"]) for e in emulator.events)
    rejected = sorted(
        (r["row"]["user_id"], r["reason"], r["field"]) for r in rejected_rows(pipeline)
    )
    bad_data = [
        (2, "invalid_event_id", "score"),
        (3, "invalid_event_data", "data"),
        (4, "invalid_event_data", "data"),
    ]
    assert sent == [("1", {"a": 1, "score": 1.5})]
    assert rejected == [
        *bad_data,
        (5, "invalid_event_id", "score"),
        (6, "invalid_event_id", "score"),
    ]
    assert all(r["row_key"].startswith("row:") for r in rejected_rows(pipeline))


@pytest.mark.slow
def test_arrow_dates_past_9999_reject_their_rows_and_the_load_completes(
    emulator: Emulator, make_pipeline
):
    """A timestamp or date no Python datetime holds (DuckDB and parquet hold them) failed every
    run of the load at dlt's load step: now its row is rejected where a mapping reads it."""
    far = 20_000 * 365 * 86_400 * 10**6  # microseconds: the year 21956
    table = pa.table(
        {
            "uid": ["u1", "u2", "u3"],
            "expires_at": pa.array([1_700_000_000 * 10**6, far, None], pa.timestamp("us")),
            "born": pa.array([1, 3_000_000, -(2**31)], pa.int32()).cast(pa.date32()),
        }
    )
    resource = customerio_adapter(
        dlt.resource(table, name="users"), action="identify", identifier="uid"
    )
    pipeline = make_pipeline()

    info = pipeline.run(resource)

    assert not info.has_failed_jobs and not pipeline.has_pending_data
    assert [p["identifiers"]["id"] for p in emulator.people] == ["u1"]
    rejected = sorted(rejected_rows(pipeline), key=lambda r: r["row"]["uid"])
    assert [(r["row"], r["reason"], r["field"]) for r in rejected] == [
        (
            {"uid": "u2", "expires_at": "21956-09-21T00:00:00+00:00", "born": "10183-09-21"},
            "invalid_value",
            "expires_at",
        ),
        ({"uid": "u3", "born": "-2147483648 days from the unix epoch"}, "invalid_value", "born"),
    ]


@pytest.mark.slow
def test_rejected_row_without_an_identifier_is_named_by_its_primary_key(
    emulator: Emulator, make_pipeline
):
    rows = [{"id": 1, "email": "ada@example.com"}, {"id": 2, "email": None, "plan": "pro"}]
    resource = customerio_adapter(
        dlt.resource(rows, name="users", primary_key="id"),
        action="identify",
        identifier="email",
        identifier_type="email",
    )
    pipeline = make_pipeline()

    pipeline.run(resource)

    assert [(r["row_key"], r["reason"], r["field"]) for r in rejected_rows(pipeline)] == [
        ("2", "missing_identifier", "email")
    ]


def _absent_column_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "cio_destination" and "is not in the table's schema" in r.getMessage()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["dicts", "arrow"])
def test_a_mapped_column_null_in_every_row_is_not_a_mapping_error(
    shape: str, emulator: Emulator, make_pipeline, caplog: pytest.LogCaptureFixture
):
    """dlt leaves a column out of the schema while it is NULL in every row of a load: the
    load still completes, run after run, and warns once per load naming key and column."""
    caplog.set_level("WARNING", logger="cio_destination")
    pipeline = make_pipeline()

    def users(names: list[str]) -> Any:
        rows = [{"uid": i, "name": n, "plan": None, "seen": None} for i, n in enumerate(names)]
        data: Any = rows if shape == "dicts" else pa.Table.from_pylist(rows)
        return customerio_adapter(
            dlt.resource(data, name="users"),
            action="identify",
            identifier="uid",
            attributes=["name", "plan"],
            timestamp="seen",
        )

    for run, names in enumerate((["Ada", "Grace"], ["Alan"])):
        info = pipeline.run(users(names))

        assert not info.has_failed_jobs
        assert not pipeline.has_pending_data
        assert len(_absent_column_warnings(caplog)) == 2 * (run + 1)
    assert sorted((p["identifiers"]["id"], p["attributes"]) for p in emulator.people) == [
        ("0", {"name": "Alan"}),
        ("1", {"name": "Grace"}),
    ]
    warnings = _absent_column_warnings(caplog)
    assert "table users: timestamp column 'seen'" in warnings[0]
    assert "table users: attributes column 'plan'" in warnings[1]
    assert not any(name in w for w in warnings for name in ("Ada", "Grace", "Alan"))


@pytest.mark.slow
def test_an_identifier_null_in_every_row_rejects_the_rows_and_later_runs_go_on(
    emulator: Emulator, make_pipeline
):
    pipeline = make_pipeline()

    def signups(rows: list[dict]) -> Any:
        return customerio_adapter(
            dlt.resource(rows, name="signups", primary_key="id"),
            action="event",
            identifier="email",
            identifier_type="email",
            event_name="signed_up",
        )

    first = pipeline.run(signups([{"id": 1, "email": None}, {"id": 2, "email": None}]))
    second = pipeline.run(signups([{"id": 3, "email": "ada@example.com"}]))

    assert not first.has_failed_jobs and not second.has_failed_jobs
    assert sorted((r["row_key"], r["reason"], r["field"]) for r in rejected_rows(pipeline)) == [
        ("1", "missing_identifier", "email"),
        ("2", "missing_identifier", "email"),
    ]
    assert [e["identifiers"] for e in emulator.events] == [{"email": "ada@example.com"}]
