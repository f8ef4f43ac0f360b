"""Personal data in the state: rejected rows with keys only, retention, and erasure in a load."""

from __future__ import annotations

import time
from typing import Any

import dlt
import pytest

import cio_destination.loads
from cio_destination import customerio_adapter, rejected_rows

pytestmark = pytest.mark.slow  # whole dlt pipelines against the emulator


def people(rows: list[dict[str, Any]]) -> Any:
    return customerio_adapter(
        dlt.resource(rows, name="people", primary_key="uid"),
        action="identify",
        identifier="uid",
        changes_only=True,
    )


BAD = {"uid": "u1", "email": "ada@example.com", "note": "x" * 2_000}  # a value over 1000 bytes


def test_keys_only_keeps_no_personal_data_of_a_rejected_row(make_pipeline):
    pipeline = make_pipeline(rejected_row_payload="keys_only")

    pipeline.run(people([BAD]))

    (rejected,) = list(rejected_rows(pipeline))
    assert rejected["reason"] == "attribute_value_too_long"
    assert rejected["row"] == {"uid": "u1"}


def test_rejected_rows_and_reports_past_the_retention_are_purged_when_a_load_starts(
    make_pipeline, monkeypatch: pytest.MonkeyPatch
):
    pipeline = make_pipeline(state_retention_days=30)
    pipeline.run(people([BAD]))
    first = pipeline.last_trace.last_load_info.loads_ids[0]

    # the next load starts 31 days later
    monkeypatch.setattr(cio_destination.loads, "now", lambda: time.time() + 31 * 86_400)
    pipeline.run(people([{**BAD, "uid": "u2"}]))

    assert [r["row_key"] for r in rejected_rows(pipeline)] == ["u2"]
    assert cio_destination.sync_report(pipeline, first).tables == []


def test_a_suppress_purges_the_person_s_records_in_the_same_load(make_pipeline):
    pipeline = make_pipeline()
    pipeline.run(people([BAD, {"uid": "u3", "plan": "pro"}]))
    erasures = customerio_adapter(
        dlt.resource([{"uid": "u1"}, {"uid": "u3"}], name="erasures"),
        action="suppress",
        identifier="uid",
    )

    pipeline.run(erasures)

    assert list(rejected_rows(pipeline)) == []
    state = cio_destination.loads.pipeline_state(pipeline, pipeline.destination.configuration(None))
    assert state.fingerprints.fingerprints_of(f"{pipeline.pipeline_name}/people", ["u3"]) == {}
