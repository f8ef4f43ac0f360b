"""A run that may no longer hold its pipeline's lease in `state_url` stops sending
(`cio_destination.restore.check_lease`): another run took the lease over, or no heartbeat of
this run reached the database within `lease_timeout`, after which another run may take it.

The clock the lease reads is replaced here (`time.monotonic` in `cio_destination.restore`), so
nothing waits: the heartbeat thread, which beats every quarter of the timeout, never beats
within a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from cio_destination import LeaseLostError, PipelineLeaseError
from cio_destination.restore import check_lease, hold_lease, release_leases
from cio_destination.state import TABLES, PipelineState
from cio_destination.state.backend import SqlStore

TIMEOUT = 3600.0
RUN = "/pipelines/leased"  # the working directory of the run that holds the lease


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr("cio_destination.restore.time.monotonic", made)
    return made


@pytest.fixture
def state(tmp_path: Path, clock: Clock) -> Iterator[PipelineState]:
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}", None, TABLES, "state_url")
    held = PipelineState(store, "leased")
    config = SimpleNamespace(dry_run=False, lease_timeout=TIMEOUT)
    hold_lease(held, config, RUN)  # type: ignore[arg-type]
    yield held
    release_leases(RUN)
    store.close()


def take_over(state: PipelineState) -> None:
    """What another run does once this run's heartbeat looks older than its timeout."""
    with state.store.transaction() as tx:
        tx.execute("UPDATE {cio_leases} SET heartbeat_at = 0 WHERE pipeline_name = ?", ["leased"])
    assert state.runs.take_lease("other", "host-b", 2, TIMEOUT).holder == "other"


def test_a_lease_taken_over_stops_the_run_at_the_next_check_that_asks(state: PipelineState):
    check_lease(state, RUN, confirm=True)  # its own: nothing raised
    take_over(state)

    with pytest.raises(LeaseLostError, match="'leased' lost its lease") as lost:
        check_lease(state, RUN, confirm=True)
    assert isinstance(lost.value, PipelineLeaseError)  # the shipped pipelines exit 1 for both
    with pytest.raises(LeaseLostError):  # once lost, lost: no need to ask again
        check_lease(state, RUN)


def test_a_unit_asks_the_database_only_once_the_last_beat_is_half_a_timeout_old(
    state: PipelineState, clock: Clock
):
    take_over(state)
    clock.now += TIMEOUT / 2 - 1
    check_lease(state, RUN)  # a recent beat found it its own: no round trip per unit
    clock.now += 2
    with pytest.raises(LeaseLostError):
        check_lease(state, RUN)  # the beat it asks for now finds another holder


def test_a_failing_heartbeat_keeps_the_lease_only_within_the_timeout(
    state: PipelineState, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    def unreachable(holder: str) -> bool:
        raise OSError("database unreachable")

    monkeypatch.setattr(state.runs, "beat", unreachable)
    clock.now += TIMEOUT - 1
    check_lease(state, RUN)  # nobody can have taken it over yet
    clock.now += 2
    with pytest.raises(LeaseLostError):  # another run may have: stop rather than send twice
        check_lease(state, RUN)


def test_without_a_lease_there_is_nothing_to_check(tmp_path: Path):
    store = SqlStore(f"sqlite:///{tmp_path / 'state.db'}", None, TABLES, "state_url")
    try:
        check_lease(PipelineState(store, "never-leased"), RUN, confirm=True)
    finally:
        store.close()


def test_a_second_run_of_the_pipeline_in_the_same_process_from_another_directory_is_refused(
    state: PipelineState,
):
    config = SimpleNamespace(dry_run=False, lease_timeout=TIMEOUT)
    with pytest.raises(PipelineLeaseError, match="'leased' is already running"):
        hold_lease(state, config, "/other-runner/leased")  # type: ignore[arg-type]
    hold_lease(state, config, RUN)  # the run that holds it may ask again
    release_leases("/other-runner/leased")  # holds nothing: gives back nothing
    check_lease(state, RUN, confirm=True)
