"""Bodies filled across a job's units: a unit's last, part-filled body waits for the next unit's
first operations, and a unit counts as answered only once every request holding its rows is.

Pure packing (hypothesis: packed unit by unit with the carry, the bodies are those of the whole
sequence packed at once), then the sender with a fake Track client whose answers the test
releases, and `InOrder` recording the units in order.
"""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from collections.abc import Sequence

import httpx
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.batching import body_of, pack_bounds
from cio_destination.entries import (
    Entry,
    EntryBlock,
    JoinedEntries,
    pack_across,
    request_body,
    request_chunks,
)
from cio_destination.exceptions import CustomerioTransientError
from cio_destination.jobs import InOrder
from cio_destination.transport.api import unbound
from cio_destination.transport.results import SendResult
from cio_destination.transport.sender import Carry, Sender

from .test_jobs import Job


def operation(name: str, size: int) -> bytes:
    """A JSON operation of exactly `size` bytes (size >= 12) naming `name`."""
    head = b'{"k":"' + name.encode() + b'","p":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def entries_of(names: list[str], sizes: list[int]) -> list[Entry]:
    return [Entry(operation(n, s), n, [{"n": n}]) for n, s in zip(names, sizes, strict=True)]


def block_of(entries: list[Entry]) -> EntryBlock:
    """The entries as a block: each operation written with the comma that follows it."""
    return EntryBlock(
        pa.array([e.data + b"," for e in entries], pa.binary()),
        pa.array([e.row_key for e in entries]),
        None,
        pa.array(range(len(entries)), pa.int64()),
        source_rows=[{"n": e.row_key} for e in entries],
    )


def keys(entries: Sequence[Entry]) -> list[str]:
    return [e.row_key for e in entries]


def body_bytes(entries: Sequence[Entry]) -> bytes:
    chunks = request_chunks(entries)
    return chunks if isinstance(chunks, bytes) else b"".join(bytes(c) for c in chunks)


@given(
    sizes=st.lists(st.integers(20, 400), min_size=1, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    blocks=st.lists(st.booleans(), min_size=20, max_size=20),
    max_bytes=st.integers(60, 1_500),
)
def test_units_packed_with_the_carry_give_the_bodies_of_the_whole_table_packed_at_once(
    sizes: list[int], cuts: list[int], blocks: list[bool], max_bytes: int
):
    """Whatever the units (and a unit's parts: a block and a list of row-path entries), the
    groups are those of packing every operation as one sequence, and each body is written as
    the list of its entries would be, streamed in pieces or whole."""
    names = [f"r{i}" for i in range(len(sizes))]
    every = entries_of(names, sizes)
    bounds = sorted({0, len(every), *(c for c in cuts if c < len(every))})
    parts = [every[a:b] for a, b in itertools.pairwise(bounds)]
    units = [parts[i : i + 2] for i in range(0, len(parts), 2)]  # two parts a unit

    groups: list[Sequence[Entry]] = []
    held: Sequence[Entry] = []
    turn = 0
    for unit in units:
        shaped = []
        for part in unit:
            shaped.append(block_of(part) if blocks[turn % len(blocks)] else part)
            turn += 1
        full, held = pack_across(held, shaped, max_bytes)
        groups.extend(full)
    if len(held):
        groups.append(held)

    expected = [names[a:b] for a, b in pack_bounds(sizes, max_bytes)]
    assert [keys(g) for g in groups] == expected
    for group in groups:
        assert request_body(group) == body_of([e.data for e in group])
        assert body_bytes(group) == request_body(group)


@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    start=st.integers(-30, 30),
    stop=st.integers(-30, 30),
)
def test_joined_entries_read_as_the_list_of_their_pieces(lengths: list[int], start: int, stop: int):
    pieces: list[Sequence[Entry]] = []
    flat: list[Entry] = []
    for index, length in enumerate(lengths):
        part = entries_of([f"p{index}-{i}" for i in range(length)], [20] * length)
        flat += part
        pieces.append(block_of(part) if index % 2 else part)
    joined = JoinedEntries(pieces)

    assert len(joined) == len(flat)
    assert keys(joined) == keys(flat)
    assert keys(joined[start:stop]) == keys(flat[start:stop])
    for index in range(-len(flat), len(flat)):
        assert joined[index].row_key == flat[index].row_key
    with pytest.raises(IndexError):
        joined[len(flat)]


class Client:
    """A Track client whose requests are answered when the test says so."""

    class Limiter:
        rate = 100.0

    def __init__(self) -> None:
        self.limiter = self.Limiter()
        self.requests: list[list[str]] = []
        self.failing: set[str] = set()  # a request holding one of these row keys fails
        self._open: set[int] = {0}  # the first request goes alone: answered at once
        self._changed = threading.Condition()

    def send_batch(self, entries: Sequence[Entry]) -> SendResult:
        with self._changed:
            number = len(self.requests)
            self.requests.append(keys(entries))
            self._changed.notify_all()
            self._changed.wait_for(lambda: number in self._open, timeout=60)
        if self.failing & set(keys(entries)):
            raise CustomerioTransientError("Customer.io /api/v2/batch failed 5 times")
        result = SendResult()
        result.stats.requests = 1
        result.stats.accepted = len(entries)
        result.delivered.append(entries)
        return result

    def answer(self, *numbers: int) -> None:
        """Let requests `numbers` (counted from 0, in the order they came) be answered."""
        with self._changed:
            self._open.update(numbers)
            self._changed.notify_all()

    def arrived(self, count: int) -> list[list[str]]:
        """The row keys of each request, once `count` requests came."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.requests) >= count, timeout=60)
            return list(self.requests)

    def close(self) -> None:
        pass


def two_units(client: Client) -> tuple[Sender, Carry, list[Entry], list[Entry]]:
    """Bodies of at most 3 operations; unit 0 has 4 (one body and one part-filled), unit 1 has
    5: its first body holds unit 0's last operation and its own first two."""
    sender = Sender(client, max_in_flight=8, max_request_bytes=3 * 100 + 2 + 12)
    first = entries_of([f"a{i}" for i in range(4)], [100] * 4)
    second = entries_of([f"b{i}" for i in range(5)], [100] * 5)
    return sender, Carry(), first, second


def test_a_request_holds_rows_of_two_units_and_the_first_is_answered_only_with_it():
    client = Client()
    sender, carry, first, second = two_units(client)
    job = Job()
    order = InOrder(job)

    unit_0 = sender.start([block_of(first)], carry)
    order.add(4, pa.array([], pa.string()), unit_0, lambda r: job.log.append("record 0"))
    unit_1 = sender.start([second], carry)
    order.add(5, pa.array([], pa.string()), unit_1, lambda r: job.log.append("record 1"))
    assert client.arrived(2) == [["a0", "a1", "a2"], ["a3", "b0", "b1"]]

    order.finish_ready()
    assert not unit_0.done()  # its last row rides in request 1, not answered yet
    assert job.log == []

    client.answer(1, 2)
    order.make_way(pa.array(["nobody"]))
    order.finish_all()  # unit 1's last body (b2..b4) is held back until it is waited for
    assert client.requests[2] == ["b2", "b3", "b4"]
    assert job.log == ["record 0", "advance 4", "record 1", "advance 9"]
    assert unit_0.result().stats.accepted == 3  # the shared request is unit 1's to count
    assert unit_1.result().stats.accepted == 6
    assert unit_1.result().stats.requests == 2
    sender.close()


def test_the_jobs_last_held_body_goes_before_the_earlier_units_are_answered():
    """At the end of the file the last, part-filled body is sent at once: held until its unit
    is waited for, it would start only after every earlier unit's answers, a round trip late."""
    client = Client()
    sender, carry, first, second = two_units(client)
    job = Job()
    order = InOrder(job, carry)
    order.add(4, pa.array([], pa.string()), sender.start([block_of(first)], carry), lambda r: None)
    order.add(5, pa.array([], pa.string()), sender.start([second], carry), lambda r: None)
    finishing = threading.Thread(target=order.finish_all)
    finishing.start()
    try:
        arrived = client.arrived(3)  # request 1 (unit 0's last row, unit 1's first) unanswered
    finally:
        client.answer(1, 2)
        finishing.join(60)

    assert arrived[2] == ["b2", "b3", "b4"]
    assert job.log == ["advance 4", "advance 9"]
    sender.close()


def test_a_failed_request_holding_rows_of_two_units_replays_both():
    client = Client()
    client.failing = {"b0"}
    sender, carry, first, second = two_units(client)
    job = Job()
    order = InOrder(job)
    unit_0 = sender.start([first], carry)
    order.add(4, pa.array([], pa.string()), unit_0, lambda r: job.log.append("record 0"))
    unit_1 = sender.start([block_of(second)], carry)
    order.add(5, pa.array([], pa.string()), unit_1, lambda r: job.log.append("record 1"))
    client.answer(1, 2)

    with pytest.raises(CustomerioTransientError):
        order.finish_all()

    # unit 0 is recorded (its rejections, its counters) but not marked done: both are replayed
    assert job.log == ["record 0"]
    assert job.offset == 0
    assert isinstance(unit_0.result().error, CustomerioTransientError)
    sender.close()


def test_rows_held_back_go_alone_when_their_unit_is_waited_for():
    client = Client()
    sender, carry, first, _ = two_units(client)
    unit_0 = sender.start([block_of(first)], carry)
    client.answer(1, 2)

    result = unit_0.result()  # no later unit came: its held-back row goes now

    assert client.requests == [["a0", "a1", "a2"], ["a3"]]
    assert result.stats.accepted == 4 and result.error is None
    sender.close()


def test_units_smaller_than_a_body_share_it_and_wait_for_it_together():
    client = Client()
    sender = Sender(client, max_in_flight=8, max_request_bytes=1_000)
    carry = Carry()
    small = [entries_of([f"u{u}-{i}" for i in range(2)], [100] * 2) for u in range(3)]
    units = [sender.start([entries], carry) for entries in small]
    assert client.requests == []  # all six operations fit one body: nothing sent yet
    assert not any(unit.done() for unit in units)

    results = [unit.result() for unit in units]

    assert client.requests == [[f"u{u}-{i}" for u in range(3) for i in range(2)]]
    assert [r.stats.accepted for r in results] == [0, 0, 6]  # the newest counts the request
    assert all(unit.done() for unit in units)
    sender.close()


def test_a_response_is_freed_without_waiting_for_the_cyclic_collector():
    """httpx's response and its stream point at each other, so a response (and its request's
    body of up to 500 KB) stayed in memory until the cyclic collector ran: at 100 requests a
    second, hundreds of bodies. `unbound` breaks the cycle."""
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    gc.disable()
    try:
        response = client.post("https://track.customer.io/api/v2/batch", content=b"{}")
        bound = weakref.ref(response)
        del response
        assert bound() is not None  # the cycle keeps it

        response = unbound(client.post("https://track.customer.io/api/v2/batch", content=b"{}"))
        assert response.content == b""
        freed = weakref.ref(response)
        del response
        assert freed() is None
    finally:
        gc.enable()
        client.close()
