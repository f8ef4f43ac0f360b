from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dlt
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, settings

from cio_destination import customerio
from cio_destination.emulator import Emulator

SITE_ID = "test-site"
API_KEY = "test-key"

# dlt reports usage over the network when a process that ran a pipeline exits; without a network
# each exit waits on its timeouts (seconds per process, minutes per suite). Tests report nothing,
# and the child processes they start inherit this.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

# Property-based tests: a few hundred examples at most locally; .ci/run selects the "ci" profile.
# No deadline: an example's time depends on the machine, never on the code being right.
_PROPERTIES = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=150, **_PROPERTIES)
settings.register_profile("ci", max_examples=2_000, print_blob=True, **_PROPERTIES)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def _shared_emulator() -> Iterator[Emulator]:
    with Emulator(site_id=SITE_ID, api_key=API_KEY, app_api_key="test-app-key") as emulator:
        yield emulator


@pytest.fixture
def emulator(_shared_emulator: Emulator) -> Emulator:
    """A running emulator on loopback, emptied for each test."""
    _shared_emulator.set_faults(None)
    _shared_emulator.reset()
    return _shared_emulator


@pytest.fixture
def make_pipeline(tmp_path: Path, emulator: Emulator):
    """A fresh pipeline into the emulator, isolated in tmp_path."""

    def make(name: str = "to_cio", **destination_args: Any) -> dlt.Pipeline:
        args = {"site_id": SITE_ID, "api_key": API_KEY, "track_url": emulator.url}
        args.update(destination_args)
        return dlt.pipeline(
            name,
            destination=customerio(**args),
            pipelines_dir=str(tmp_path / "pipelines"),
            dev_mode=True,
        )

    return make


def with_region(callback: Callable[[httpx.Request], httpx.Response], region: str = "us"):
    """Wrap a pytest-httpx callback so it also answers the destination's per-load preflight,
    `GET /api/v1/accounts/region`, on any host."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/accounts/region":
            return httpx.Response(
                200, json={"url": str(request.url), "region": region, "environment_id": 1}
            )
        return callback(request)

    return answer


def mapped_outcome(mapped: Any) -> tuple[list, list, list]:
    """What a `Mapped` amounts to, order aside: each entry's bytes, row key and source rows,
    each rejection, and each attribute dropped from a row that is sent. The columnar paths must
    give exactly the row path's outcome."""
    from cio_destination.entries import LazyRow

    entries = sorted(
        (
            e.data,
            e.row_key,
            tuple(
                orjson.dumps(r.materialize() if isinstance(r, LazyRow) else r, default=str)
                for r in e.rows
            ),
        )
        for e in mapped.all_entries()
    )
    rejections, dropped = (
        sorted(
            (r.row_key, r.reason, r.field or "", orjson.dumps(r.row, default=str)) for r in records
        )
        for records in (mapped.rejections, mapped.dropped)
    )
    return entries, rejections, dropped


def small_units(monkeypatch: pytest.MonkeyPatch, unit_rows: int, alone_rows: int) -> list[int]:
    """dlt batches of 50 rows, units of `unit_rows` (`alone_rows` for a table whose units go
    alone), so a few hundred rows make several units; returns the rows of each unit read, in
    order, as the job reads them."""
    from cio_destination import jobs

    monkeypatch.setattr(jobs, "BATCH_ROWS", 50)
    monkeypatch.setattr(jobs, "UNIT_ROWS", unit_rows)
    monkeypatch.setattr(jobs, "ALONE_UNIT_ROWS", alone_rows)
    read: list[int] = []
    units = jobs.JobFile.units

    def counted(self: jobs.JobFile, rows: int, **options: Any) -> Iterator[jobs.Unit]:
        for unit in units(self, rows, **options):
            read.append(unit.rows)
            yield unit

    monkeypatch.setattr(jobs.JobFile, "units", counted)
    return read


def check_small_load_lookup(fingerprints: Any) -> None:
    """A load's rows as Arrow arrays, under a twentieth of the 2,000 hashes kept: looked up unit
    by unit, only the changed row, the one without an identifier and the unknown person map."""
    import pyarrow as pa

    kept_people = {f"u{i}": {"r": i, "a": {}, "s": 10_000 + i} for i in range(2_000)}
    fingerprints.remember("p/people", kept_people)
    kept = fingerprints.kept_sources("p/people")
    identifiers = pa.array([f"u{i}" for i in range(10)] + [None, "u9999"], pa.string())
    hashes = pa.array([10_000 + i + 5 * (i == 3) for i in range(10)] + [1, 2], pa.int64())

    assert kept.changed(identifiers, hashes) == [3, 10, 11]
    assert not kept.bulk  # looked up, not read in bulk
