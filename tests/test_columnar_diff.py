"""The columnar `changes_only` diff gives what the row diff gives, for any Arrow batch.

Property-based (hypothesis), over the identify batches and mappings the equivalence properties
draw (`tests.test_equivalence`), each with `changes_only`: the same rows are diffed twice, once
mapped by the columnar builder (an `EntryBlock`, whose new people get their fingerprints a
column at a time) and once by the row path (every entry through `only_changes`), each into a
state of its own, on a first sync and again after some people's fingerprints were dropped and
others' source hashes no longer match. Both send the same operations, reject the same rows and
keep the same fingerprints, byte for byte; the property counts the examples in which the columnar
diff computed fingerprints, from the attribute texts the mapping handed along and from texts it
wrote itself (half the examples hand none along), so it cannot pass without either.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.diff import Diff
from cio_destination.diff import columnar as columnar_diff
from cio_destination.diff.mirror import MirrorPlans
from cio_destination.entries import Mapped, rows_from_arrow
from cio_destination.mapper import RowMapper, map_items
from cio_destination.mapping import compile_mapping, parse_mapping
from cio_destination.state import PipelineState
from cio_destination.transport.results import SendResult

from .conftest import mapped_outcome as outcome
from .test_equivalence import arrow_cases, identify_mappings

SCOPE = "p/things"


def changes_only_cases() -> st.SearchStrategy[tuple[pa.RecordBatch, RowMapper]]:
    def with_changes_only(case: tuple[pa.RecordBatch, RowMapper]) -> Any:
        batch, mapper = case
        declared = {**mapper.mapping.model_dump(exclude_defaults=True), "changes_only": True}
        columns = {name: {"name": name} for name in batch.schema.names}
        compiled = compile_mapping("things", parse_mapping("things", declared), columns)
        return batch, RowMapper(compiled)

    return arrow_cases(identify_mappings).map(with_changes_only)


class Side:
    """One way of diffing: columnar (`map_items`) or rows (`map_rows`), with its own state."""

    def __init__(
        self, mapper: RowMapper, directory: str, columnar: bool, handed: bool = True
    ) -> None:
        self.mapper = mapper
        self.columnar = columnar
        self.handed = handed
        """Whether the mapping's attribute texts go along to the columnar diff."""
        self.state = PipelineState.in_file(Path(directory) / f"{columnar}.sqlite", "p")
        self.computed = 0
        """Calls in which the columnar diff computed fingerprints."""

    def sync(self, batch: pa.RecordBatch) -> tuple[list[tuple[str, bytes]], Mapped]:
        """Diff the batch, as a load would, and deliver everything: what was sent, the mapping."""
        fingerprints = self.state.fingerprints
        first = not fingerprints.holds_any(SCOPE)
        kept = None if first else fingerprints.kept_sources(SCOPE)
        diff = Diff(self.mapper, SCOPE, fingerprints, MirrorPlans(), kept=kept)
        items = diff.drop_unchanged_rows(batch)
        if self.columnar:
            mapped = map_items(self.mapper, items)
            if not self.handed:
                mapped.attribute_texts = None
        else:
            mapped = self.mapper.map_rows(
                items if isinstance(items, list) else rows_from_arrow(items)
            )
            assert mapped.block is None
        parts = diff.to_send(mapped)
        self.computed += diff._pending is not None  # (only for a block of new people)
        diff.delivered(SendResult(delivered=parts), self.state.snapshots)
        sent = sorted((entry.row_key, entry.data) for part in parts for entry in part)
        return sent, mapped

    def kept(self) -> list[tuple[Any, ...]]:
        self.state.fingerprints.flush()  # the columnar diff's are written behind
        return sorted(
            self.state.store.read(
                "SELECT identifier, row_hash, attributes, source_hash FROM {cio_fingerprints}"
                " WHERE scope = ?",
                [SCOPE],
            )
        )

    def disturb(self, dropped: list[str], stale: list[str]) -> None:
        """Drop some fingerprints; make others' source hashes no longer match."""
        self.state.fingerprints.forget(SCOPE, dropped)  # after the write behind
        with self.state.store.transaction() as tx:
            for identifier in stale:
                tx.execute(
                    "UPDATE {cio_fingerprints} SET source_hash = 1 WHERE identifier = ?",
                    [identifier],
                )


def test_the_columnar_diff_sends_rejects_and_keeps_what_the_row_diff_does(
    monkeypatch: pytest.MonkeyPatch,
):
    examples = 0
    computed = {True: 0, False: 0}  # by whether the mapping's texts were handed along
    written = 0  # the columnar diff's calls that wrote the attribute texts again
    write_texts = columnar_diff.attribute_texts

    def writing(*args: Any, **kwargs: Any) -> Any:
        nonlocal written
        written += 1
        return write_texts(*args, **kwargs)

    monkeypatch.setattr(columnar_diff, "attribute_texts", writing)

    @given(changes_only_cases(), st.booleans(), st.data())
    def check(case: tuple[pa.RecordBatch, RowMapper], handed: bool, data: st.DataObject) -> None:
        nonlocal examples, written
        batch, mapper = case
        written = 0
        with tempfile.TemporaryDirectory() as directory:
            columnar = Side(mapper, directory, True, handed)
            rows = Side(mapper, directory, False)
            for round_ in range(2):
                sent, mapped = columnar.sync(batch)
                sent_by_rows, mapped_by_rows = rows.sync(batch)
                assert sent == sent_by_rows
                assert outcome(mapped) == outcome(mapped_by_rows)
                assert columnar.kept() == rows.kept()
                people = [row[0] for row in columnar.kept()]
                if round_ == 0 and people:
                    dropped = data.draw(st.lists(st.sampled_from(people), unique=True))
                    stale = data.draw(st.lists(st.sampled_from(people), unique=True))
                    for side in (columnar, rows):
                        side.disturb(dropped, stale)
            examples += 1
            computed[handed] += columnar.computed > 0
            assert rows.computed == 0
            if handed:
                assert written == 0  # the mapping's texts were hashed, none written again
            columnar.state.close()
            rows.state.close()

    check()
    # the fast path ran both ways (a share of the draws would depend on how hypothesis split them)
    assert examples and min(computed.values()) >= 1, (computed, examples)


@given(
    st.lists(st.one_of(st.none(), st.text(max_size=6), st.integers(0, 3)), max_size=60),
    st.booleans(),
)
def test_value_hashes_are_value_hash_of_each_value_whether_values_repeat_or_not(values, repeat):
    """The column form hashes each distinct value once where values repeat, and each value
    where they are mostly distinct: either way the numbers are `value_hash`'s (and their
    decimal text, `as_text`). Both ways run."""
    import orjson
    import pyarrow.compute as pc

    from cio_destination.diff import changes

    if repeat:
        values = values * 3
    texts = pa.array(
        [
            None if v is None else orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
            for v in values
        ],
        pa.string(),
    )
    encoded = []
    original = pc.dictionary_encode
    changes.pc.dictionary_encode = lambda *a, **k: encoded.append(1) or original(*a, **k)  # type: ignore[assignment]
    try:
        hashes = changes.value_hashes(texts).to_pylist()
    finally:
        changes.pc.dictionary_encode = original  # type: ignore[assignment]
    assert hashes == [None if v is None else changes.value_hash(v) for v in values]
    sample = texts.to_pylist()[: changes.DISTINCT_SAMPLE]
    assert bool(encoded) == (2 * len(set(sample)) <= len(sample))


@pytest.mark.parametrize(
    "delivered",
    ["whole", "two slices", "a slice", "single entries", "none"],
)
def test_the_fingerprints_kept_are_those_of_the_block_entries_delivered(delivered: str):
    """A block delivered whole (in one body or several) keeps every fingerprint without a
    lookup; one delivered in part (a failed body, a 207 answered entry by entry) keeps those
    of the entries delivered, and no other."""
    from cio_destination.entries import EntryBlock

    batch = pa.RecordBatch.from_pylist([{"uid": f"u{i}", "plan": f"p{i % 3}"} for i in range(10)])
    declared = {"action": "identify", "identifier": "uid", "changes_only": True}
    columns = {name: {"name": name} for name in batch.schema.names}
    mapper = RowMapper(compile_mapping("things", parse_mapping("things", declared), columns))
    with tempfile.TemporaryDirectory() as directory:
        side = Side(mapper, directory, True)
        diff = Diff(mapper, SCOPE, side.state.fingerprints, MirrorPlans(), kept=None)
        (block,) = diff.to_send(map_items(mapper, diff.drop_unchanged_rows(batch)))
        assert isinstance(block, EntryBlock)
        groups: list[Any] = {
            "whole": [block],
            "two slices": [block[:4], block[4:]],
            "a slice": [block[2:7]],
            "single entries": [[block[1], block[8]]],
            "none": [],
        }[delivered]

        from cio_destination.diff import columnar

        looked_up: list[int] = []
        is_in = columnar.pc.is_in
        columnar.pc.is_in = lambda *a, **k: looked_up.append(1) or is_in(*a, **k)  # type: ignore[assignment]
        try:
            diff.delivered(SendResult(delivered=groups), side.state.snapshots)
        finally:
            columnar.pc.is_in = is_in  # type: ignore[assignment]

        assert bool(looked_up) == (delivered in ("a slice", "single entries"))
        expected = sorted(entry.row_key for group in groups for entry in group)
        assert [row[0] for row in side.kept()] == expected
        side.state.close()


def test_a_blocks_fingerprints_are_hashed_on_the_mapping_thread_and_kept_once_delivered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """A block's values are hashed while it is diffed, on the thread that maps and diffs the
    unit (on a helper thread, numpy's many short calls each waited for Python's lock while the
    mapping held it), and its fingerprints are kept once Customer.io accepted the block."""
    hashed_by: list[str] = []
    value_hashes = columnar_diff.value_hashes

    def counted(texts: pa.Array, **options: Any) -> pa.Array:
        hashed_by.append(threading.current_thread().name)
        return value_hashes(texts, **options)

    monkeypatch.setattr(columnar_diff, "value_hashes", counted)
    batch = pa.record_batch({"uid": ["a", "b", "c"], "plan": ["x", "y", None]})
    declared = {"action": "identify", "identifier": "uid", "changes_only": True}
    columns = {name: {"name": name} for name in batch.schema.names}
    mapper = RowMapper(compile_mapping("things", parse_mapping("things", declared), columns))
    state = PipelineState.in_file(tmp_path / "state.sqlite", "p")
    diff = Diff(mapper, SCOPE, state.fingerprints, MirrorPlans(), kept=None)
    mapped = map_items(mapper, diff.drop_unchanged_rows(batch))
    parts = diff.to_send(mapped)
    assert mapped.block is not None and len(mapped.block) == 3
    assert hashed_by == [threading.current_thread().name]  # the one attribute column, now
    state.fingerprints.flush()
    assert state.fingerprints.fingerprints_of(SCOPE, ["a", "b", "c"]) == {}  # not yet sent

    diff.delivered(SendResult(delivered=parts), state.snapshots)

    assert len(hashed_by) == 1  # hashed once
    state.fingerprints.flush()
    assert len(state.fingerprints.fingerprints_of(SCOPE, ["a", "b", "c"])) == 3
    state.close()


@pytest.mark.parametrize("changes_only", [False, True])
def test_only_a_changes_only_mapping_holds_its_attribute_texts_and_the_diff_lets_them_go(
    tmp_path: Path, changes_only: bool
):
    """The texts live as long as a unit's answers are awaited: a plain sync does not keep
    them, and a `changes_only` one gives them to its fingerprints' hashing and drops them."""
    declared = {"action": "identify", "identifier": "uid", "changes_only": changes_only}
    columns = {name: {"name": name} for name in ("uid", "plan")}
    mapper = RowMapper(compile_mapping("things", parse_mapping("things", declared), columns))
    batch = pa.RecordBatch.from_pydict({"uid": ["a", "b"], "plan": ["pro", "team"]})

    mapped = map_items(mapper, batch)

    assert (mapped.attribute_texts is not None) is changes_only
    if changes_only:
        state = PipelineState.in_file(tmp_path / "s.sqlite", "p")
        diff = Diff(mapper, SCOPE, state.fingerprints, MirrorPlans())
        diff.to_send(mapped)
        assert mapped.attribute_texts is None
        state.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_reads_on_threads_of_its_own():
    """An orchestrator may fork a worker from a process that already ran a load. The child
    does not inherit the helper threads, and the pools must not believe it did: the pool
    runs a task in the child, which exits 0 (a pool that believed would hang it)."""
    from cio_destination.state import fingerprints

    assert fingerprints._reader().submit(lambda: 2).result() == 2  # the parent's pool, in use
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        signal.alarm(120)  # a hang ends the child (killed), not the test run
        ok = fingerprints._reader().submit(lambda: 4).result() == 4
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("handed", [True, False])
def test_a_blocks_attribute_hashes_are_columns_and_a_row_per_person_holds_the_json_as_before(
    tmp_path: Path, handed: bool
):
    """The columnar diff gives a block's attribute hashes as an int64 column per attribute
    (null: no value), writes no JSON of them; the rows a store keeps per person hold, byte for
    byte, the JSON the row diff keeps (`orjson.dumps` of the hashes), names JSON escapes or
    that are not ASCII, and absent values, included."""
    import orjson

    from cio_destination.diff.changes import value_hash

    names = ["plan", 'say "hi"', "ünï.😀.d", "back\\slash", "n"]
    batch = pa.RecordBatch.from_pydict(
        {
            "uid": ["a", "b", "c"],
            "plan": ["pro", None, "team"],
            'say "hi"': [1, 2, None],
            "ünï.😀.d": [None, None, 1.5],
            "back\\slash": [True, False, True],
            "n": pa.array([None, None, None], pa.int64()),
        }
    )
    declared = {"action": "identify", "identifier": "uid", "changes_only": True}
    columns = {name: {"name": name} for name in batch.schema.names}
    mapper = RowMapper(compile_mapping("things", parse_mapping("things", declared), columns))
    columnar, rows = Side(mapper, str(tmp_path), True, handed), Side(mapper, str(tmp_path), False)
    diff = Diff(mapper, SCOPE, columnar.state.fingerprints, MirrorPlans(), kept=None)
    mapped = map_items(mapper, diff.drop_unchanged_rows(batch))
    if not handed:
        mapped.attribute_texts = None
    parts = diff.to_send(mapped)
    pending = diff._pending
    diff.delivered(SendResult(delivered=parts), columnar.state.snapshots)
    rows.sync(batch)

    assert pending.schema.field("attributes").type == pa.struct([(n, pa.int64()) for n in names])
    values = batch.to_pylist()
    expected = [
        orjson.dumps({n: value_hash(row[n]) for n in names if row[n] is not None}) for row in values
    ]
    assert [bytes(row[2]) for row in columnar.kept()] == expected
    assert columnar.kept() == rows.kept()
    columnar.state.close()
    rows.state.close()
