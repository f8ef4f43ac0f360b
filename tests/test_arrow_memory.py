"""The load step's Arrow buffers come from the system allocator, and only while it runs.

Its effect on memory is a benchmark figure (`python -m tests.benchmarks --only latency`: peak
memory at 500 ms); these tests assert the switch itself: taken by every load job, shared by
concurrent jobs, given back after the last, left alone when the user chose an allocator."""

from __future__ import annotations

import itertools
import threading

import dlt
import pyarrow as pa
import pytest

from cio_destination import arrow_memory, destination
from cio_destination.adapter import customerio_adapter


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


def test_freed_pages_go_back_on_every_third_finished_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    class Pool:
        released = 0

        def release_unused(self) -> None:
            self.released += 1

    pool = Pool()
    monkeypatch.setattr(arrow_memory, "_releases", itertools.count(1))
    monkeypatch.setattr(arrow_memory.pa, "default_memory_pool", lambda: pool)
    for _ in range(arrow_memory.RELEASE_EVERY * 4 - 1):
        arrow_memory.release_unused()
    assert pool.released == 3
    arrow_memory.release_unused()
    assert pool.released == 4
