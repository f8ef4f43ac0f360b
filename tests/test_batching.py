"""Pure tests of cio_destination.batching: request bodies never over the byte limit, order kept."""

from __future__ import annotations

import random
from array import array

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination import limits
from cio_destination.batching import (
    ENVELOPE_BYTES,
    body_of,
    body_size,
    pack,
    pack_bounds,
    pack_bounds_of_ends,
)
from cio_destination.mapper import RowMapper
from cio_destination.mapping import compile_mapping, parse_mapping


def json_entry(size: int, tag: int = 0) -> bytes:
    """A serialized JSON string of exactly `size` bytes (size >= 2)."""
    text = f"{tag}:"
    text = (text + "x" * size)[: size - 2]
    entry = orjson.dumps(text)
    assert len(entry) == size
    return entry


def assert_packed(items: list[bytes], groups: list[list[bytes]], max_bytes: int) -> None:
    # nothing lost, nothing duplicated, order kept
    assert [entry for group in groups for entry in group] == items
    for index, group in enumerate(groups):
        assert group, "no empty group"
        body = body_of(group)
        assert len(body) == body_size([len(e) for e in group])
        if len(group) > 1 or len(group[0]) + ENVELOPE_BYTES <= max_bytes:
            assert len(body) <= max_bytes
        # greedy: the next entry did not fit into this group
        if index + 1 < len(groups):
            with_next = [len(e) for e in group] + [len(groups[index + 1][0])]
            assert body_size(with_next) > max_bytes


def test_body_of_is_valid_batch_json():
    entries = [
        orjson.dumps({"type": "person", "action": "identify", "identifiers": {"id": "1"}}),
        orjson.dumps(
            {"type": "person", "action": "event", "name": "é", "identifiers": {"id": "2"}}
        ),
    ]
    body = body_of(entries)
    assert orjson.loads(body) == {"batch": [orjson.loads(e) for e in entries]}


@pytest.mark.parametrize("count", [0, 1, 2, 10])
def test_body_of_size_matches_body_size(count):
    entries = [json_entry(10 + i, i) for i in range(count)]
    body = body_of(entries)
    assert orjson.loads(body) == {"batch": [orjson.loads(e) for e in entries]}
    assert len(body) == body_size([len(e) for e in entries])


def test_envelope_bytes_is_the_empty_body():
    assert len(body_of([])) == ENVELOPE_BYTES
    assert body_size([]) == ENVELOPE_BYTES


@pytest.mark.parametrize("seed", range(40))
def test_pack_random_sizes_never_over_limit(seed):
    rng = random.Random(seed)
    max_bytes = rng.choice([ENVELOPE_BYTES + 2, 64, 100, 1_000, rng.randint(50, 5_000)])
    largest = max_bytes - ENVELOPE_BYTES
    count = rng.randint(0, 400)
    mode = rng.choice(["small", "large", "mixed"])
    sizes = []
    for _ in range(count):
        if mode == "small":
            sizes.append(rng.randint(2, max(2, largest // 10)))
        elif mode == "large":
            sizes.append(rng.randint(max(2, largest // 2), largest))
        else:
            sizes.append(rng.randint(2, largest))
    items = [json_entry(size, i) for i, size in enumerate(sizes)]
    groups = list(pack(items, sizes, max_bytes))
    assert_packed(items, groups, max_bytes)
    for group in groups:
        assert len(body_of(group)) <= max_bytes
        assert orjson.loads(body_of(group))["batch"] == [orjson.loads(e) for e in group]


def _identify_entries(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    entries = []
    for i in range(count):
        op = {
            "type": "person",
            "action": "identify",
            "identifiers": {"email": f"user{i:06d}@example.com"},
            "attributes": {
                "first_name": "Ann",
                "plan": rng.choice(["free", "pro", "enterprise"]),
                "ltv": round(rng.uniform(0, 1_000), 2),
                "signed_up_at": 1_705_314_600 + i,
                "note": "n" * rng.randint(26, 56),
            },
            "timestamp": 1_705_314_600 + i,
        }
        entries.append(orjson.dumps(op))
    return entries


def test_pack_fills_close_to_the_limit():
    entries = _identify_entries(20_000, seed=7)
    sizes = [len(e) for e in entries]
    assert 230 <= sum(sizes) / len(sizes) <= 270  # identify-like entries of ~250 bytes
    groups = list(pack(entries, sizes, limits.MAX_REQUEST_BYTES))
    # the bytes need ceil(total / limit) bodies; greedy packing may add at most one
    needed = -(-body_size(sizes) // limits.MAX_REQUEST_BYTES)
    assert len(groups) <= needed + 1
    assert len(groups) <= 11
    assert_packed(entries, groups, limits.MAX_REQUEST_BYTES)
    for group in groups[:-1]:
        assert len(body_of(group)) > limits.MAX_REQUEST_BYTES - max(sizes) - 1


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "expected_groups"),
    [
        pytest.param([], 100, [], id="nothing"),
        pytest.param([88], 100, [[0]], id="one-entry-exactly-the-limit"),
        pytest.param([10, 88, 10], 100, [[0], [1], [2]], id="exact-entry-stands-alone"),
        pytest.param([88, 88], 100, [[0], [1]], id="two-exact-entries"),
        pytest.param([43, 44], 100, [[0, 1]], id="two-entries-exactly-the-limit"),
        pytest.param([44, 44], 100, [[0], [1]], id="two-entries-one-byte-over"),
        pytest.param([2] * 29, 100, [list(range(29))], id="many-tiny-exactly-the-limit"),
        pytest.param([2] * 30, 100, [list(range(29)), [29]], id="many-tiny-one-over"),
        pytest.param([10, 200, 10], 100, [[0], [1], [2]], id="oversized-entry-alone"),
    ],
)
def test_pack_boundaries(sizes, max_bytes, expected_groups):
    items = list(range(len(sizes)))
    groups = list(pack(items, sizes, max_bytes))
    assert groups == expected_groups
    for group in groups:
        group_sizes = [sizes[i] for i in group]
        if body_size(group_sizes) > max_bytes:
            assert len(group) == 1  # only an entry too big on its own may exceed the limit


def test_pack_exact_entry_body_is_exactly_the_limit():
    max_bytes = 1_000
    exact = json_entry(max_bytes - ENVELOPE_BYTES, 1)
    items = [json_entry(20, 0), exact, json_entry(20, 2)]
    groups = list(pack(items, [len(e) for e in items], max_bytes))
    assert groups == [[items[0]], [exact], [items[2]]]
    assert len(body_of([exact])) == max_bytes


def test_pack_requires_one_size_per_item():
    with pytest.raises(ValueError):
        list(pack([b"a", b"b"], [1], 100))


def test_pack_entries_from_the_row_mapper():
    table_columns = {
        name: {"name": name, "data_type": "text"} for name in ("id", "name", "plan", "bio")
    }
    mapping = parse_mapping("users", {"action": "identify", "identifier": "id"})
    mapper = RowMapper(compile_mapping("users", mapping, table_columns))
    rng = random.Random(3)
    rows = [
        {"id": i, "name": f"user {i}", "plan": "pro", "bio": "b" * rng.randint(0, 900)}
        for i in range(3_000)
    ]
    mapped = mapper.map_rows(rows)
    assert mapped.rejections == []
    groups = list(pack(mapped.entries, [len(e.data) for e in mapped.entries], 50_000))
    assert [e for g in groups for e in g] == mapped.entries
    for group in groups:
        body = body_of([e.data for e in group])
        assert len(body) <= 50_000
        assert len(orjson.loads(body)["batch"]) == len(group)


@given(
    sizes=st.lists(st.integers(1, 600), max_size=60),
    max_bytes=st.integers(ENVELOPE_BYTES + 1, 2_000),
    base=st.integers(0, 10_000),
)
def test_packing_by_ends_gives_the_ranges_of_packing_by_sizes(
    sizes: list[int], max_bytes: int, base: int
):
    """The binary-search packing of laid-out entries (how blocks are packed) is greedy packing:
    the same ranges for any sizes and limit, entries too large for a body alone included."""
    ends = array("q", [base])
    for size in sizes:
        ends.append(ends[-1] + size + 1)
    view = memoryview(ends)

    assert list(pack_bounds_of_ends(view, max_bytes)) == list(pack_bounds(sizes, max_bytes))
