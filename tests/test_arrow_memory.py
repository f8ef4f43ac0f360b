"""The load step's Arrow buffers come from the system allocator, and only while it runs.

Its effect on memory is a benchmark figure (`python -m tests.benchmarks --only latency`: peak
memory at 500 ms); these tests assert the switch itself: taken by every load job, shared by
concurrent jobs, given back after the last, left alone when the user chose an allocator; and
when freed pages go back (every third unit, while many units are held)."""

from __future__ import annotations

import itertools
import threading

import dlt
import pyarrow as pa
import pytest

from cio_destination import arrow_memory, destination, jobs
from cio_destination.adapter import customerio_adapter
from cio_destination.transport.results import SendResult


def test_a_load_job_maps_from_the_system_pool_and_gives_the_pool_back(
    make_pipeline, emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool().backend_name
    seen: list[str] = []
    original = destination.map_items

    def watched(*args, **kwargs):
        seen.append(pa.default_memory_pool().backend_name)
        return original(*args, **kwargs)

    monkeypatch.setattr(destination, "map_items", watched)
    rows = pa.table({"id": [f"p{i}" for i in range(50)], "plan": ["pro"] * 50})
    people = customerio_adapter(
        dlt.resource(rows, name="people"), action="identify", identifier="id"
    )
    make_pipeline().run(people)
    assert len(emulator.people) == 50
    assert seen and set(seen) == {"system"}
    assert pa.default_memory_pool().backend_name == before


def test_concurrent_jobs_share_the_switch_and_the_last_one_out_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool().backend_name
    entered, first_left, second_done = threading.Event(), threading.Event(), threading.Event()
    during: list[str] = []

    def second_job() -> None:
        with arrow_memory.load_step_pool():
            entered.set()
            first_left.wait()
            during.append(pa.default_memory_pool().backend_name)
        second_done.set()

    with arrow_memory.load_step_pool():
        thread = threading.Thread(target=second_job)
        thread.start()
        entered.wait()
    first_left.set()  # the first job is out, the second still in
    thread.join()
    assert during == ["system"]
    assert second_done.is_set()
    assert pa.default_memory_pool().backend_name == before


def test_an_allocator_the_user_chose_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    before = pa.default_memory_pool()
    with arrow_memory.load_step_pool():
        assert pa.default_memory_pool().backend_name == before.backend_name
    assert pa.default_memory_pool().backend_name == before.backend_name


def test_a_job_that_fails_still_gives_the_pool_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool().backend_name
    with pytest.raises(RuntimeError), arrow_memory.load_step_pool():
        raise RuntimeError("the job failed")
    assert pa.default_memory_pool().backend_name == before


class CountingPool:
    released = 0

    def release_unused(self) -> None:
        self.released += 1


def finish_units(units: int, held: int) -> None:
    """`units` units finished, one at a time, while `held` units (each included) are held."""
    for _ in range(held - 1):
        arrow_memory.unit_held()
    for _ in range(units):
        arrow_memory.unit_held()
        arrow_memory.unit_done()
    for _ in range(held - 1):
        arrow_memory.unit_done()


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> CountingPool:
    pool = CountingPool()
    monkeypatch.setattr(arrow_memory, "_releases", itertools.count(1))
    monkeypatch.setattr(arrow_memory, "_held", 0)
    monkeypatch.setattr(arrow_memory.pa, "default_memory_pool", lambda: pool)
    return pool


def test_freed_pages_go_back_on_every_third_unit_finished_while_many_are_held(
    pool: CountingPool,
) -> None:
    held = arrow_memory.RELEASE_WHEN_HELD
    finish_units(arrow_memory.RELEASE_EVERY * 4 - 1, held)
    assert pool.released == 3
    finish_units(1, held)
    assert pool.released == 4


def test_freed_pages_stay_while_few_units_are_held(pool: CountingPool) -> None:
    finish_units(arrow_memory.RELEASE_EVERY * 10, arrow_memory.RELEASE_WHEN_HELD - 1)
    assert pool.released == 0
    assert arrow_memory._held == 0


def test_a_job_counts_each_unit_it_holds_until_it_is_finished(pool: CountingPool) -> None:
    finished: list[int] = []

    class Job:
        def advance(self, rows: int) -> None:
            finished.append(rows)

    order = jobs.InOrder(Job())  # type: ignore[arg-type]
    for rows in range(1, arrow_memory.RELEASE_WHEN_HELD + 3):
        order.add(rows, pa.array(["a"]), jobs.Answered(SendResult()), lambda result: None)
    assert arrow_memory._held == arrow_memory.RELEASE_WHEN_HELD + 2
    order.finish_all()
    assert finished == list(range(1, arrow_memory.RELEASE_WHEN_HELD + 3))
    assert arrow_memory._held == 0
    assert pool.released == 1  # the units finished while at least RELEASE_WHEN_HELD were held


def test_a_unit_whose_recording_fails_is_still_counted_out(pool: CountingPool) -> None:
    def fail(result: SendResult) -> None:
        raise RuntimeError("the state store is gone")

    order = jobs.InOrder(object())  # type: ignore[arg-type]
    order.add(1, pa.array(["a"]), jobs.Answered(SendResult()), fail)
    with pytest.raises(RuntimeError):
        order.finish_all()
    assert arrow_memory._held == 0
