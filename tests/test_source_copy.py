"""The copy of a scope's source-row hashes (`cio_source_hashes`): a `changes_only` re-sync reads
the hashes kept in one round trip, and never trusts a copy that a write, a forget or an erasure
made stale."""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cio_destination import customerio, customerio_adapter, dry_run, loads
from cio_destination.emulator import Emulator
from cio_destination.state import TABLES, PipelineState, stored_state
from cio_destination.state.backend import SqlStore, StateFile
from cio_destination.state.fingerprints import KeptSources, SortedHashes, StoredFingerprints

from .conftest import API_KEY, SITE_ID
from .kills import kill_after_progress, run_to_completion
from .test_changes import ROWS, batch_ops

SCHEMA = pa.schema(
    [("uid", pa.int64()), ("plan", pa.string()), ("city", pa.string()), ("score", pa.int64())]
)


def arrow_people(rows: list[dict]) -> Any:
    return customerio_adapter(
        dlt.resource([pa.Table.from_pylist(rows, schema=SCHEMA)], name="people"),
        action="identify",
        identifier="uid",
        changes_only=True,
    )


CHANGED = [ROWS[0], {**ROWS[1], "plan": "team"}, ROWS[2]]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times a load read the copy, and the per-person hashes in bulk."""
    counted = {"copy": 0, "copy_found": 0, "bulk": 0}
    read_copy, read_bulk = StoredFingerprints.read_copy, StoredFingerprints.read_source_hashes

    def copy(self: StoredFingerprints, scope: str, most: int) -> Any:
        counted["copy"] += 1
        found = read_copy(self, scope, most)
        counted["copy_found"] += found is not None
        return found

    def bulk(self: StoredFingerprints, scope: str, most: int) -> Any:
        counted["bulk"] += 1
        return read_bulk(self, scope, most)

    monkeypatch.setattr(StoredFingerprints, "read_copy", copy)
    monkeypatch.setattr(StoredFingerprints, "read_source_hashes", bulk)
    return counted


def hashes_in(copy: Any) -> list[int]:
    """The hashes of a copy `read_copy` read (none if it found none)."""
    return [] if copy is None else list(copy.hashes)


def copy_of(pipeline: dlt.Pipeline) -> tuple[Any, ...] | None:
    state = stored_state(pipeline)
    assert state is not None
    found = state.store.read(
        "SELECT size, hashes FROM {cio_source_hashes} WHERE scope = ?",
        [f"{pipeline.pipeline_name}/people"],
    )
    return found[0] if found and found[0][1] is not None else None


def fingerprints_of(pipeline: dlt.Pipeline) -> tuple[StoredFingerprints, str]:
    state = stored_state(pipeline)
    assert state is not None
    return state.fingerprints, f"{pipeline.pipeline_name}/people"


@pytest.mark.slow
def test_a_completed_load_keeps_a_copy_that_the_next_load_reads_in_one_round_trip(
    emulator: Emulator, make_pipeline, reads: dict[str, int]
):
    pipeline = make_pipeline()
    pipeline.run(arrow_people(ROWS))
    store, scope = fingerprints_of(pipeline)
    kept = store.source_hashes_of(scope, [str(row["uid"]) for row in ROWS])
    size, _ = copy_of(pipeline)
    assert size == 3 and reads["bulk"] == 0  # a first sync reads nothing
    mark = len(emulator.requests)

    pipeline.run(arrow_people(ROWS))

    assert batch_ops(emulator, mark) == 0
    assert (reads["copy_found"], reads["bulk"]) == (1, 0)  # the copy, not the per-person rows
    assert sorted(hashes_in(store.read_copy(scope, 10))) == sorted(kept.values())

    pipeline.run(arrow_people(CHANGED))  # a write drops the copy; the load's end makes it anew
    assert batch_ops(emulator, mark) == 1
    assert sorted(hashes_in(store.read_copy(scope, 10))) == sorted(
        store.source_hashes_of(scope, ["1", "2", "3"]).values()
    )
    assert store.read_copy(scope, 2) is None  # more hashes than a load would read in bulk


def test_a_copy_larger_than_a_blob_holds_is_not_kept_and_the_next_load_reads_the_rows(
    emulator: Emulator, make_pipeline, reads: dict[str, int], monkeypatch: pytest.MonkeyPatch
):
    """A copy over `COPY_MOST_BYTES` (a blob's limit: 1 GB) is not kept, and no error comes of
    it: the next load reads the per-person hashes and sends nothing unchanged. One at the limit
    is kept."""
    from cio_destination.state import fingerprints as fingerprints_module

    monkeypatch.setattr(fingerprints_module, "COPY_MOST_BYTES", 8 * len(ROWS) - 1)
    pipeline = make_pipeline()
    pipeline.run(arrow_people(ROWS))
    assert copy_of(pipeline) is None
    mark = len(emulator.requests)

    pipeline.run(arrow_people(ROWS))

    assert batch_ops(emulator, mark) == 0
    assert (reads["copy_found"], reads["bulk"]) == (0, 1)
    monkeypatch.setattr(fingerprints_module, "COPY_MOST_BYTES", 8 * len(ROWS))
    pipeline.run(arrow_people(CHANGED))  # a write drops the copy, the load's end makes it
    found = copy_of(pipeline)
    assert found is not None and found[0] == len(ROWS)


def _write(store: StoredFingerprints, scope: str, pipeline: dlt.Pipeline) -> None:
    store.remember(scope, {"2": {"r": 0, "a": {}, "s": 123}})


def _forget(store: StoredFingerprints, scope: str, pipeline: dlt.Pipeline) -> None:
    store.forget(scope, ["2"])


def _erase(store: StoredFingerprints, scope: str, pipeline: dlt.Pipeline) -> None:
    state = stored_state(pipeline)
    assert state is not None
    state.erase(["2"])


@pytest.mark.slow
@pytest.mark.parametrize("change", [_write, _forget, _erase], ids=["write", "forget", "erase"])
def test_a_write_forget_or_erasure_between_loads_drops_the_copy(
    emulator: Emulator, make_pipeline, reads: dict[str, int], change: Any
):
    """Person 2's hash stays in a stale copy: trusted, their row (back as it was sent) would be
    skipped, though what Customer.io was last sent of them is not it (or nothing at all)."""
    pipeline = make_pipeline()
    pipeline.run(arrow_people(ROWS))
    assert copy_of(pipeline) is not None
    store, scope = fingerprints_of(pipeline)

    change(store, scope, pipeline)

    assert copy_of(pipeline) is None
    mark = len(emulator.requests)
    pipeline.run(arrow_people(ROWS))
    assert batch_ops(emulator, mark) == 1
    assert reads["copy_found"] == 0
    assert copy_of(pipeline) is not None  # made anew by the load that completed


@pytest.mark.slow
def test_a_load_that_dies_after_writing_leaves_no_copy(
    emulator: Emulator, make_pipeline, monkeypatch: pytest.MonkeyPatch
):
    """The load's writes drop the copy; it dies before it completes (its end is never
    reached), so no copy is left, and the next load reads the per-person rows."""
    pipeline = make_pipeline()
    pipeline.run(arrow_people(ROWS))
    with monkeypatch.context() as patched:
        patched.setattr(loads, "make_copies", lambda pairs: None)
        pipeline.run(arrow_people(CHANGED))  # person 2 now "team"
    assert copy_of(pipeline) is None
    mark = len(emulator.requests)

    pipeline.run(arrow_people(ROWS))  # person 2 back to "free"

    assert batch_ops(emulator, mark) == 1
    assert emulator.find_person(id="2")["attributes"]["plan"] == "free"


@pytest.mark.slow
def test_a_copy_another_runner_made_is_dropped_by_this_process_next_write(
    emulator: Emulator, make_pipeline, monkeypatch: pytest.MonkeyPatch
):
    """This process's load dies after its writes dropped the copy; another runner's load of the
    pipeline completes and makes the copy anew; this process's next write drops that one too
    (a process that remembered having dropped it would leave it behind, stale)."""
    pipeline = make_pipeline()
    pipeline.run(arrow_people(ROWS))
    with monkeypatch.context() as patched:
        patched.setattr(loads, "make_copies", lambda pairs: None)
        pipeline.run(arrow_people(CHANGED))  # its writes drop the copy; it never completes
    store, scope = fingerprints_of(pipeline)
    state = stored_state(pipeline)
    assert state is not None and copy_of(pipeline) is None

    StoredFingerprints(state.store, pipeline.pipeline_name).keep_copy(scope)  # the other runner
    assert copy_of(pipeline) is not None

    _write(store, scope, pipeline)
    assert copy_of(pipeline) is None


def kept_pipeline(emulator: Emulator, tmp_path: Path) -> dlt.Pipeline:
    """A pipeline whose dry runs use its own state store (`state_url`; without, a scratch copy
    of the local state)."""
    destination = customerio(
        site_id=SITE_ID,
        api_key=API_KEY,
        track_url=emulator.url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
    )
    return dlt.pipeline("copies", destination=destination, pipelines_dir=str(tmp_path))


@pytest.mark.slow
def test_a_dry_run_leaves_the_copy_alone(emulator: Emulator, tmp_path: Path):
    pipeline = kept_pipeline(emulator, tmp_path)
    pipeline.run(arrow_people(ROWS))
    before = copy_of(pipeline)

    report = dry_run(pipeline, arrow_people(CHANGED)).tables[0]

    assert (report.operations, report.skipped) == (1, 2)
    assert copy_of(pipeline) == before


@pytest.mark.slow
def test_a_dry_run_makes_no_copy(emulator: Emulator, tmp_path: Path):
    pipeline = kept_pipeline(emulator, tmp_path)
    pipeline.run(arrow_people(ROWS))
    store, scope = fingerprints_of(pipeline)
    store.forget(scope, ["3"])
    assert copy_of(pipeline) is None

    dry_run(pipeline, arrow_people(ROWS))

    assert copy_of(pipeline) is None


PEOPLE = 8
VERSIONS = 3


def source_hash(person: int, version: int) -> int:
    """A source-row hash of one of a person's rows: as real ones, it tells the person too."""
    return person * VERSIONS + version - PEOPLE * VERSIONS // 2


IDENTIFIERS = st.integers(0, PEOPLE - 1)
FINGERPRINTS = st.dictionaries(IDENTIFIERS, st.one_of(st.none(), st.integers(0, VERSIONS - 1)))


@settings(max_examples=150, deadline=None)
@given(
    kept=FINGERPRINTS,
    written=FINGERPRINTS,
    forgotten=st.lists(IDENTIFIERS),
    asked=st.lists(
        st.tuples(st.one_of(st.none(), IDENTIFIERS), st.integers(0, VERSIONS - 1)), min_size=1
    ),
)
def test_the_copy_settles_rows_as_the_per_person_rows_do(
    tmp_path_factory: pytest.TempPathFactory,
    kept: dict[int, int | None],
    written: dict[int, int | None],
    forgotten: list[int],
    asked: list[tuple[int | None, int]],
):
    """Whatever was kept, written and forgotten since the copy was made, a load that reads
    the copy maps exactly the rows a load comparing them with the per-person rows maps."""
    state = PipelineState(StateFile(tmp_path_factory.mktemp("s") / "s.sqlite", TABLES, "p"), "p")
    store, scope = state.fingerprints, "p/people"

    def fingerprints(given: dict[int, int | None], row_hash: int) -> dict[str, Any]:
        return {
            f"u{p}": {"r": row_hash, "a": {}, "s": None if v is None else source_hash(p, v)}
            for p, v in given.items()
        }

    store.remember(scope, fingerprints(kept, 1))
    store.keep_copy(scope)
    store.remember(scope, fingerprints(written, 2))
    store.forget(scope, [f"u{p}" for p in forgotten])
    if written or forgotten:
        assert store.read_copy(scope, 100) is None  # dropped by the writes
        store.keep_copy(scope)  # as the load that wrote them makes it at its end
    identifiers = [None if p is None else f"u{p}" for p, _ in asked]
    hashes = [source_hash(-1 if p is None else p, v) for p, v in asked]
    fast = KeptSources(store, scope)

    rows = fast.changed(identifiers, hashes)

    assert fast.from_copy and fast.looked_up == len(asked)  # in the sorted hashes read
    pairs = list(zip(identifiers, hashes, strict=True))
    by_row = store.changed_sources(scope, [(i, h) for i, h in pairs if i is not None])
    assert rows == [at for at, (i, h) in enumerate(pairs) if i is None or (i, h) in by_row]
    as_arrow = KeptSources(store, scope)  # as a load gives them: the identifiers in Arrow
    assert as_arrow.changed(pa.array(identifiers, pa.string()), hashes) == rows
    state.close()


HASHES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), -(2**63) + 1, -2, -1, 0, 1, 2**63 - 2, 2**63 - 1]),
    # many under the same top bits: wide buckets, searched in several steps
    st.builds(
        lambda top, low: top + low, st.sampled_from([-(2**63), -(2**40), 0]), st.integers(0, 99)
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    kept=st.lists(HASHES, max_size=400), others=st.lists(HASHES, max_size=50), near=st.booleans()
)
def test_sorted_hashes_hold_exactly_the_hashes_kept(kept: list[int], others: list[int], near: bool):
    """The lookup a load makes in the hashes it read in bulk (`SortedHashes`: sorted once,
    bucketed by top bits, binary searched by Arrow kernels) says of every hash what a set
    says: the kept ones, their neighbours, the extremes, and hashes under shared top bits."""
    held = SortedHashes(pa.array(kept, pa.int64()))
    asked = [*kept, *others]
    if near:  # a number next to each one kept (in range)
        asked += [h + 1 for h in kept if h < 2**63 - 1] + [h - 1 for h in kept if h > -(2**63)]

    found = held.holds(pa.array(asked, pa.int64())).to_pylist()

    assert len(held) == len(kept)
    assert found == [h in set(kept) for h in asked]
    assert (
        held.holds(pa.array(asked, pa.int64()).slice(len(kept))).to_pylist() == found[len(kept) :]
    )
    given_sorted = SortedHashes(pa.array(sorted(kept), pa.int64()))  # in order, or in any
    assert given_sorted.holds(pa.array(asked, pa.int64())).to_pylist() == found


def test_the_copy_holds_the_kept_hashes_on_every_store(tmp_path: Path):
    """SQLite and DuckDB URLs (PostgreSQL: the benchmark and tests/test_state_url.py)."""
    for url in (f"sqlite:///{tmp_path / 's.db'}", f"duckdb:///{tmp_path / 's.duckdb'}"):
        store = SqlStore(url, None, TABLES, "k")
        fingerprints = PipelineState(store, "p").fingerprints
        fingerprints.remember(
            "p/t", {"a": {"r": 1, "a": {}, "s": -(2**63)}, "b": {"r": 1, "a": {}}}
        )
        fingerprints.remember("p/t", {"c": {"r": 1, "a": {}, "s": 2**63 - 1}})
        assert fingerprints.read_copy("p/t", 10) is None
        fingerprints.keep_copy("p/t")
        assert sorted(hashes_in(fingerprints.read_copy("p/t", 10))) == [-(2**63), 2**63 - 1]
        fingerprints.forget("p/t", ["c"])
        assert fingerprints.read_copy("p/t", 10) is None
        store.close()


@pytest.mark.slow
def test_a_load_killed_mid_way_leaves_no_stale_copy(emulator: Emulator, tmp_path: Path):
    """SIGKILLed once a few of its units are recorded (observed progress): the copy is gone or
    holds exactly the per-person hashes; the load finished on the next run makes it anew, and
    the run after puts every person back."""
    state_url = f"sqlite:///{tmp_path / 'state.db'}"

    def run(plan: str) -> list[str]:
        args = [str(tmp_path / "pipelines"), emulator.url, state_url, "1000", plan]
        return [sys.executable, "-m", "tests.copy_child", *args]

    def hashes() -> tuple[list[int] | None, list[int]]:
        store = SqlStore(state_url, None, TABLES, "k")
        try:
            fingerprints, scope = PipelineState(store, "p").fingerprints, "copied_hashes/people"
            copy = fingerprints.read_copy(scope, 10_000)
            truth = store.read(
                "SELECT source_hash FROM {cio_fingerprints} WHERE scope = ?", [scope]
            )
            return None if copy is None else sorted(copy.hashes), sorted(row[0] for row in truth)
        finally:
            store.close()

    run_to_completion(run("free"))
    copy, before = hashes()
    assert copy == before and len(before) == 1000

    def recorded() -> int:  # units recorded (each unit's report follows its fingerprints)
        try:
            with contextlib.closing(sqlite3.connect(tmp_path / "state.db", timeout=60)) as db:
                return int(db.execute("SELECT COUNT(*) FROM cio_batch_reports").fetchone()[0])
        except sqlite3.OperationalError:  # the child holds the file this instant
            return 0

    # a unit is diffed once the one before is recorded, and its diff waits for the writes
    # behind: 3 more units recorded means the first ones' fingerprints are rewritten
    assert kill_after_progress(run("team"), recorded, 3)

    copy, truth = hashes()
    assert truth != before
    assert copy is None or copy == truth
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db, db:
        db.execute("DELETE FROM cio_leases")  # the dead run's lease, as if its time ran out
    run_to_completion(run("free"))  # dlt finishes the pending load (its data: "team") first
    copy, truth = hashes()
    assert copy == truth
    run_to_completion(run("free"))
    plans = {emulator.find_person(id=str(uid))["attributes"]["plan"] for uid in range(1000)}
    assert plans == {"free"}
