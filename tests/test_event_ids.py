"""The event id's column form writes what its row form writes, for any batch (property-based).

`event_keys` and `event_ids` write a whole RecordBatch's keys and ULIDs with Arrow kernels;
`canonical_key`, `canonical_row_key` and `deterministic_ulid` are the one definition, row by row.
Every row the column form does not flag for the row form must get the row form's exact key and
id, or a rerun that takes the other path would create the event twice.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.entries import rows_from_arrow
from cio_destination.event_ids import (
    canonical_key,
    canonical_row_key,
    deterministic_ulid,
    event_ids,
    event_keys,
)

from . import strategies as cs


def flagged(flags: list[Any], rows: int) -> list[bool]:
    """Per row, whether any flag marks it for the row form."""
    marked = [False] * rows
    for flag in flags:
        for index, value in enumerate(pa.array(flag).to_pylist()):
            marked[index] = marked[index] or bool(value)
    return marked


@st.composite
def keyed_batches(draw: st.DrawFn) -> tuple[pa.RecordBatch, tuple[str, ...]]:
    """A batch of any column types, and its event id columns (none: the whole row)."""
    batch = draw(cs.arrow_batches(draw(st.sampled_from(cs.IDENTIFIER_TYPES))))
    names = batch.schema.names
    if draw(st.booleans()):
        return batch, ()
    return batch, tuple(draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))


def test_the_column_form_keys_and_ids_are_the_row_form_s():
    written = []

    @given(keyed_batches())
    def check(case: tuple[pa.RecordBatch, tuple[str, ...]]) -> None:
        batch, id_columns = case
        flags: list[Any] = []
        keys = event_keys(batch, id_columns, flags)
        if keys is None:  # a type without a column form: the row form keys the whole batch
            return
        ids = event_ids("orders", keys).to_pylist()
        slow = flagged(flags, batch.num_rows)
        for index, row in enumerate(rows_from_arrow(batch)):
            if slow[index]:
                continue
            if id_columns:
                expected = canonical_key([row.get(c) for c in id_columns])
            else:
                expected = canonical_row_key(row)
            assert keys[index].as_py().encode() == expected
            assert ids[index] == deterministic_ulid("orders", expected)
            written.append(index)

    check()
    assert written  # the column form keyed rows, not only flagged them


def test_timestamp_keys_of_whole_seconds_are_written_as_those_with_fractions():
    """A batch of whole seconds skips writing fractions: its keys are still the row form's, and
    so are those of batches where some row has a fraction (both kinds of batch are drawn)."""
    seen = set()

    @given(
        st.lists(
            st.tuples(st.integers(0, 253_402_300_799), st.integers(0, 999_999) | st.just(0)),
            min_size=1,
            max_size=8,
        ),
        st.sampled_from(["s", "ms", "us", "ns"]),
    )
    def check(values: list[tuple[int, int]], unit: str) -> None:
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
        ticks = [s * per_second + f * per_second // 1_000_000 for s, f in values]
        ticks = [t for t in ticks if t < 2**63]
        if not ticks:
            return
        batch = pa.RecordBatch.from_arrays([pa.array(ticks, pa.timestamp(unit, "UTC"))], ["at"])
        flags: list[Any] = []
        keys = event_keys(batch, ("at",), flags)
        assert keys is not None
        slow = flagged(flags, batch.num_rows)
        for index, row in enumerate(rows_from_arrow(batch)):
            if not slow[index]:
                assert keys[index].as_py().encode() == canonical_key([row["at"]])
        seen.add(all(row["at"].microsecond == 0 for row in rows_from_arrow(batch)))

    check()
    assert seen == {True, False}


@given(
    st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=60),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from([pa.string(), pa.large_string()]),
)
def test_the_column_form_id_of_any_key_is_the_row_form_s(keys, start, cut, kind):
    """Any keys (a null hashes as no bytes), sliced or not, of any count: each id is the row
    form's; the ids' text is written by kernels from all the digests at once."""
    stop = max(start, len(keys) - cut)
    column = pa.array(keys, kind).slice(start, stop - start)
    ids = event_ids("orders", column)
    assert ids.type == pa.string()
    assert ids.to_pylist() == [
        deterministic_ulid("orders", (key or "").encode()) for key in keys[start:stop]
    ]
