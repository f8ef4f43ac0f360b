"""EntryBlock: operations kept in Arrow behave as the list of entries they stand for."""

from __future__ import annotations

import random
from array import array

import httpx
import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pytest_httpx import HTTPXMock

from cio_destination.batching import body_of
from cio_destination.entries import Entry, EntryBlock, LazyRow, pack_entries, request_body
from cio_destination.framing import texts_layout
from cio_destination.mapper import COLUMNAR_PATH, RowMapper, map_items
from cio_destination.mapping import compile_mapping, parse_mapping
from cio_destination.report import batch_id
from cio_destination.transport.api import RetryPolicy
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.sender import Sender
from cio_destination.transport.track import TrackClient


def people(count: int, start: int = 0) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [
            {"uid": f"u-{i}", "plan": ["free", "pro", None][i % 3], "logins": i}
            for i in range(start, start + count)
        ]
    )


def block_of(batch: pa.RecordBatch) -> EntryBlock:
    columns = {name: {"name": name} for name in batch.schema.names}
    mapping = parse_mapping("people", {"action": "identify", "identifier": "uid"})
    mapped = map_items(RowMapper(compile_mapping("people", mapping, columns)), batch)
    assert mapped.block is not None and not mapped.entries and not mapped.rejections
    return mapped.block


def test_entries_of_a_block_are_the_operations_and_rows_of_the_batch():
    batch = people(5)
    block = block_of(batch)

    entries = list(block)

    assert len(block) == 5
    assert [e.row_key for e in entries] == [f"u-{i}" for i in range(5)]
    assert orjson.loads(entries[1].data) == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "u-1"},
        "attributes": {"plan": "pro", "logins": 1},
    }
    assert isinstance(entries[2].rows[0], LazyRow)
    assert entries[2].rows[0].materialize() == {"uid": "u-2", "logins": 2}
    assert block[-1].row_key == "u-4"
    with pytest.raises(IndexError):
        block[5]


def test_a_slice_of_a_block_is_a_block_of_those_entries():
    block = block_of(people(10))

    part = block[3:7]

    assert isinstance(part, EntryBlock)
    assert [e.row_key for e in part] == ["u-3", "u-4", "u-5", "u-6"]
    assert part[0].rows[0].materialize()["uid"] == "u-3"
    assert [e.row_key for e in block[::4]] == ["u-0", "u-4", "u-8"]
    assert len(block[8:100]) == 2 and len(block[7:3]) == 0


def test_body_sizes_and_keys_equal_those_of_the_entries():
    block = block_of(people(50))[5:45]
    entries = list(block)

    assert request_body(block) == body_of([e.data for e in entries])
    assert block.sizes() == [len(e.data) for e in entries]
    assert tuple(map(bytes, block.key_layout())) == texts_layout(e.row_key for e in entries)
    assert bytes(block.size_bytes()) == array("q", (len(e.data) for e in entries)).tobytes()
    assert batch_id([block], [], None) == batch_id([entries], [], None)
    assert request_body(block[0:0]) == body_of([])


@pytest.mark.parametrize("max_bytes", [300, 1_000, 4_096, 500_000])
def test_packing_a_block_gives_the_same_groups_as_its_entries(max_bytes: int):
    block = block_of(people(400))

    groups = pack_entries(block, max_bytes)
    listed = pack_entries(list(block), max_bytes)

    assert [request_body(g) for g in groups] == [request_body(g) for g in listed]
    assert all(len(request_body(g)) <= max_bytes for g in groups)
    assert sum(len(g) for g in groups) == 400


def test_a_block_sent_into_a_400_is_narrowed_to_the_entry_customerio_refuses(
    httpx_mock: HTTPXMock,
):
    def answer(request: httpx.Request) -> httpx.Response:
        ids = [op["identifiers"]["id"] for op in orjson.loads(request.content)["batch"]]
        if "u-13" in ids:
            return httpx.Response(400, json={"errors": [{"reason": "bad", "field": "x"}]})
        return httpx.Response(200, json={})

    httpx_mock.add_callback(answer, is_reusable=True)
    limiter = RateLimiter(1_000, sleep=lambda _: None)
    client = TrackClient(
        "https://track.customer.io",
        "site",
        "key",
        limiter=limiter,
        retry=RetryPolicy(),
        sleep=lambda _: None,
        rng=random.Random(1),
    )
    sender = Sender(client, max_in_flight=2, max_request_bytes=2_000)
    block = block_of(people(40))

    result = sender.send_parts([block])

    assert [(r.row_key, r.reason, r.row) for r in result.rejections] == [
        ("u-13", "bad", {"uid": "u-13", "plan": "pro", "logins": 13})
    ]
    assert result.stats.accepted == 39
    delivered = [e.row_key for e in result.delivered_entries()]
    assert sorted(delivered) == sorted(f"u-{i}" for i in range(40) if i != 13)
    sender.close()


@given(
    values=st.lists(
        st.tuples(st.sampled_from(["u-1", "u-2", ""]) | st.text(max_size=6), st.text(max_size=8)),
        min_size=1,
        max_size=40,
    ),
    cut=st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_a_block_body_is_one_copy_of_its_entries_as_a_list_would_be_written(
    values: list[tuple[str, str]], cut: tuple[int, int]
):
    """Operations lie in the block's buffer with their commas: any slice's body, sizes and
    entries are those of the same entries written one by one (rows the row path decides too)."""
    batch = pa.RecordBatch.from_pylist([{"uid": uid, "plan": plan} for uid, plan in values])
    columns = {name: {"name": name} for name in batch.schema.names}
    mapping = parse_mapping("people", {"action": "identify", "identifier": "uid"})
    before = COLUMNAR_PATH.rows
    mapped = map_items(RowMapper(compile_mapping("people", mapping, columns)), batch)
    if mapped.block is None:
        return  # every row went through the row path: no block to compare
    assert COLUMNAR_PATH.rows - before == len(mapped.block)  # the columnar path wrote them
    part = mapped.block[min(cut) : max(cut)]
    entries = [Entry(e.data, e.row_key, e.rows) for e in part]
    assert isinstance(part, EntryBlock)
    assert request_body(part) == body_of([e.data for e in entries])
    assert part.sizes() == [len(e.data) for e in entries]
    assert all(not e.data.endswith(b",") and orjson.loads(e.data) for e in entries)
    assert [request_body(g) for g in pack_entries(part, 300)] == [
        request_body(g) for g in pack_entries(entries, 300)
    ]
