"""A table at Customer.io's latency: many of its requests in flight, and a kill loses nothing."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import dlt
import orjson
import pyarrow as pa
import pytest

from cio_destination import customerio_adapter
from cio_destination.emulator import Emulator, Faults
from cio_destination.event_ids import canonical_key, deterministic_ulid

from .conftest import small_units as counted_units
from .kills import kill_after_progress, run_to_completion
from .latency_child import event_rows, final_person

pytestmark = pytest.mark.slow  # child processes, killed mid-load


def batch_requests(emulator: Emulator) -> int:
    return sum(1 for r in emulator.requests if r.path == "/api/v2/batch")


def applied_events(emulator: Emulator, numbers: range) -> Callable[[], int]:
    """Progress: how many of the events `numbers` Customer.io has applied (the emulator applies
    a request's operations, then answers). Looked up again only once another request is in."""
    ids = {deterministic_ulid("events", canonical_key([f"evt-{i:07d}"])) for i in numbers}
    seen = [-1, 0]

    def progress() -> int:
        requests = batch_requests(emulator)
        if requests != seen[0]:
            seen[0] = requests
            seen[1] = sum(1 for event in emulator.events if event["id"] in ids)
        return seen[1]

    return progress


def test_one_table_keeps_many_requests_in_flight_and_a_kill_mid_load_loses_nothing(
    emulator: Emulator, tmp_path: Path
):
    """Answers take 100 ms. One dlt batch of 10,000 rows makes two or three 500 KB requests,
    so a destination that waits for each batch's answers before the next batch never has more
    than three in flight; the emulator counts more than five at once. Each run is killed at a
    point of observed progress (never after a delay), mid-table: the first two after a number
    of requests reached the emulator, the third the moment Customer.io applied the request
    that holds the last events of one unit of 10,000 and the first of the next (bodies are
    filled across units), before its answer is in. The runs after them deliver every event
    once and leave every person with their final values, though each person's stale row came
    first."""
    emulator.set_faults(Faults(latency=0.1))
    people, events = 40_000, 60_000
    marker = tmp_path / "done"
    command = [
        sys.executable,
        "-m",
        "tests.latency_child",
        str(tmp_path / "pipelines"),
        emulator.url,
        str(people),
        str(events),
        str(marker),
    ]
    # a whole run is about 35 batch requests: 17 of people, then 18 of events
    killed = sum(
        kill_after_progress(command, lambda: batch_requests(emulator), step) for step in (9, 14)
    )
    # events 30,000 to 30,004 open the fourth unit: they ride in the request with the third's last
    killed += kill_after_progress(command, applied_events(emulator, range(30_000, 30_005)), 1)
    for _ in range(3):
        if marker.exists():
            break
        run_to_completion(command)

    assert marker.exists()
    assert killed == 3
    assert emulator.most_batches_in_flight > 5
    expected_ids = {
        deterministic_ulid("events", canonical_key([row["event_key"]]))
        for row in event_rows(events)
    }
    received = emulator.events
    assert len(received) == events
    assert {e["id"] for e in received} == expected_ids
    seen = {p["identifiers"]["id"]: p["attributes"] for p in emulator.people}
    assert len(seen) == people
    for i in range(people):
        final = final_person(i)
        assert seen[str(i)] == {"plan": final["plan"], "score": final["score"]}


@pytest.fixture(name="small_units")
def units_of_100(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Units of 100 rows (two dlt batches of 50), so a few hundred rows make several units;
    the rows of each unit read, in order."""
    return counted_units(monkeypatch, 100, 100)


def test_a_changes_only_unit_is_diffed_against_what_the_units_before_it_had_accepted(
    emulator: Emulator, make_pipeline, small_units: list[int]
):
    """Every person changes from `a` to `b` in the first unit and back to `a` in the next one
    (Arrow rows: their source values are hashed before mapping), while Customer.io takes 200 ms
    to answer. Diffed against the fingerprints of before the load, the second unit would look
    unchanged and be skipped, leaving `b`; it waits for the first unit's answers instead, and
    sends `a`."""
    emulator.set_faults(Faults(latency=0.2))
    pipeline = make_pipeline()

    def people(*plans: str):
        rows = [{"uid": i, "plan": plan} for plan in plans for i in range(100)]
        resource = dlt.resource(pa.Table.from_pylist(rows), name="people")
        return customerio_adapter(resource, action="identify", identifier="uid", changes_only=True)

    pipeline.run(people("a"))
    small_units.clear()
    pipeline.run(people("b", "a"))

    assert small_units == [100, 100]
    plans = {p["identifiers"]["id"]: p["attributes"]["plan"] for p in emulator.people}
    assert plans == {str(i): "a" for i in range(100)}


def test_units_of_one_table_are_in_flight_together_and_a_person_ends_with_their_last_row(
    emulator: Emulator, make_pipeline, small_units: list[int]
):
    emulator.set_faults(Faults(latency=0.1))
    pipeline = make_pipeline(max_request_bytes=2_000)
    rows = [{"uid": i, "plan": plan} for plan in ("stale", "final") for i in range(300)]
    resource = dlt.resource(rows, name="people")

    pipeline.run(customerio_adapter(resource, action="identify", identifier="uid"))

    # six units of 100 rows, a few 2 KB bodies each: more than one unit's bodies at once
    assert small_units == [100] * 6
    assert emulator.most_batches_in_flight > 5
    plans = {p["identifiers"]["id"]: p["attributes"]["plan"] for p in emulator.people}
    assert plans == {str(i): "final" for i in range(300)}


def test_a_package_left_pending_by_a_per_batch_version_resumes_at_its_offset(
    emulator: Emulator, make_pipeline
):
    """Earlier versions were called by dlt once per 10,000 rows and dlt kept each file's offset
    in the load package's state. A package they left pending 10,000 rows into its file resumes
    there: the rows before the offset are not sent again, every row after it is."""
    pipeline = make_pipeline()
    rows = [{"uid": i, "plan": "pro"} for i in range(25_000)]
    resource = dlt.resource(rows, name="people")
    pipeline.extract(customerio_adapter(resource, action="identify", identifier="uid"))
    pipeline.normalize()
    (package,) = (Path(pipeline.working_dir) / "load" / "normalized").iterdir()
    (job,) = (package / "new_jobs").glob("people.*")
    table, file_id = job.name.split(".")[:2]
    state_file = package / "load_package_state.json"
    state = orjson.loads(state_file.read_bytes()) if state_file.exists() else {}
    state["destination_state"] = {f"{table}.{file_id}": 10_000}  # what dlt wrote back then
    state_file.write_bytes(orjson.dumps(state))

    pipeline.load()

    sent = sorted(int(p["identifiers"]["id"]) for p in emulator.people)
    assert sent == list(range(10_000, 25_000))
