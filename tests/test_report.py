"""Sync reports and dry runs, against the emulator."""

from __future__ import annotations

import json
from typing import Any

import dlt
import pyarrow as pa
import pytest

from cio_destination import customerio_adapter, dry_run, rejected_rows, sync_report
from cio_destination.emulator import Emulator
from cio_destination.report import mask_payload


def users(rows: list[dict]):
    @dlt.resource(name="users")
    def _users(updated=dlt.sources.incremental("updated")):  # noqa: B008 - dlt's idiom
        yield from rows

    return customerio_adapter(
        _users(), action="identify", identifier="email", identifier_type="email"
    )


def orders(count: int):
    rows = [{"order_id": i, "uid": i % 4, "total": i + 0.5} for i in range(count)]
    return customerio_adapter(
        dlt.resource(rows, name="orders"),
        action="event",
        identifier="uid",
        event_name="purchase",
        event_id="order_id",
    )


USERS = [
    {"email": "ada@example.com", "plan": "pro", "updated": 1},
    {"email": "grace@example.com", "plan": "free", "updated": 2},
    {"email": "not-an-email", "plan": "free", "updated": 3},
    {"email": "x" * 200 + "@example.com", "plan": "free", "updated": 4},
]


@pytest.mark.slow
def test_report_counts_each_table_of_a_load(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline(max_request_bytes=1_000)

    info = pipeline.run([users(USERS), orders(40)])

    report = sync_report(pipeline)
    assert report.load_id == info.loads_ids[-1]
    by_table = {t.table: t for t in report.tables}
    assert set(by_table) == {"users", "orders"}
    people = by_table["users"]
    assert (people.action, people.rows_in, people.operations, people.accepted) == (
        "identify",
        4,
        2,
        2,
    )
    assert people.rejected == 2
    assert people.rejected_by_reason == {"invalid_identifier": 1, "identifier_too_long": 1}
    events = by_table["orders"]
    assert (events.action, events.rows_in, events.operations, events.accepted) == (
        "event",
        40,
        40,
        40,
    )
    batch_requests = [r for r in emulator.requests if r.path == "/api/v2/batch"]
    assert people.requests + events.requests == len(batch_requests)
    assert events.requests > 1  # 1,000-byte bodies
    assert events.seconds > 0 and events.requests_per_second > 0
    assert people.samples == [] and not report.dry_run
    text = str(report)
    assert "orders" in text and "rejected 1 x invalid_identifier" in text
    assert "ada@example.com" not in text


@pytest.mark.slow
def test_dry_run_sends_nothing_and_spends_no_state(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()

    report = dry_run(pipeline, [users(USERS), orders(10)])

    assert emulator.requests == []
    assert report.dry_run
    by_table = {t.table: t for t in report.tables}
    assert (by_table["users"].operations, by_table["users"].rejected) == (2, 2)
    assert by_table["users"].rejected_by_reason == {
        "invalid_identifier": 1,
        "identifier_too_long": 1,
    }
    assert by_table["orders"].operations == 10
    assert by_table["users"].samples[0] == {
        "type": "person",
        "action": "identify",
        "identifiers": {"email": "<str>"},
        "attributes": {"plan": "<str>", "updated": "<int>"},
    }
    assert "would send" in str(report) and "ada@example.com" not in str(report)

    # the real run afterwards still sends every row: the dry run consumed no cursor
    pipeline.run([users(USERS), orders(10)])
    assert sorted(
        p["identifiers"]["email"] for p in emulator.people if "email" in p["identifiers"]
    ) == [
        "ada@example.com",
        "grace@example.com",
    ]
    assert len(emulator.events) == 10
    # and the incremental cursor now holds: a second real run sends no user again
    requests_before = len(emulator.requests)
    pipeline.run(users(USERS))
    assert [r.path for r in emulator.requests[requests_before:]] == []


@pytest.mark.slow
def test_dry_run_config_key_sends_nothing(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline(dry_run=True)

    pipeline.run(orders(5))

    assert emulator.requests == []
    assert sync_report(pipeline).tables[0].operations == 5


def test_masking_keeps_structure_and_hides_values():
    op = {
        "type": "person",
        "action": "event",
        "identifiers": {"id": "42"},
        "name": "purchase",
        "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "timestamp": 1700000000,
        "attributes": {"email": "a@b.co", "items": [{"sku": "A", "qty": 2}], "vip": True},
    }
    masked = mask_payload(op, columns=("email", "items", "vip"), literals={"name": "purchase"})
    assert masked == {
        "type": "person",
        "action": "event",
        "identifiers": {"id": "<str>"},
        "name": "purchase",
        "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "timestamp": "<int>",
        "attributes": {
            "email": "<str>",
            "items": [{"<key>": "<str>", "<key 2>": "<int>"}],
            "vip": "<bool>",
        },
    }


def test_masking_hides_a_name_that_is_not_the_mapping_literal():
    page = {"type": "person", "action": "page", "name": "https://app.example/reset?token=T0k3n"}
    assert mask_payload(page)["name"] == "<str>"
    assert mask_payload(page, literals={"name": "home"})["name"] == "<str>"
    event = {"type": "person", "action": "event", "name": "signed_up"}
    assert mask_payload(event, literals={"name": "signed_up"})["name"] == "signed_up"
    send = {"transactional_message_id": 7, "to": "a@b.co"}
    assert mask_payload(send) == {"transactional_message_id": "<int>", "to": "<str>"}
    assert (
        mask_payload(send, literals={"transactional_message_id": 7})["transactional_message_id"]
        == 7
    )
    assert (
        mask_payload(send, literals={"transactional_message_id": "7"})["transactional_message_id"]
        == "<int>"
    )


def test_masking_hides_every_key_of_a_row_s_data_but_the_mapping_s_columns():
    op = {
        "type": "object",
        "action": "add_relationships",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
        "cio_relationships": [
            {
                "identifiers": {"email": "jane.doe@example.com"},
                "relationship_attributes": {"role": "admin", "jane.doe@example.com": 1},
            }
        ],
        "attributes": {"plan": "pro", "jane.doe@example.com": {"ssn": "123-45-6789"}},
        "message_data": {"plan": {"jane.doe@example.com": True}},
    }

    masked = mask_payload(op, columns=("plan", "role"))

    assert masked == {
        "type": "object",
        "action": "add_relationships",
        "identifiers": {"object_type_id": "<str>", "object_id": "<str>"},
        "cio_relationships": [
            {
                "identifiers": {"email": "<str>"},
                "relationship_attributes": {"role": "<str>", "<key>": "<int>"},
            }
        ],
        "attributes": {"plan": "<str>", "<key>": {"<key>": "<str>"}},
        "message_data": {"plan": {"<key>": "<bool>"}},
    }


@pytest.mark.slow
def test_dry_run_samples_show_no_value_of_a_row_in_names_or_keys(make_pipeline):
    rows = [
        {
            "uid": "u1",
            "url": "https://app.example.com/reset?token=RESETzq9",
            "data": {"jane.doe@example.com": {"ssn": "123-45-6789"}},
        }
    ]
    pages = customerio_adapter(
        dlt.resource(rows, name="pageviews"),
        action="page",
        identifier="uid",
        event_name_column="url",
        event_data_column="data",
    )
    signups = customerio_adapter(
        dlt.resource(rows, name="signups"), action="event", identifier="uid", event_name="joined"
    )

    report = dry_run(make_pipeline(), [pages, signups])

    text = str(report)
    assert "RESETzq9" not in text and "jane.doe" not in text and "123-45" not in text
    samples = {t.table: t.samples[0] for t in report.tables}
    assert samples["pageviews"]["name"] == "<str>"
    assert samples["pageviews"]["attributes"] == {"<key>": {"<key>": "<str>"}}
    assert samples["signups"]["name"] == "joined"
    assert set(samples["signups"]["attributes"]) == {"url", "data"}


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["dicts", "arrow"])
def test_a_row_sent_without_an_oversized_attribute_is_accepted_and_its_drop_recorded(
    shape: str, emulator: Emulator, make_pipeline
):
    rows = [
        {"email": "ada@example.com", "bio": "b" * 1_001, "plan": "pro"},
        {"email": "grace@example.com", "bio": "short", "plan": "free"},
        {"email": "not-an-email", "bio": "short", "plan": "free"},
    ]
    data: Any = rows if shape == "dicts" else pa.Table.from_pylist(rows)
    resource = customerio_adapter(
        dlt.resource(data, name="people"),
        action="identify",
        identifier="email",
        identifier_type="email",
        oversized_attribute="drop_attribute",
    )
    pipeline = make_pipeline()

    pipeline.run(resource)

    assert {p["identifiers"]["email"]: p["attributes"] for p in emulator.people} == {
        "ada@example.com": {"plan": "pro"},
        "grace@example.com": {"bio": "short", "plan": "free"},
    }
    records = sorted((r["row_key"], r["reason"], r["field"]) for r in rejected_rows(pipeline))
    assert records == [
        ("ada@example.com", "attribute_dropped", "bio"),
        ("not-an-email", "invalid_identifier", "email"),
    ]
    report = sync_report(pipeline).tables[0]
    assert (report.rows_in, report.accepted, report.rejected) == (3, 2, 1)
    assert report.rejected_by_reason == {"invalid_identifier": 1}
    assert report.attributes_dropped == 1
    assert "sent 1 x without an attribute over the value limit" in str(sync_report(pipeline))


@pytest.mark.slow
def test_with_changes_only_a_dropped_attribute_is_cleared_as_a_null_would_be(
    emulator: Emulator, make_pipeline
):
    def people(bio: str):
        return customerio_adapter(
            dlt.resource([{"uid": 1, "bio": bio, "plan": "pro"}], name="people"),
            action="identify",
            identifier="uid",
            changes_only=True,
            oversized_attribute="drop_attribute",
        )

    pipeline = make_pipeline()
    pipeline.run(people("short"))
    pipeline.run(people("b" * 1_001))

    assert [p["attributes"] for p in emulator.people] == [{"plan": "pro"}]  # bio cleared
    assert [(r["reason"], r["field"]) for r in rejected_rows(pipeline)] == [
        ("attribute_dropped", "bio")
    ]


@pytest.mark.slow
def test_sync_reports_load_into_duckdb_one_row_per_load_and_table_without_duplicates(
    emulator: Emulator, make_pipeline, tmp_path
):
    import duckdb

    from cio_destination import sync_reports

    pipeline = make_pipeline()
    first = pipeline.run([users(USERS[:3]), orders(8)]).loads_ids[-1]
    second = pipeline.run([users(USERS), orders(12)]).loads_ids[-1]
    audit_file = tmp_path / "warehouse.duckdb"
    audit = dlt.pipeline(
        "cio_audit",
        destination=dlt.destinations.duckdb(str(audit_file)),
        dataset_name="customerio_audit",
        pipelines_dir=str(tmp_path / "audit_pipelines"),
    )

    audit.run(sync_reports(pipeline))
    audit.run(sync_reports(pipeline))  # a rerun after the same syncs adds nothing

    with duckdb.connect(str(audit_file)) as db:
        rows = db.execute(
            'SELECT load_id, "table", action, rows_in, accepted, rejected, rejected_by_reason,'
            " finished_at >= started_at FROM customerio_audit.customerio_sync_reports"
            ' ORDER BY load_id, "table"'
        ).fetchall()
    expected = []
    for load in sorted([first, second]):
        for t in sync_report(pipeline, load).tables:
            reasons = t.rejected_by_reason
            expected.append(
                (load, t.table, t.action, t.rows_in, t.accepted, t.rejected, reasons, True)
            )
    loaded = [(*row[:6], json.loads(row[6]), row[7]) for row in rows]
    assert loaded == sorted(expected)
    assert len(loaded) == 4  # two loads x two tables
    by_key = {(row[0], row[1]): row for row in loaded}
    assert by_key[(first, "users")][3:6] == (3, 2, 1)
    assert by_key[(second, "users")][3:6] == (1, 0, 1)  # the incremental read only the new row
    assert by_key[(second, "orders")][3] == 12
    assert by_key[(second, "users")][6] == {"identifier_too_long": 1}


@pytest.mark.slow
def test_sync_reports_filters_by_load_and_table_and_yields_nothing_before_a_load(
    emulator: Emulator, make_pipeline
):
    from cio_destination import sync_reports

    pipeline = make_pipeline()
    assert list(sync_reports(pipeline)) == []
    first = pipeline.run([users(USERS[:2]), orders(4)]).loads_ids[-1]
    pipeline.run(orders(6))

    items = list(sync_reports(pipeline))
    assert [(i["table"], i["rows_in"]) for i in items] == [
        ("orders", 4),
        ("users", 2),
        ("orders", 6),
    ]
    only = list(sync_reports(pipeline, load_id=first, table="orders"))
    assert [(i["load_id"], i["table"], i["operations"]) for i in only] == [(first, "orders", 4)]
    assert set(items[0]) >= {"requests", "retries", "throttled", "seconds", "dry_run"}
