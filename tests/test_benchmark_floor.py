"""The benchmark's kernel floor is an honest one: it writes exactly the operations this destination
writes for the benchmark's rows, and packs them into the bodies greedy packing gives."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.batching import body_of, pack_bounds
from cio_destination.mapper import COLUMNAR_PATH, RowMapper, map_items
from cio_destination.mapping import compile_mapping
from cio_destination.mapping_keys import TableMapping
from tests.benchmarks import data, floor

COLUMNS = {field.name: {"name": field.name} for field in data.ARROW_SCHEMA}
MAPPINGS = {
    "identify": TableMapping(action="identify", identifier="uid", timestamp="updated_at"),
    "event": TableMapping(
        action="event",
        identifier="uid",
        timestamp="updated_at",
        event_name="purchase",
        event_id=["uid", "updated_at"],
    ),
}
WRITERS = {"identify": floor.identify_operations, "event": floor.event_operations}


@pytest.mark.parametrize("action", sorted(MAPPINGS))
def test_floor_writes_the_destinations_operations(action: str) -> None:
    table = data.arrow_table(999_000, 1_001_000)  # across a digit boundary of every number
    mapper = RowMapper(compile_mapping(data.TABLE, MAPPINGS[action], COLUMNS))
    before = COLUMNAR_PATH.rows
    ours = [entry.data for entry in map_items(mapper, table).all_entries()]
    assert COLUMNAR_PATH.rows - before == table.num_rows or not COLUMNAR_PATH.enabled
    written = WRITERS[action](table).view(pa.binary()).to_pylist()
    assert all(operation.endswith(b",") for operation in written)
    assert [operation[:-1] for operation in written] == ours


def test_floor_refuses_data_it_would_have_to_escape() -> None:
    table = data.arrow_table(0, 3)
    names = pa.array(['a "quoted" name', "b", "c"])
    with pytest.raises(ValueError, match="escape"):
        floor.identify_operations(table.set_column(2, "name", names))


@given(
    bounds=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    max_bytes=st.integers(260, 3_000),
)
def test_floor_packs_across_chunks_as_greedy_packing_does(
    bounds: list[int], max_bytes: int
) -> None:
    """Bodies from chunk after chunk are those of packing all operations at once, each fitting."""
    chunks, start = [], 0
    for size in bounds:
        chunks.append(data.arrow_table(start, start + size))
        start += size
    packer = floor.Packer(max_bytes)
    bodies = [body for chunk in chunks for body in packer.bodies(floor.identify_operations(chunk))]
    last = packer.flush()
    if last is not None:
        bodies.append(last)
    entries = [
        operation[:-1]
        for chunk in chunks
        for operation in floor.identify_operations(chunk).view(pa.binary()).to_pylist()
    ]
    expected = [body_of(entries[a:b]) for a, b in pack_bounds([len(e) for e in entries], max_bytes)]
    assert bodies == expected
    assert all(len(body) <= max_bytes for body in bodies)
    assert sum(len(orjson.loads(body)["batch"]) for body in bodies) == start
