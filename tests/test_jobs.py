"""A load job's units: finished (recorded, then marked done) in order, and never reordered for
a person. Pure: fake answers, no HTTP, no dlt."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination import jobs
from cio_destination.entries import Entry, EntryBlock, Mapped
from cio_destination.exceptions import CustomerioTransientError
from cio_destination.jobs import InOrder, Unit, identities, mapped_ahead
from cio_destination.mapping import compile_mapping, parse_mapping
from cio_destination.transport.results import SendResult


class Answers:
    """A unit's requests, answered when the test says so."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.answered = False
        self.waited = False
        self.error = error

    def wait_admitted(self) -> None:
        pass

    def done(self) -> bool:
        return self.answered

    def result(self) -> SendResult:
        self.waited = True  # `result()` is where a real unit waits for its answers
        return SendResult(error=self.error)


class Job:
    def __init__(self) -> None:
        self.offset = 0
        self.log: list[str] = []

    def advance(self, rows: int) -> None:
        self.offset += rows
        self.log.append(f"advance {self.offset}")


def names(*keys: str) -> pa.Array:
    return pa.array(keys, pa.string())


def recorder(job: Job, name: str):
    return lambda result: job.log.append(f"record {name}")


def test_units_are_recorded_then_marked_done_in_the_order_they_were_read():
    job = Job()
    order = InOrder(job)
    first, second = Answers(), Answers()
    order.add(100, names("a"), first, recorder(job, "first"))
    order.add(50, names("b"), second, recorder(job, "second"))

    second.answered = True
    order.finish_ready()  # the second is answered, but the first is not: nothing is done yet
    assert job.log == [] and job.offset == 0

    first.answered = True
    order.finish_ready()
    assert job.log == ["record first", "advance 100", "record second", "advance 150"]


def test_a_unit_naming_a_person_in_flight_waits_for_that_unit_and_those_before_it():
    job = Job()
    order = InOrder(job)
    units = [Answers(), Answers(), Answers()]
    for index, (answers, key) in enumerate(zip(units, ["a", "p", "b"], strict=True)):
        order.add(10, names(key), answers, recorder(job, str(index)))

    order.make_way(names("x", "y"))  # nobody in flight: no wait
    assert not any(u.waited for u in units)
    order.make_way(names("p", "z"))  # the second unit has p: it and the first are finished first
    assert [u.waited for u in units] == [True, True, False]
    assert job.offset == 20
    order.make_way(None)  # a table whose units go alone waits for all of them
    assert job.offset == 30


def test_after_a_failure_nothing_later_is_recorded_or_marked_done_and_the_failure_is_raised():
    job = Job()
    order = InOrder(job)
    failure = CustomerioTransientError("Customer.io /api/v2/batch failed 5 times")
    units = [Answers(), Answers(error=failure), Answers()]
    for index, answers in enumerate(units):
        order.add(10, names(str(index)), answers, recorder(job, str(index)))

    with pytest.raises(CustomerioTransientError):
        order.finish_all()

    # the failed unit's rejections and counters are recorded; its rows and the next unit's are
    # replayed by the next attempt, whose requests were all waited for
    assert job.log == ["record 0", "advance 10", "record 1"]
    assert all(u.waited for u in units)
    assert order.failed


def entry(row_key: str, key: str | None = None) -> Entry:
    return Entry(b"{}", row_key, [{}], key)


def test_identities_are_the_row_keys_of_operations_whose_order_matters():
    block = EntryBlock(
        pa.array([b"{}", b"{}"], pa.binary()),
        pa.array(["p1", "p2"]),
        None,
        pa.array([0, 1], pa.int64()),
    )
    mapped = Mapped([entry("p3")], [], 3, block=block)
    assert sorted(identities(mapped).to_pylist()) == ["p1", "p2", "p3"]


def test_events_name_no_one_they_commute_with_any_other_operation():
    events = EntryBlock(
        pa.array([b"{}"], pa.binary()),
        pa.array(["k1"]),
        None,
        pa.array([0], pa.int64()),
        keys=pa.array(["01ARZ3NDEKTSV4RRFFQ69G5FAV"]),
    )
    mapped = Mapped([entry("k2", key="01ARZ3NDEKTSV4RRFFQ69G5FAW")], [], 2, block=events)
    assert len(identities(mapped)) == 0


def test_units_mapped_ahead_come_back_in_order_with_at_most_depth_mapped_ahead():
    started: list[int] = []
    consumed: list[int] = []
    gate = threading.Event()

    def slow_map(unit: Unit) -> int:
        started.append(unit.rows)
        if unit.rows == 1:
            gate.wait(60)  # the first unit maps last: the others must still come after it
        return unit.rows * 10

    units = (Unit(None, n) for n in range(1, 7))
    results = mapped_ahead(units, slow_map, 2)
    first = threading.Thread(target=lambda: consumed.append(next(results)[1]))
    first.start()
    first.join(0.05)
    # while the first unit maps, only the next two are read and mapped, no further
    assert started[:1] == [1] and len(started) <= 3
    gate.set()
    first.join(60)
    consumed.extend(mapped for _, mapped in results)
    assert consumed == [10, 20, 30, 40, 50, 60]


def test_the_next_unit_is_read_on_a_helper_thread_while_the_one_before_maps():
    read_on: list[str] = []
    second_read = threading.Event()
    gate = threading.Event()

    def units() -> Iterator[Unit]:
        for n in range(1, 5):
            read_on.append(threading.current_thread().name)
            if n == 2:
                second_read.set()
            yield Unit(None, n)

    def blocked_map(unit: Unit) -> int:
        if unit.rows == 1:
            gate.wait(60)
        return unit.rows

    results = mapped_ahead(units(), blocked_map, 2)
    consumed: list[int] = []
    first = threading.Thread(target=lambda: consumed.append(next(results)[1]))
    first.start()
    # unit 2 is read while unit 1 still maps, by neither the mapping thread nor the job's
    assert second_read.wait(60) and not gate.is_set()
    gate.set()
    first.join(60)
    consumed.extend(mapped for _, mapped in results)
    assert consumed == [1, 2, 3, 4]
    assert read_on and all(name.startswith("customerio-read") for name in read_on)


def test_a_read_error_reaches_the_job_after_the_units_read_before_it():
    def units() -> Iterator[Unit]:
        yield Unit(None, 1)
        raise OSError("the file is gone")

    results = mapped_ahead(units(), lambda unit: unit.rows, 2)
    assert next(results)[1] == 1
    with pytest.raises(OSError, match="gone"):
        next(results)


def test_a_job_that_stops_early_reads_no_more_than_its_units_ahead():
    read: list[int] = []

    def units() -> Iterator[Unit]:
        for n in range(1, 100):
            read.append(n)
            yield Unit(None, n)

    results = mapped_ahead(units(), lambda unit: unit.rows, 2)
    assert next(results)[1] == 1
    results.close()  # the job stopped (a failure): the helpers stop too
    assert len(read) <= 3


def test_a_mapping_error_reaches_the_job_in_the_units_order():
    def failing(unit: Unit) -> int:
        if unit.rows == 2:
            raise ValueError("unit 2")
        return unit.rows

    results = mapped_ahead((Unit(None, n) for n in range(1, 5)), failing, 2)
    assert next(results)[1] == 1
    with pytest.raises(ValueError, match="unit 2"):
        next(results)


class Queued(Answers):
    """A unit whose requests wait for room in the window until the test admits them."""

    def __init__(self, requests: int, log: list[str], name: str) -> None:
        super().__init__()
        self.left = requests
        self.log = log
        self.name = name

    def waiting(self) -> int:
        return self.left

    def wait_admitted(self) -> None:
        self.log.append(f"waited for {self.name}")
        self.left = 0  # the pool admits a unit's requests before any later unit's


def test_a_job_goes_on_while_at_most_queued_requests_wait_for_room_in_the_window(
    monkeypatch: pytest.MonkeyPatch,
):
    """Up to QUEUED_REQUESTS of a job's requests may wait for the window (so one is ready while
    the job records a unit); beyond that the job waits, for its oldest units first."""
    monkeypatch.setattr(jobs, "QUEUED_REQUESTS", 10)
    job, log = Job(), []
    order = InOrder(job)
    for name, requests in (("0", 4), ("1", 5)):
        order.add(1, names(name), Queued(requests, log, name), recorder(job, name))
    order.wait_admitted()
    assert log == []  # 9 waiting: the job maps and sends its next unit at once

    order.add(1, names("2"), Queued(5, log, "2"), recorder(job, "2"))
    order.wait_admitted()
    assert log == ["waited for 0"]  # 14 waiting: down to 10 once the oldest unit is admitted


@given(
    units=st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "ü", "ab", ""]), max_size=4)),
    new=st.lists(st.sampled_from(["a", "c", "e", "ü", "zz", "", "b"]), max_size=4),
)
def test_make_way_finishes_exactly_up_to_the_last_unit_naming_one_of_the_new_names(
    units: list[list[str]], new: list[str]
):
    """The spans and Arrow's lookup (the fast path) finish what a plain set comparison says."""
    job = Job()
    order = InOrder(job)
    for index, unit in enumerate(units):
        order.add(1, names(*unit), Answers(), recorder(job, str(index)))

    order.make_way(names(*new))

    naming = [i for i, unit in enumerate(units) if set(unit) & set(new)]
    assert job.offset == (naming[-1] + 1 if naming else 0)


@pytest.mark.parametrize(
    ("declared", "arrow", "ahead"),
    [
        ({}, True, jobs.MAP_AHEAD),  # read and mapped ahead on two helpers
        ({}, False, 1),  # dicts: reading ahead overlaps nothing and holds 10,000 dicts more
        # each unit diffed after the earlier units' answers, its rows read and hashed ahead
        ({"changes_only": True}, True, jobs.HASH_AHEAD),
        ({"changes_only": True}, False, 0),  # dicts: no source hash to make ahead
        ({"mirror": "delete"}, True, 0),  # a mirror's units wait, and have nothing to do ahead
    ],
)
def test_units_ahead_by_rows_and_table(declared: dict, arrow: bool, ahead: int):
    columns = {"uid": {"name": "uid", "data_type": "text"}}
    declared = {"action": "identify", "identifier": "uid", **declared}
    compiled = compile_mapping("people", parse_mapping("people", declared), columns)
    assert jobs.units_ahead(compiled, arrow) == ahead


@given(
    values=st.lists(st.none() | st.sampled_from(["", "a", "ab", "b", "ü", "zz"]), max_size=8),
    in_order=st.booleans(),
)
def test_span_of_names_in_order_is_their_first_and_last_as_min_max_says(
    values: list[str | None], in_order: bool
):
    if in_order:
        values = sorted(value for value in values if value is not None)
    present = [value for value in values if value is not None]
    expected = (min(present), max(present)) if present else None
    fast_way = len(values) > 1 and None not in values and values == sorted(values)

    with pytest.MonkeyPatch.context() as patch:
        if fast_way:  # then Arrow's min_max is not needed, and not called
            patch.setattr(jobs.pc, "min_max", None)
        assert jobs.span(pa.array(values, pa.string())) == expected


@pytest.mark.parametrize(("size", "deep"), [(10, 6), (50, 2), (1_000, 1)])
def test_units_hashed_ahead_are_as_many_as_fit_in_the_bytes_given(size: int, deep: int):
    """A wide table's units (2 KB rows: 100 MB a unit of 50,000) are not held six ahead: as
    many as the last unit's size fits in `most_bytes`, at least one, at most the depth."""
    assert jobs._fitting(Unit(SimpleNamespace(nbytes=size), 1), 6, 100) == deep
    consumed: list[int] = []
    leads: list[int] = []
    reached = threading.Event()

    def units() -> Iterator[Unit]:
        for n in range(1, 13):
            leads.append(n - len(consumed))  # units read beyond those the job took
            if n == 1 + deep:
                reached.set()
            yield Unit(SimpleNamespace(nbytes=size), n)

    results = mapped_ahead(units(), lambda unit: unit.rows, 6, most_bytes=100)
    consumed.append(next(results)[1])
    assert reached.wait(60)  # it goes `deep` ahead of the unit the job holds ...
    consumed.extend(mapped for _, mapped in results)
    assert consumed == list(range(1, 13))
    assert max(leads) <= deep + 1  # ... and never further
