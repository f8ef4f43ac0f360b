"""Units settled whole by their digest (`unit_digest`, `KeptCopy.units`): a `changes_only`
re-sync of Arrow rows that finds a unit read before, unchanged, against a copy of the same
hashes, neither hashes nor looks up its rows, and maps exactly what the row-by-row lookup maps."""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cio_destination import customerio_adapter, diff
from cio_destination.diff import Diff
from cio_destination.diff.mirror import MirrorPlans
from cio_destination.diff.source_rows import source_row_hashes, unit_digest
from cio_destination.emulator import Emulator
from cio_destination.state import TABLES, PipelineState
from cio_destination.state.backend import StateFile
from cio_destination.state.fingerprints import KeptSources

from .conftest import small_units
from .test_arrow_path import mapper_for
from .test_changes import batch_ops
from .test_postgres import postgres_url  # noqa: F401 - the server fixture
from .test_state_store import store  # noqa: F401 - file, SQLite URL, DuckDB URL

COLUMNS = {
    "ident": pa.int64(),
    "name": pa.string(),
    "note": pa.large_string(),
    "ratio": pa.float64(),
    "count": pa.int32(),
    "flag": pa.bool_(),
    "price": pa.decimal128(9, 2),
    "born": pa.date32(),
    "seen": pa.timestamp("us", tz="UTC"),
    "ignored": pa.string(),  # not read by the mapping below
}
MAPPING = {
    "timestamp": "seen",
    "attributes": ["name", "note", "ratio", "count", "flag", "price", "born"],
}
VALUES = {
    "name": st.one_of(st.none(), st.sampled_from(["", "a", "b", "ab", "ü"])),
    "note": st.one_of(st.none(), st.sampled_from(["", "x", "xy"])),
    "ratio": st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.5, -2.0])),
    "count": st.one_of(st.none(), st.sampled_from([0, 1, -1, 2**31 - 1])),
    "flag": st.one_of(st.none(), st.booleans()),
    "price": st.one_of(st.none(), st.sampled_from([decimal.Decimal("0"), decimal.Decimal("1.25")])),
    "born": st.one_of(st.none(), st.sampled_from([date(2020, 1, 1), date(1970, 1, 1)])),
    "seen": st.one_of(
        st.none(),
        st.sampled_from(
            [datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(1970, 1, 1, tzinfo=timezone.utc)]
        ),
    ),
    "ignored": st.one_of(st.none(), st.sampled_from(["", "z"])),
}
SCHEMA = pa.schema(list(COLUMNS.items()))


@st.composite
def rows(draw: st.DrawFn, size: int | None = None) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 6)) if size is None else size
    people = draw(st.lists(st.integers(0, 50), min_size=count, max_size=count, unique=True))
    return [{"ident": p, **{c: draw(v) for c, v in VALUES.items()}} for p in people]


def as_batch(rows: list[dict[str, Any]], before: int = 0, after: int = 0) -> pa.RecordBatch:
    """The rows as one batch; with rows `before` and `after` them, a slice of a larger one (its
    arrays at an offset into their buffers)."""
    padding = [{"ident": 1000 + i, "name": "pad"} for i in range(before + after)]
    whole = pa.RecordBatch.from_pylist(padding[:before] + rows + padding[before:], schema=SCHEMA)
    return whole.slice(before, len(rows))


@settings(max_examples=400, deadline=None)
@given(
    first=rows(),
    change=st.one_of(
        st.none(), st.tuples(st.integers(0, 5), st.sampled_from(sorted(VALUES)), st.data())
    ),
    layout=st.tuples(st.integers(0, 9), st.integers(0, 3), st.integers(0, 9), st.integers(0, 3)),
)
def test_units_of_one_digest_hash_alike_row_for_row(
    first: list[dict[str, Any]], change: Any, layout: tuple[int, int, int, int]
):
    """Two batches with the same digest have the same source-row hashes, row for row: drawn as
    the same rows or with one value changed (a null for a value, -0.0 for 0.0, ...), each
    alone or sliced out of a larger batch. The same rows give the same digest however they are
    laid out, and a column the mapping does not read changes nothing."""
    second = [dict(row) for row in first]
    if change is not None:
        at, column, data = change
        second[at % len(second)][column] = data.draw(VALUES[column])
    one, other = as_batch(first, *layout[:2]), as_batch(second, *layout[2:])
    mapper = mapper_for(one, **MAPPING)
    hashes = [source_row_hashes(mapper, batch) for batch in (one, other)]
    digests = [unit_digest(mapper, batch) for batch in (one, other)]

    assert None not in digests and None not in hashes
    same_hashes = hashes[0][1].equals(hashes[1][1])  # type: ignore[index]
    assert (digests[0] == digests[1]) == same_hashes
    read = [{k: v for k, v in row.items() if k != "ignored"} for row in first]
    ratios = [[str(row["ratio"]) for row in given] for given in (first, second)]  # -0.0: 0.0
    if read == [{k: v for k, v in row.items() if k != "ignored"} for row in second]:
        assert (digests[0] == digests[1]) == (ratios[0] == ratios[1])  # at any offset


def test_a_unit_digest_is_of_the_mapping_and_the_hash_version(monkeypatch: pytest.MonkeyPatch):
    batch = as_batch([{"ident": 1, "name": "a"}])
    plain = unit_digest(mapper_for(batch, **MAPPING), batch)
    assert unit_digest(mapper_for(batch, **{**MAPPING, "attributes": ["name"]}), batch) != plain
    monkeypatch.setattr(diff.source_rows, "UNIT_DIGEST_PERSON", b"cio-unit-digest-1/other")
    assert unit_digest(mapper_for(batch, **MAPPING), batch) != plain


def test_a_unit_of_a_type_not_hashed_has_no_digest():
    batch = pa.RecordBatch.from_pylist([{"ident": 1, "tags": ["a"]}])
    assert unit_digest(mapper_for(batch, attributes=["tags"]), batch) is None


@pytest.fixture
def state(tmp_path: Path) -> Iterator[PipelineState]:
    state = PipelineState(StateFile(tmp_path / "state.sqlite", TABLES, "p"), "p")
    yield state
    state.close()


def unit_diff(state: PipelineState, kept: KeptSources | None, batch: pa.RecordBatch) -> Diff:
    return Diff(
        mapper_for(batch, **MAPPING), "p/people", state.fingerprints, MirrorPlans(), kept=kept
    )


def keep(state: PipelineState, batch: pa.RecordBatch, kept: KeptSources | None = None) -> None:
    """Keep the fingerprints of every row of `batch` (as accepted), then the copy, as a load
    that ends does; with `kept`, through a diff of the batch against it."""
    fingerprints = state.fingerprints
    identifiers, hashes = source_row_hashes(mapper_for(batch, **MAPPING), batch)  # type: ignore[misc]
    if kept is not None:  # a load that finds every row kept as it is writes nothing
        assert unit_diff(state, kept, batch).drop_unchanged_rows(batch) == []
        fingerprints.keep_copy("p/people")
        return
    fingerprints.remember(
        "p/people",
        {
            i: {"r": 0, "a": {}, "s": h}
            for i, h in zip(identifiers.to_pylist(), hashes.to_pylist(), strict=True)
        },
    )
    fingerprints.keep_copy("p/people")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=rows(6),
    edits=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(sorted(VALUES)), st.data()), max_size=2
    ),
    written=st.lists(st.integers(0, 5), max_size=2),
)
def test_a_unit_settled_by_its_digest_maps_what_the_lookup_maps(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[dict[str, Any]],
    edits: list[Any],
    written: list[int],
):
    """A load keeps the digest of a unit it found kept as it is; the next load reads the unit
    again, maybe changed, after the fingerprints of some of its people were written (in that
    load, before the unit comes). It maps exactly the rows the row-by-row rule maps (a hash
    not the one kept with the person, or a person written since), and settles the unit by its
    digest, hashing nothing, exactly when it is the same unit and none of its people was
    written."""
    state = PipelineState(StateFile(tmp_path_factory.mktemp("s") / "s.sqlite", TABLES, "p"), "p")
    fingerprints = state.fingerprints
    unit = as_batch(first)
    keep(state, unit)  # a first sync
    keep(state, unit, fingerprints.kept_sources("p/people"))  # a load that finds it unchanged
    second = [dict(row) for row in first]
    for at, column, data in edits:
        second[at][column] = data.draw(VALUES[column])
    again = as_batch(second)
    kept = fingerprints.kept_sources("p/people")
    earlier = as_batch([{"ident": 999}])  # an earlier unit of the load: the copy is read
    assert unit_diff(state, kept, earlier).drop_unchanged_rows(earlier).num_rows == 1
    people = sorted({str(first[at]["ident"]) for at in written})
    fingerprints.remember("p/people", {p: {"r": 1, "a": {}, "s": 7} for p in people})
    identifiers, hashes = source_row_hashes(mapper_for(again, **MAPPING), again)  # type: ignore[misc]
    pairs = list(zip(identifiers.to_pylist(), hashes.to_pylist(), strict=True))
    changed = fingerprints.changed_sources("p/people", pairs)

    left = unit_diff(state, kept, again).drop_unchanged_rows(again)

    expected = [at for at, pair in enumerate(pairs) if pair in changed or pair[0] in people]
    mapped = [] if isinstance(left, list) else [str(i) for i in left.column("ident").to_pylist()]
    assert mapped == [pairs[at][0] for at in expected]
    kept_before = source_row_hashes(mapper_for(unit, **MAPPING), unit)[1]  # type: ignore[index]
    same = hashes.equals(kept_before)  # the values read (-0.0 is not 0.0), not the others
    assert kept.settled == (1 if same and not people else 0)
    assert kept.from_copy and kept.looked_up == 1 + (0 if same and not people else len(pairs))
    state.close()


def test_a_unit_is_not_settled_by_the_digests_of_another_copy(state: PipelineState):
    """A digest is kept with the digest of the copy it is of: once a write changed the copy
    (here a person forgotten, as an erasure or a mirror removal does), the unit is looked up
    row by row, and the forgotten person is mapped again though the unit did not change."""
    unit = as_batch([{"ident": 1, "name": "a"}, {"ident": 2, "name": "b"}])
    fingerprints = state.fingerprints
    keep(state, unit)
    keep(state, unit, fingerprints.kept_sources("p/people"))
    settled = fingerprints.kept_sources("p/people")
    assert unit_diff(state, settled, unit).drop_unchanged_rows(unit) == []
    assert settled.settled == 1

    fingerprints.forget("p/people", ["2"])
    fingerprints.keep_copy("p/people")
    kept = fingerprints.kept_sources("p/people")
    left = unit_diff(state, kept, unit).drop_unchanged_rows(unit)

    assert left.column("ident").to_pylist() == [2]
    assert kept.from_copy and kept.settled == 0 and kept.looked_up == 2


def arrow_people(rows: list[dict[str, Any]]) -> Any:
    schema = pa.schema([("uid", pa.int64()), ("plan", pa.string()), ("score", pa.int64())])
    return customerio_adapter(
        dlt.resource([pa.Table.from_pylist(rows, schema=schema)], name="people"),
        action="identify",
        identifier="uid",
        changes_only=True,
    )


def hashed_units(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each unit whose source rows are hashed, as they are."""
    hashed: list[int] = []
    hash_rows = diff.source_row_hashes

    def counted(mapper: Any, batch: Any) -> Any:
        hashed.append(batch.num_rows)
        return hash_rows(mapper, batch)

    monkeypatch.setattr(diff, "source_row_hashes", counted)
    return hashed


def settled_units(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many units each load's `KeptSources` settled by their digest."""
    settled: list[KeptSources] = []
    init = KeptSources.__init__

    def watched(self: KeptSources, *args: Any) -> None:
        init(self, *args)
        settled.append(self)

    monkeypatch.setattr(KeptSources, "__init__", watched)
    return settled  # type: ignore[return-value]


def resyncs(
    make_pipeline: Any,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    unit: int = 100,
    **keys: Any,
) -> tuple[dlt.Pipeline, list[int], list[KeptSources], list[dict[str, Any]]]:
    """A pipeline that synced four units of `unit` people, and what its loads will hash and
    settle."""
    small_units(monkeypatch, unit, unit)
    hashed, loads = hashed_units(monkeypatch), settled_units(monkeypatch)
    pipeline = make_pipeline(**keys)
    people = [{"uid": i, "plan": "free", "score": i} for i in range(4 * unit)]
    pipeline.run(arrow_people(people))
    assert batch_ops(emulator) == 4 * unit
    return pipeline, hashed, loads, people


@pytest.mark.slow
def test_a_resync_settles_the_units_a_load_before_found_unchanged(
    emulator: Emulator, make_pipeline: Any, monkeypatch: pytest.MonkeyPatch
):
    """Local state: the first re-sync looks every row up and keeps its units' digests; the
    next settles all four units by them, hashing no row; a unit with one row changed is hashed
    and looked up, and sends that person alone."""
    pipeline, hashed, loads, people = resyncs(make_pipeline, emulator, monkeypatch)
    hashed.clear()
    mark = len(emulator.requests)
    pipeline.run(arrow_people(people))
    assert (batch_ops(emulator, mark), hashed, loads[-1].settled) == (0, [100] * 4, 0)

    hashed.clear()
    pipeline.run(arrow_people(people))
    # (the first unit may be hashed while the copy is still being read)
    assert (batch_ops(emulator, mark), hashed[1:], loads[-1].settled) == (0, [], 4)

    people[250] = {**people[250], "plan": "pro"}
    hashed.clear()
    pipeline.run(arrow_people(people))
    assert (batch_ops(emulator, mark), hashed[-1:], loads[-1].settled) == (1, [100], 3)
    assert hashed in ([100], [100, 100])
    assert emulator.find_person(id="250")["attributes"]["plan"] == "pro"


@pytest.mark.slow
def test_a_first_sync_into_postgresql_keeps_its_units_digests(
    emulator: Emulator,
    make_pipeline: Any,
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,  # noqa: F811
):
    """A first sync's writes make the copy (PostgreSQL, `_Chain`: units of 1,000 rows or
    more, each COPYed in), each unit's whole: the re-sync right after it settles every unit
    by its digest, hashing no row."""
    keys = {"state_url": postgres_url, "state_schema": f"digests_{uuid.uuid4().hex[:8]}"}
    pipeline, hashed, loads, people = resyncs(make_pipeline, emulator, monkeypatch, 1_000, **keys)
    hashed.clear()
    mark = len(emulator.requests)

    pipeline.run(arrow_people(people))

    assert (batch_ops(emulator, mark), hashed[1:], loads[-1].settled) == (0, [], 4)


def test_a_unit_not_settled_ahead_has_the_kept_hashes_put_in_order_on_a_helper_thread(
    state: PipelineState, monkeypatch: pytest.MonkeyPatch
):
    """Where units may be settled whole, the kept hashes are put in order only for a unit that
    is not: found so ahead (`may_settle`, on the mapping thread), on a helper thread, while the
    unit is hashed; its lookup then waits for that, and puts them in order no second time."""
    import threading

    from cio_destination.state import fingerprints as module

    unit = as_batch([{"ident": 1, "name": "a"}, {"ident": 2, "name": "b"}])
    fingerprints = state.fingerprints
    keep(state, unit)
    keep(state, unit, fingerprints.kept_sources("p/people"))
    built: list[str] = []
    sort = module.SortedHashes.__init__

    def watched(self: Any, hashes: Any) -> None:
        built.append(threading.current_thread().name)
        sort(self, hashes)

    monkeypatch.setattr(module.SortedHashes, "__init__", watched)
    kept = fingerprints.kept_sources("p/people")
    changed = as_batch([{"ident": 1, "name": "a"}, {"ident": 2, "name": "c"}])
    digest = unit_digest(mapper_for(changed, **MAPPING), changed)
    assert digest is not None
    assert not kept.settles(digest, 2, lambda: pa.array(["1", "2"]))  # the copy is read
    assert built == []  # nothing put in order yet: the units kept may settle every unit

    assert not kept.may_settle(digest)
    left = unit_diff(state, kept, changed).drop_unchanged_rows(changed)

    assert left.column("ident").to_pylist() == [2]
    assert len(built) == 1 and built[0] != threading.current_thread().name


def test_the_units_a_copy_holds_are_kept_and_read_back_on_every_store(
    store: Any,  # noqa: F811
):
    """File, SQLite URL, DuckDB URL (PostgreSQL: the first-sync test above): the digests kept
    with a copy are read back with it, and settle a unit."""
    state = PipelineState(store, "p")
    unit = as_batch([{"ident": 1, "name": "a"}, {"ident": 2, "name": "b"}])
    digest = unit_digest(mapper_for(unit, **MAPPING), unit)
    fingerprints = state.fingerprints
    keep(state, unit)
    copy = fingerprints.read_copy("p/people", 10)
    assert copy is not None and copy.units == frozenset()

    keep(state, unit, fingerprints.kept_sources("p/people"))
    copy = fingerprints.read_copy("p/people", 10)
    assert copy is not None and copy.units == {digest}
    kept = fingerprints.kept_sources("p/people")
    assert unit_diff(state, kept, unit).drop_unchanged_rows(unit) == [] and kept.settled == 1


def test_the_digests_kept_are_those_of_the_last_load_that_found_its_units_held(
    state: PipelineState,
):
    """The same people read in another order each load: nothing is written, the copy stays,
    and the digests kept are the last load's units, not every load's before it."""
    fingerprints = state.fingerprints
    keep(state, as_batch([{"ident": i, "name": "a"} for i in range(1, 5)]))
    for order in ([1, 2, 3, 4], [4, 3, 2, 1], [2, 4, 1, 3], [1, 2, 3, 4]):
        units = [
            as_batch([{"ident": i, "name": "a"} for i in pair]) for pair in (order[:2], order[2:])
        ]
        kept = fingerprints.kept_sources("p/people")
        for unit in units:
            assert unit_diff(state, kept, unit).drop_unchanged_rows(unit) == []
        fingerprints.keep_copy("p/people")

        copy = fingerprints.read_copy("p/people", 10)
        assert copy is not None
        assert copy.units == {unit_digest(mapper_for(u, **MAPPING), u) for u in units}
