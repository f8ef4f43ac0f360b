"""Delivery under load and faults, against the emulator on loopback: rate, latency, retries, kills."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import dlt
import httpx
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from cio_destination import customerio, customerio_adapter, rejected_rows
from cio_destination.emulator import Emulator, Faults
from cio_destination.event_ids import canonical_key, deterministic_ulid
from cio_destination.transport.api import ApiClient
from cio_destination.transport.ratelimit import RateLimiter

from .conftest import API_KEY, SITE_ID
from .in_flight import InFlight
from .kills import kill_after_progress, run_to_completion
from .sync_child import event_rows, person_rows, resources

pytestmark = pytest.mark.slow  # whole dlt pipelines under faults, and kills of child processes


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


@pytest.fixture
def standing_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """No real time passes; returns the clients' waits between attempts, recorded, not slept.

    The rate limiters read a clock that stands at 0, so the wait `acquire` returns is the start
    slot it reserved. For tests about what is delivered, and in what order, never about when."""
    waits: list[float] = []
    client_init, limiter_init = ApiClient.__init__, RateLimiter.__init__

    def client(self: ApiClient, *args: Any, **options: Any) -> None:
        client_init(self, *args, **{**options, "sleep": waits.append})

    def limiter(self: RateLimiter, rate: float, **options: Any) -> None:
        limiter_init(self, rate, **{**options, "clock": lambda: 0.0, "sleep": lambda _: None})

    monkeypatch.setattr(ApiClient, "__init__", client)
    monkeypatch.setattr(RateLimiter, "__init__", limiter)
    return waits


@pytest.mark.usefixtures("standing_time")
def test_one_rate_limit_shared_by_parallel_tables(
    emulator: Emulator, make_pipeline, monkeypatch: pytest.MonkeyPatch
):
    slots: list[float] = []  # the start slot a limiter reserved for each request
    limiters: set[int] = set()
    acquire = RateLimiter.acquire

    def recording(self: RateLimiter) -> float:
        slot = acquire(self)
        limiters.add(id(self))
        slots.append(slot)
        return slot

    monkeypatch.setattr(RateLimiter, "acquire", recording)
    pipeline = make_pipeline(requests_per_second=20, max_request_bytes=2_000)
    tables = [identify_resource(f"t{i}", 300) for i in range(4)]

    pipeline.run(tables)

    # four tables load in parallel, yet one limiter started every request that reached
    # Customer.io, and no second holds more starts than one rate allows
    assert len(limiters) == 1
    assert len(slots) == len(emulator.requests) >= 61  # the preflight and at least 60 batches
    assert busiest(sorted(slots), 1.0) <= 21
    assert len(emulator.people) == 1_200


def test_latency_does_not_cut_throughput(
    emulator: Emulator, make_pipeline, monkeypatch: pytest.MonkeyPatch
):
    """Answers take 200 ms each: requests must overlap, or 100 of them take 20 s. Each batch is
    held until four are in flight at once, which a sender that waits for each answer before its
    next request never reaches."""
    emulator.set_faults(Faults(latency=0.2))
    in_flight = InFlight(4)
    handle = httpx.HTTPTransport.handle_request

    def counted(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/api/v2/batch":
            return handle(self, request)
        with in_flight.request():
            return handle(self, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", counted)
    pipeline = make_pipeline(
        requests_per_second=100, max_request_bytes=1_000, max_concurrent_requests=16
    )

    pipeline.run(identify_resource("people", 1_500))

    assert len(batch_requests(emulator)) >= 100
    assert in_flight.filled  # four requests were in flight at once
    assert in_flight.most <= 16  # and never more than max_concurrent_requests
    assert len(emulator.people) == 1_500


def test_repeated_429s_slow_down_and_the_sync_still_completes(
    emulator: Emulator, make_pipeline, monkeypatch: pytest.MonkeyPatch, standing_time: list[float]
):
    # which requests are refused follows their order of arrival and the seed, not the clock
    emulator.set_faults(Faults(http429_rate=0.3, retry_after=1, seed=429))
    rates: list[float] = []  # the shared rate right after each 429
    throttled = RateLimiter.throttled

    def recording(self: RateLimiter, pause: float = 0.0) -> None:
        throttled(self, pause)
        rates.append(self.rate)

    monkeypatch.setattr(RateLimiter, "throttled", recording)
    pipeline = make_pipeline(requests_per_second=100, max_request_bytes=2_000, max_attempts=10)

    pipeline.run(identify_resource("people", 600))

    statuses = [r.status for r in batch_requests(emulator)]
    refused = sum(r.status == 429 for r in emulator.requests)  # the region check's too
    assert statuses.count(429) > 0
    assert statuses.count(200) >= 30
    # every 429 slowed the one shared rate down, to half or less of the 100 requests a second,
    # and was retried after the second Customer.io asked for
    assert len(rates) == refused
    assert rates[0] == 50 and max(rates) <= 50
    assert len(standing_time) == refused and min(standing_time) >= 1.0
    assert len(emulator.people) == 600
    assert list(rejected_rows(pipeline)) == []


@pytest.mark.usefixtures("standing_time")
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


def test_sigkill_at_random_points_then_rerun_delivers_exactly_once(
    emulator: Emulator, tmp_path: Path
):
    events, people, kills = 25_000, 3_000, 4
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
        # a load of these rows takes about 260 requests: each run is killed mid-load, after
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
