"""Delivery under load and faults, against the emulator on loopback: rate, latency, retries, kills."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import dlt
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from cio_destination import customerio, customerio_adapter, rejected_rows
from cio_destination.emulator import Emulator, Faults
from cio_destination.event_ids import canonical_key, deterministic_ulid
from cio_destination.transport.ratelimit import RateLimiter

from .conftest import API_KEY, SITE_ID
from .kills import kill_after_progress, run_to_completion
from .sync_child import event_rows, person_rows, resources


def batch_requests(emulator: Emulator) -> list:
    return [r for r in emulator.requests if r.path == "/api/v2/batch"]


def identify_resource(name: str, count: int, start: int = 0):
    rows = [{"uid": f"{name}-{i}", "plan": "pro", "n": i} for i in range(start, start + count)]
    return customerio_adapter(dlt.resource(rows, name=name), action="identify", identifier="uid")


def run_until_complete(pipeline: dlt.Pipeline, data, max_runs: int = 6) -> int:
    """Run, then rerun while a package is pending (what a scheduler does); returns the runs."""
    runs = 0
    while True:
        runs += 1
        try:
            pipeline.run(data if runs == 1 else None)
        except PipelineStepFailed:
            if runs >= max_runs:
                raise
        if not pipeline.list_normalized_load_packages():
            return runs


def busiest(times: list[float], window: float) -> int:
    """The most of `times` (sorted) that fall in any `window`-second span."""
    return max(sum(1 for s in times if t <= s < t + window) for t in times)


def test_one_rate_limit_shared_by_parallel_tables(
    emulator: Emulator, make_pipeline, monkeypatch: pytest.MonkeyPatch
):
    starts: list[float] = []  # the start slot the shared limiter gave each request
    acquire = RateLimiter.acquire

    def recording(self: RateLimiter) -> float:
        asked = time.monotonic()
        waited = acquire(self)
        starts.append(asked + waited)
        return waited

    monkeypatch.setattr(RateLimiter, "acquire", recording)
    pipeline = make_pipeline(requests_per_second=20, max_request_bytes=2_000)
    tables = [identify_resource(f"t{i}", 300) for i in range(4)]

    pipeline.run(tables)

    # four tables load in parallel, yet no second holds more starts than one rate allows
    assert len(starts) >= 61  # the preflight and at least 60 batches
    assert busiest(sorted(starts), 1.0) <= 21
    # arrivals also carry the machine's thread scheduling (the emulator shares the process):
    # over two seconds the rate still holds, with the same slack
    arrivals = sorted(r.time for r in batch_requests(emulator))
    assert len(arrivals) >= 60
    assert busiest(arrivals, 2.0) <= 2 * 20 + 1
    assert len(emulator.people) == 1_200


def test_latency_does_not_cut_throughput(emulator: Emulator, make_pipeline):
    """100 requests answered after 200 ms each: one at a time that is 20 s; the budget allows 2 s."""
    emulator.set_faults(Faults(latency=0.2))
    pipeline = make_pipeline(requests_per_second=50, max_request_bytes=1_000)
    resource = identify_resource("people", 1_500)

    started = time.monotonic()
    pipeline.run(resource)
    elapsed = time.monotonic() - started

    requests = len(batch_requests(emulator))
    assert requests >= 100
    assert elapsed < requests * 0.2 / 4  # at least 4 requests in flight on average
    assert len(emulator.people) == 1_500


def test_repeated_429s_slow_down_and_the_sync_still_completes(emulator: Emulator, make_pipeline):
    emulator.set_faults(Faults(rate_limit=20, retry_after=1))
    pipeline = make_pipeline(requests_per_second=100, max_request_bytes=2_000, max_attempts=10)

    pipeline.run(identify_resource("people", 600))

    statuses = [r.status for r in batch_requests(emulator)]
    assert statuses.count(429) > 0
    assert statuses.count(200) >= 30
    # after the first refusals the shared rate drops: most requests are accepted, not refused
    assert statuses.count(429) < statuses.count(200)
    assert len(emulator.people) == 600
    assert list(rejected_rows(pipeline)) == []


def test_faults_lose_nothing_and_double_nothing(emulator: Emulator, make_pipeline):
    emulator.set_faults(
        Faults(
            http429_rate=0.3,
            retry_after=1,
            error_rate=0.1,
            drop_rate=0.03,
            lost_response_rate=0.03,
            seed=20261129,
        )
    )
    # few attempts per request, so some batches also run out of them: those fail as transient
    # and the next run resumes the pending package
    pipeline = make_pipeline(max_request_bytes=100_000, max_attempts=4)

    run_until_complete(pipeline, resources(20_000, 2_000), max_runs=10)

    emulator.set_faults(None)
    expected_ids = {
        deterministic_ulid("events", canonical_key([row["event_key"]]))
        for row in event_rows(20_000)
    }
    events = emulator.events
    assert len(events) == 20_000
    assert {e["id"] for e in events} == expected_ids
    people = {p["identifiers"]["id"]: p["attributes"] for p in emulator.people}
    for row in person_rows(2_000):
        assert people[str(row["user_id"])] == {"plan": row["plan"], "score": row["score"]}
    assert list(rejected_rows(pipeline)) == []
    statuses = {r.status for r in batch_requests(emulator)}
    assert {0, 429, 200} <= statuses and (500 in statuses or 503 in statuses)


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_delivers_exactly_once(
    emulator: Emulator, tmp_path: Path
):
    events, people, kills = 50_000, 3_000, 4
    marker = tmp_path / "done"
    command = [
        sys.executable,
        "-m",
        "tests.sync_child",
        str(tmp_path / "pipelines"),
        emulator.url,
        str(events),
        str(people),
        str(marker),
    ]
    rng = random.Random(4242)
    killed = 0
    for _ in range(kills):
        # a load of these rows takes about 550 requests: each run is killed mid-load, after
        # between 10 and 120 more requests reached the emulator
        killed += kill_after_progress(
            command, lambda: len(emulator.requests), step=rng.randint(10, 120)
        )
    for _ in range(3):
        if marker.exists():
            break
        run_to_completion(command)

    assert marker.exists()
    assert killed == kills
    expected_ids = {
        deterministic_ulid("events", canonical_key([row["event_key"]]))
        for row in event_rows(events)
    }
    received = emulator.events
    assert len(received) == events
    assert {e["id"] for e in received} == expected_ids
    people_seen = {p["identifiers"]["id"]: p["attributes"] for p in emulator.people}
    for row in person_rows(people):
        assert people_seen[str(row["user_id"])] == {"plan": row["plan"], "score": row["score"]}


def test_bad_credentials_cost_at_most_two_requests_across_tables(
    emulator: Emulator, tmp_path: Path
):
    destination = customerio(
        site_id=SITE_ID, api_key="revoked", track_url=emulator.url, max_request_bytes=2_000
    )
    pipeline = dlt.pipeline("creds4", destination=destination, pipelines_dir=str(tmp_path))

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run([identify_resource(f"t{i}", 200) for i in range(4)])

    assert "destination.customerio.site_id and destination.customerio.api_key" in str(raised.value)
    assert len(emulator.requests) <= 2
    fixed = dlt.pipeline(
        "creds4",
        destination=customerio(
            site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url, max_request_bytes=2_000
        ),
        pipelines_dir=str(tmp_path),
    )
    fixed.run()
    assert len(emulator.people) == 800
