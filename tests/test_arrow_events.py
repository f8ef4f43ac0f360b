"""The columnar event / page / screen path gives what the row path gives, event ids above all:
a rerun that takes the other path must produce the same ids, or Customer.io keeps both events."""

from __future__ import annotations

import datetime as dt
import random

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.arrow_json import join_pieces, joined_sizes
from cio_destination.entries import rows_from_arrow
from cio_destination.event_ids import canonical_key, deterministic_ulid
from cio_destination.limits import MAX_EVENT_DATA_BYTES
from cio_destination.mapper import RowMapper, map_items
from cio_destination.mapping import compile_mapping, parse_mapping

from .conftest import mapped_outcome as outcome

UTC = dt.timezone.utc
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))
TEXTS = ["plain", "Person 7", "ünïcødé ✓", 'quo"te', "back\\slash", "tab\tand\nnewline", ""]
NAMES = ["purchase", "signed_up", "page view", "  ", "", None, "n" * 101, 'say "hi"']

SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("event", pa.string()),
        ("order_id", pa.int64()),
        ("sku", pa.string()),
        ("at_us", pa.timestamp("us", tz="UTC")),
        ("at_ms", pa.timestamp("ms")),
        ("at_s", pa.timestamp("s", tz="+02:00")),
        ("day", pa.date32()),
        ("amount", pa.float64()),
        ("gift", pa.bool_()),
        ("note", pa.string()),
    ]
)


def event_rows(rng: random.Random, count: int, nulls: bool) -> list[dict]:
    def maybe(value):
        return None if nulls and rng.random() < 0.25 else value

    rows = []
    for i in range(count):
        rows.append(
            {
                "uid": f"u-{i % 50}" if rng.random() > 0.02 else rng.choice(["", None, " "]),
                "event": rng.choice(NAMES) if rng.random() < 0.1 else "purchase",
                "order_id": maybe(rng.choice([i, -i, 2**62, 0])),
                "sku": maybe(rng.choice(TEXTS)),
                "at_us": maybe(
                    dt.datetime(2024, 3, 1, tzinfo=UTC)
                    + dt.timedelta(microseconds=rng.choice([0, 1, 999_999, 123_456]))
                    + dt.timedelta(seconds=rng.randint(0, 10**8))
                ),
                "at_ms": maybe(
                    dt.datetime(1999, 12, 31, 23, 59, 59)
                    + dt.timedelta(milliseconds=rng.randint(-(10**12), 10**12))
                ),
                "at_s": maybe(dt.datetime(2024, 1, 1, tzinfo=PLUS_TWO) + dt.timedelta(seconds=i)),
                "day": maybe(dt.date(1970, 1, 1) + dt.timedelta(days=rng.randint(0, 40_000))),
                "amount": maybe(
                    rng.choice([0.0, -0.0, 19.99, 2.0, 1e16, 2.0**60, 1e-7, rng.uniform(-1e6, 1e6)])
                ),
                "gift": maybe(rng.random() < 0.5),
                "note": maybe(rng.choice(TEXTS)),
            }
        )
    return rows


def mapper_for(columns, **mapping) -> RowMapper:
    declared = {"action": "event", "identifier": "uid", **mapping}
    return RowMapper(compile_mapping("orders", parse_mapping("orders", declared), columns))


MAPPINGS = {
    "id-text-and-time": {"event_name_column": "event", "event_id": ["sku", "at_us"]},
    "id-int": {"event_name": "order_placed", "event_id": ["order_id"], "timestamp": "at_us"},
    "id-every-type": {
        "event_name_column": "event",
        "event_id": ["order_id", "at_ms", "at_s", "day", "amount", "gift", "sku"],
        "timestamp": "at_s",
    },
    "whole-row": {"event_name": "seen"},
    "page": {"action": "page", "event_name_column": "event", "event_id": ["order_id", "uid"]},
    "screen-some-attributes": {
        "action": "screen",
        "event_name": "home",
        "event_id": ["at_us"],
        "attributes": ["note", "amount"],
    },
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("nulls", [False, True], ids=["no-nulls", "nulls"])
@pytest.mark.parametrize("mapping", MAPPINGS.values(), ids=MAPPINGS.keys())
def test_columnar_events_equal_the_row_path(seed: int, nulls: bool, mapping: dict):
    batch = pa.RecordBatch.from_pylist(event_rows(random.Random(seed), 300, nulls), schema=SCHEMA)
    mapper = mapper_for({n: {"name": n} for n in SCHEMA.names}, **mapping)

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert fast.block is not None and len(fast.block) >= 150  # written by Arrow kernels


def test_event_ids_are_the_row_paths_ids():
    rows = [
        {"uid": "a", "k": "o-1", "at": dt.datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=UTC)},
        {"uid": "b", "k": "o-2", "at": dt.datetime(2024, 1, 1, 2, tzinfo=PLUS_TWO)},
    ]
    batch = pa.RecordBatch.from_pylist(rows)
    mapper = mapper_for(
        {n: {"name": n} for n in ("uid", "k", "at")}, event_name="x", event_id=["k", "at"]
    )

    mapped = map_items(mapper, batch)

    assert mapped.block is not None and len(mapped.block) == 2
    ids = [orjson.loads(e.data)["id"] for e in mapped.block]
    assert ids == [
        deterministic_ulid("orders", canonical_key([row["k"], row["at"]])) for row in rows
    ]
    assert [e.key for e in mapped.block] == ids


def test_a_rejected_entry_of_an_event_block_gets_the_row_paths_row_key():
    batch = pa.RecordBatch.from_pylist(
        [{"uid": "a", "k": 7, "at": dt.datetime(2024, 5, 1, tzinfo=UTC)}]
    )
    mapper = mapper_for(
        {n: {"name": n} for n in ("uid", "k", "at")}, event_name="x", event_id=["k", "at"]
    )

    block = map_items(mapper, batch).block

    assert block is not None and block.row_keys is None  # made only when needed
    rejection = block[0].reject("invalid", None, "no")[0]
    expected = mapper.map_rows(rows_from_arrow(batch)).entries[0].row_key
    assert rejection.row_key == expected
    assert rejection.row == {"uid": "a", "k": 7, "at": dt.datetime(2024, 5, 1, tzinfo=UTC)}


def test_event_data_over_the_limit_is_rejected_as_the_row_path_does():
    batch = pa.RecordBatch.from_pylist(
        [{"uid": "a", "k": 1, "blob": "x" * 60_000, "more": "y" * 50_000}, {"uid": "b", "k": 2}]
    )
    mapper = mapper_for(
        {n: {"name": n} for n in ("uid", "k", "blob", "more")}, event_name="x", event_id=["k"]
    )

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert [r.reason for r in fast.rejections] == ["event_data_too_large"]
    assert fast.block is not None and len(fast.block) == 1  # the other row, written by Arrow


DLT_TYPES = {
    "uid": "text",
    "event": "text",
    "order_id": "bigint",
    "sku": "text",
    "at_us": "timestamp",
    "day": "date",
    "amount": "double",
    "gift": "bool",
    "note": "text",
}


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(
    "mapping",
    [
        {"event_name_column": "event", "event_id": ["order_id", "at_us"]},
        {"event_name": "seen"},  # the whole row is the key
    ],
    ids=["id-columns", "whole-row"],
)
def test_dict_event_rows_through_the_columnar_path_equal_the_row_path(seed: int, mapping: dict):
    rows = [
        {k: v for k, v in row.items() if v is not None and k in DLT_TYPES}
        for row in event_rows(random.Random(seed), 300, nulls=True)
    ]
    columns = {name: {"name": name, "data_type": kind} for name, kind in DLT_TYPES.items()}
    mapper = mapper_for(columns, **mapping)

    fast = map_items(mapper, rows, columns)

    assert outcome(fast) == outcome(mapper.map_rows(rows))
    assert fast.block is not None and len(fast.block) >= 150
    assert any(fast.block[0].rows[0] is row for row in rows)


def test_dict_rows_with_a_column_outside_the_schema_keep_the_whole_row_key_exact():
    rows = [{"uid": "a", "sku": "s", "extra": 1}]
    columns = {
        "uid": {"name": "uid", "data_type": "text"},
        "sku": {"name": "sku", "data_type": "text"},
    }
    mapper = mapper_for(columns, event_name="seen")

    mapped = map_items(mapper, rows, columns)

    assert mapped.block is None
    assert outcome(mapped) == outcome(mapper.map_rows(rows))
    # with the column in the schema, the same row is written by Arrow, to the same outcome
    columns["extra"] = {"name": "extra", "data_type": "bigint"}
    mapper = mapper_for(columns, event_name="seen")
    mapped = map_items(mapper, rows, columns)
    assert mapped.block is not None and len(mapped.block) == 1
    assert outcome(mapped) == outcome(mapper.map_rows(rows))


@pytest.mark.parametrize(
    "mapping",
    [
        {"event_name": "x", "event_id": "order_id"},
        {"event_name": "x", "event_id": ["k", "order_id"], "attributes": ["plan"]},
        {"event_name_column": "kind", "event_id": "k"},
        {"event_name": "x", "event_id": "k", "timestamp": "at"},
    ],
    ids=["event-id", "part-of-event-id-and-attribute", "name-column", "timestamp"],
)
def test_a_mapped_column_missing_from_the_batch_maps_as_null(mapping: dict):
    batch = pa.RecordBatch.from_pylist(
        [{"k": "e-1", "uid": "a"}, {"k": "e-2", "uid": "b"}],
        schema=pa.schema([("k", pa.string()), ("uid", pa.string())]),
    )
    columns = {"k": {"name": "k"}, "uid": {"name": "uid"}}
    declared = {"action": "event", "identifier": "uid", **mapping}
    mapper = RowMapper(compile_mapping("events", parse_mapping("events", declared), columns))

    fast = map_items(mapper, batch)
    rows = [{k: v for k, v in row.items() if v is not None} for row in batch.to_pylist()]
    from_dicts = map_items(mapper, rows, columns)

    slow = mapper.map_rows(rows_from_arrow(batch))
    assert outcome(fast) == outcome(from_dicts) == outcome(slow)
    assert len(fast.all_entries()) + len(fast.rejections) == 2
    if "attributes" in mapping:  # with a key column in the batch, Arrow writes the events
        assert fast.block is not None and len(fast.block) == 2


@pytest.mark.parametrize(
    "mapping",
    [{"attributes": ["plan"]}, {"event_id": ["k", "meta"], "attributes": ["plan"]}],
    ids=["whole-row-key", "event-id-column"],
)
def test_a_json_column_in_the_key_keys_as_the_value_it_holds(mapping: dict):
    """JSON text in a key column keys as the JSON it holds, as dict rows (decoded) do."""
    rows = [{"k": "e-1", "uid": "a", "plan": "pro", "meta": '{"b": 1, "a": 2}'}]
    batch = pa.RecordBatch.from_pylist(rows)
    columns = {name: {"name": name} for name in rows[0]}
    columns["meta"]["data_type"] = "json"
    declared = {"action": "event", "identifier": "uid", "event_name": "x", **mapping}
    mapper = RowMapper(compile_mapping("events", parse_mapping("events", declared), columns))
    decoded = [{**rows[0], "meta": {"a": 2, "b": 1}}]

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert [e.data for e in fast.all_entries()] == [
        e.data for e in mapper.map_rows(decoded).entries
    ]


@given(
    st.lists(
        st.one_of(
            st.text(max_size=4), st.lists(st.one_of(st.none(), st.text()), min_size=3, max_size=3)
        ),
        min_size=1,
        max_size=6,
    ).filter(lambda pieces: len({isinstance(p, str) for p in pieces}) == 2)
)
def test_joined_sizes_are_the_sizes_of_the_joined_pieces(pieces):
    """The event data's size is counted from its pieces, never joined: the count is exact."""
    columns = [p if isinstance(p, str) else pa.array(p, pa.string()) for p in pieces]
    assert joined_sizes(columns, 3).to_pylist() == [
        len(text.encode()) for text in join_pieces(columns).to_pylist()
    ]


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_event_data_at_the_limit_is_decided_as_the_row_path_decides(extra: int):
    """Data of exactly Customer.io's limit, a byte under or over it: both paths agree (within
    it, the entry is still over the entry size limit)."""
    rows = [{"uid": "a", "k": 1, "blob": ""}, {"uid": "b", "k": 2, "blob": "short"}]
    size = len(orjson.dumps({"k": 1, "blob": ""}))  # the key columns are data too
    rows[0]["blob"] = "x" * (MAX_EVENT_DATA_BYTES - size + extra)
    batch = pa.RecordBatch.from_pylist(rows)
    mapper = mapper_for(
        {n: {"name": n} for n in ("uid", "k", "blob")}, event_name="x", event_id=["k"]
    )

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    reason = "event_data_too_large" if extra > 0 else "entry_too_large"
    assert [r.reason for r in fast.rejections] == [reason]
    assert fast.block is not None and len(fast.block) == 1
