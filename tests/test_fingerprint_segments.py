"""A first sync's fingerprints kept a unit at a time (`cio_destination.state.segments`).

A store holding segments answers every read as a store of one row per person does after the
same writes, forgets and erasures: a person's row of their own, where there is one, hides
their entry in a segment (a later load's change, then a revert to the first row, is seen as a
change); a forget or an erasure takes them out of the segments too.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_httpx import HTTPXMock

from cio_destination import customerio, customerio_adapter
from cio_destination import state as states
from cio_destination.emulator import Emulator
from cio_destination.state import TABLES, PipelineState, backend, release_state
from cio_destination.state import fingerprints as fingerprints_module
from cio_destination.state import segments as segments_module
from cio_destination.state.backend import SCHEMA_VERSION, SqlStore, StateFile, state_path
from cio_destination.state.fingerprints import FINGERPRINT_SCHEMA, PARTS_MARK, StoredFingerprints
from cio_destination.state.segments import attributes_json, encoded, overlaps, positions

from .test_changes import ROWS, capture_batches, identify
from .test_postgres import postgres_url  # noqa: F401 - the server fixture
from .test_state_url import Database, database, fresh_runner  # noqa: F401 - a fixture

TEXTS = st.text(  # (PostgreSQL keeps no NUL in a text)
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6
)
IDENTIFIERS = st.one_of(
    st.sampled_from([f"p{i}" for i in range(10)] + ["tab\there", "line\nbreak", "ünï 😀", ""]),
    TEXTS,
)


@settings(max_examples=200, deadline=None)
@given(kept=st.sets(TEXTS, max_size=80), others=st.lists(TEXTS, max_size=20))
def test_positions_find_each_identifier_where_it_is_among_the_sorted_ones(
    kept: set[str], others: list[str]
):
    """The binary search by Arrow kernels says of every identifier what a dict says, in the
    order Arrow sorts texts (by their UTF-8 bytes)."""
    ordered = pa.array(sorted(kept, key=lambda t: t.encode()), pa.string())
    where = {t: at for at, t in enumerate(ordered.to_pylist())}
    asked = [*kept, *others]

    found = positions(ordered, pa.array(asked, pa.string())).to_pylist()  # a hash table
    one_by_one = [positions(ordered, pa.array([t], pa.string()))[0].as_py() for t in asked]

    assert found == [where.get(t) for t in asked]
    assert one_by_one == found  # by a binary search, from 16 kept
    assert pc.sort_indices(ordered).to_pylist() == list(range(len(ordered)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sets(TEXTS, max_size=12), max_size=5), st.sets(TEXTS, min_size=1, max_size=12))
def test_a_unit_overlaps_the_segments_before_it_exactly_when_it_shares_a_person(
    earlier: list[set[str]], unit: set[str]
):
    def segment(people: set[str]) -> pa.Array:
        table = pa.table(
            {
                "identifier": pa.array(list(people), pa.string()),
                "row_hash": pa.array([1] * len(people), pa.int64()),
                "attributes": pa.array([b"{}"] * len(people), pa.binary()),
                "source_hash": pa.array([None] * len(people), pa.int64()),
            },
            schema=FINGERPRINT_SCHEMA,
        )
        return encoded(table)[0]

    found = overlaps([segment(e) for e in earlier], segment(unit))

    assert found == any(e & unit for e in earlier)


HASHES = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1]))
NAMED_ROWS = st.lists(
    st.text(st.characters(codec="utf-8"), max_size=6), unique=True, max_size=5
).flatmap(
    lambda names: st.tuples(
        st.just(names), st.lists(st.lists(HASHES, min_size=len(names), max_size=len(names)))
    )
)


@settings(max_examples=300, deadline=None)
@given(NAMED_ROWS, st.integers(0, 3))
def test_attributes_json_writes_from_the_columns_what_remember_writes_byte_for_byte(
    named_rows: tuple[list[str], list[list[int | None]]], cut: int
):
    """The JSON a row per person holds, written from the columns of the columnar diff (a
    struct of int64 fields, null: no value; a slice of one, in chunks), is what `remember`
    writes of the same hashes (`orjson.dumps`), byte for byte, whatever the names (quotes,
    backslashes, control characters, unicode, dots, empty) and hashes (both ends of int64)."""
    names, rows = named_rows
    kind = pa.struct([pa.field(n, pa.int64()) for n in names])
    column = pa.array([dict(zip(names, row, strict=True)) for row in rows], kind)
    expected = [
        orjson.dumps({n: h for n, h in zip(names, row, strict=True) if h is not None})
        for row in rows
    ]

    assert attributes_json(column).to_pylist() == expected
    assert attributes_json(column.slice(cut)).to_pylist() == expected[cut:]
    halves = pa.chunked_array([column.slice(0, cut), column.slice(cut)], kind)
    assert attributes_json(halves).to_pylist() == expected
    assert attributes_json(pa.array(expected, pa.binary())).to_pylist() == expected  # as given


Person = tuple[int, dict[str, int], int | None]
ATTRIBUTES = ["plan", 'say "hi"', "ünï.😀.d", "back\\slash"]
"""Attribute names, some that JSON escapes or that are not ASCII (a name is a column's)."""
PEOPLE = st.dictionaries(
    IDENTIFIERS,
    st.tuples(
        st.sampled_from([1, 2, 3]),
        st.dictionaries(st.sampled_from(ATTRIBUTES), st.sampled_from([5, 6, -(2**63)])),
        st.sampled_from([10, 11, -(2**63), 2**63 - 1, None]),
    ),
    min_size=1,
    max_size=8,
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), PEOPLE, st.booleans()),
        st.tuples(st.just("forget"), st.lists(IDENTIFIERS, max_size=4)),
        st.tuples(st.just("erase"), st.lists(IDENTIFIERS, max_size=4)),
        st.tuples(st.just("copy")),
    ),
    max_size=14,
)


def table_of(people: dict[str, Person]) -> pa.Table:
    """The people's fingerprints as the columnar diff gives them: their attribute hashes a
    struct of int64 fields, one per attribute any of them has (null: none)."""
    names = [n for n in ATTRIBUTES if any(n in a for _, a, _ in people.values())]
    attributes = pa.array(
        [{n: a.get(n) for n in names} for _, a, _ in people.values()],
        pa.struct([pa.field(n, pa.int64()) for n in names]),
    )
    return pa.table(
        [
            pa.array(list(people), pa.string()),
            pa.array([r for r, _, _ in people.values()], pa.int64()),
            attributes,
            pa.array([s for _, _, s in people.values()], pa.int64()),
        ],
        names=FINGERPRINT_SCHEMA.names,
    )


def dicts_of(people: dict[str, Person]) -> dict[str, dict[str, Any]]:
    return {k: {"r": r, "a": a, "s": s} for k, (r, a, s) in people.items()}


def test_a_segments_body_holds_the_attribute_hashes_as_int64_columns_not_json():
    """A segment keeps each attribute's hashes as a column (null: the person has none), not
    the JSON text a row per person holds; read back, a person's fingerprint is theirs."""
    people = {
        "p2": (2, {"ünï.😀.d": -(2**63)}, None),
        "p1": (1, {"plan": 1234567890123, 'say "hi"': 6}, 10),
    }
    _, _, _, body = encoded(table_of(people))
    stored = body.to_pybytes()

    table = pa.ipc.open_stream(body).read_all()
    assert table.schema == pa.schema(
        [
            ("row_hash", pa.int64()),
            ("attributes", pa.struct([(n, pa.int64()) for n in ATTRIBUTES[:3]])),
        ]
    )
    assert table.column("attributes").to_pylist() == [  # sorted by identifier
        {"plan": 1234567890123, 'say "hi"': 6, "ünï.😀.d": None},
        {"plan": None, 'say "hi"': None, "ünï.😀.d": -(2**63)},
    ]
    assert b"1234567890123" not in stored and b'"plan":' not in stored  # no JSON text
    assert b"-9223372036854775808" not in stored


def test_a_segments_streams_are_compressed_and_an_uncompressed_one_reads_the_same(tmp_path: Path):
    """The writer compresses both streams (zstd): sorted identifiers and the hashes of an
    attribute of few values take a fraction of their bytes. A segment a release before wrote
    uncompressed answers every read as the compressed one does."""
    people = {
        f"user-{i:09d}": (i * 7919, {"plan": [11, 22, 33, 44][i % 4], 'say "hi"': i}, i)
        for i in range(3000)
    }
    _, _, keys, body = encoded(table_of(people))
    plain = {}
    for name, stream in (("keys", keys), ("body", body)):
        table = pa.ipc.open_stream(stream).read_all()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        plain[name] = sink.getvalue()
        assert stream.size < plain[name].size * 0.75, name
    assert pa.ipc.open_stream(keys).read_all().column("identifier").to_pylist() == sorted(people)

    path = tmp_path / "segments.sqlite"
    store = StateFile(path, TABLES, "a")
    try:
        compressed = PipelineState(store, "a").fingerprints
        write_segment(compressed, "a/t", people)
        uncompressed = PipelineState(store, "b").fingerprints
        uncompressed._before_write("b/t")
        with uncompressed._store.transaction() as tx:
            uncompressed._drop_copy(tx, "b/t")
            uncompressed._segments.write(tx, "b/t", len(people), plain["keys"], plain["body"])
        universe = [*list(people)[:50], "user-nobody"]
        assert answers(compressed, "a/t", universe) == answers(uncompressed, "b/t", universe)
    finally:
        store.close()


def test_a_pyarrow_without_zstd_writes_segments_uncompressed(monkeypatch: pytest.MonkeyPatch):
    """A pyarrow built without the zstd codec imports the module and writes its segments
    uncompressed (which any reader reads), not an error."""
    people = {f"user-{i:09d}": (i, {"plan": i % 4}, i) for i in range(500)}
    compressed = encoded(table_of(people))[2]
    monkeypatch.setattr(segments_module, "_has_codec", lambda name: False)
    segments_module.write_options.cache_clear()
    try:
        _, _, keys, _ = encoded(table_of(people))
    finally:
        monkeypatch.undo()
        segments_module.write_options.cache_clear()
    assert keys.size > compressed.size
    assert pa.ipc.open_stream(keys).read_all().column("identifier").to_pylist() == sorted(people)


def write_segment(fingerprints: StoredFingerprints, scope: str, people: dict[str, Person]) -> None:
    """What a first sync's chain of writes does on PostgreSQL (`_write_segment`), forced on
    any store: the unit in one segment, the scope's copy dropped in the same transaction."""
    _, _, keys, body = encoded(table_of(people))
    fingerprints._before_write(scope)
    with fingerprints._store.transaction() as tx:
        fingerprints._drop_copy(tx, scope)
        fingerprints._segments.write(tx, scope, len(people), keys, body)
    fingerprints._touch(scope, list(people))


def answers(fingerprints: StoredFingerprints, scope: str, universe: list[str]) -> dict[str, Any]:
    """Every read a load makes, of every person of `universe` and every hash drawn."""
    found = fingerprints.fingerprints_of(scope, universe)
    hashes = [10, 11, -(2**63), 2**63 - 1, 12]
    pairs = [(i, h) for i in universe for h in hashes]
    kept = fingerprints.read_source_hashes(scope, 10**6)
    assert kept is not None
    size = len(kept)
    return {
        "fingerprints": {k: (v["r"], v.get("a")) for k, v in found.items()},
        "source_hashes": fingerprints.source_hashes_of(scope, universe),
        "changed": fingerprints.changed_sources(scope, pairs),
        "bulk": sorted(kept.to_pylist()),
        "bulk_at_most": (
            fingerprints.read_source_hashes(scope, size) is not None,
            size == 0 or fingerprints.read_source_hashes(scope, size - 1) is None,
        ),
        "holds_any": fingerprints.holds_any(scope),
    }


def copy_of(fingerprints: StoredFingerprints, scope: str) -> list[int] | None:
    copy = fingerprints.read_copy(scope, 10**6)
    return None if copy is None else sorted(copy.hashes)


def replay(
    ops: list[Any],
    segmented: StoredFingerprints,
    plain: StoredFingerprints,
    scopes: tuple[str, str],
    *,
    forced: bool,
) -> int:
    """Apply `ops` to both stores (`forced`: the segmented store writes a unit of people it
    holds none of as a segment when the op says so; else its writes go the way the store
    takes them); check every read after each; the segments written."""
    mine, theirs = scopes
    named = {i for op in ops if op[0] != "copy" for i in op[1]}
    universe = sorted(named | {"p0", "p1", "nobody"})
    held: set[str] = set()
    segments = 0
    for op in ops:
        if op[0] == "write":
            people: dict[str, Person] = op[1]
            if forced and op[2] and not held & set(people):
                write_segment(segmented, mine, people)
                segments += 1
            elif forced:
                segmented.remember(mine, dicts_of(people))
            else:
                segmented.remember_table(mine, table_of(people))
            plain.remember(theirs, dicts_of(people))
            held |= set(people)
        elif op[0] == "forget":
            segmented.forget(mine, op[1])
            plain.forget(theirs, op[1])
            held -= set(op[1])
        elif op[0] == "erase":
            segmented.erase(op[1])
            plain.erase(op[1])
            held -= set(op[1])
        else:
            segmented.keep_copy(mine)
            plain.keep_copy(theirs)
            assert copy_of(segmented, mine) == copy_of(plain, theirs)
        segmented.flush()
        assert answers(segmented, mine, universe) == answers(plain, theirs, universe), op
    return segments


WRITE_IN_SEGMENTS_THEN_CHANGE_AND_REVERT = [
    ("write", {"a": (1, {"plan": 5}, 10), "b": (1, {"plan": 5}, 11), "c": (2, {}, None)}, True),
    ("copy",),
    ("write", {"a": (2, {"plan": 6}, 12)}, False),  # a later load's change, per person
    ("copy",),
    ("write", {"a": (1, {"plan": 5}, 10)}, False),  # back to the row the segment holds
    ("copy",),
    ("forget", ["b"]),
    ("erase", ["a"]),
    ("copy",),
]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(OPS)
def test_a_store_with_segments_answers_as_one_of_a_row_per_person(tmp_path: Path, ops: list[Any]):
    """The local state file, its segments written as a first sync's chain writes them on
    PostgreSQL (the reads and the forgets are the same code on every store)."""
    path = tmp_path / f"{uuid.uuid4().hex}.sqlite"
    store = StateFile(path, TABLES, "a")
    try:
        segmented = PipelineState(store, "a").fingerprints
        plain = PipelineState(store, "b").fingerprints
        replay(ops, segmented, plain, ("a/t", "b/t"), forced=True)
    finally:
        store.close()


def test_a_person_changed_after_a_first_sync_then_back_is_a_change(tmp_path: Path):
    """The case a stale hash of a segment would lose: written in a segment, changed by a later
    load (a row of their own), then back to the row the segment holds."""
    store = StateFile(tmp_path / "state.sqlite", TABLES, "a")
    segmented = PipelineState(store, "a").fingerprints
    plain = PipelineState(store, "b").fingerprints

    ops = WRITE_IN_SEGMENTS_THEN_CHANGE_AND_REVERT
    assert replay(ops[:4], segmented, plain, ("a/t", "b/t"), forced=True) == 1

    assert copy_of(segmented, "a/t") == [11, 12]  # not the segment's 10 for a
    assert segmented.kept_sources("a/t").changed(["a", "b"], [10, 11]) == [0]  # read in bulk
    assert segmented.changed_sources("a/t", [("a", 10), ("b", 11)]) == {("a", 10)}
    assert replay(ops[4:], segmented, plain, ("a/t", "b/t"), forced=True) == 0
    store.close()


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[SqlStore]:  # noqa: F811
    schema = f"segments_{uuid.uuid4().hex[:8]}"
    store = SqlStore(postgres_url, schema, TABLES, "destination.customerio.state_url")
    try:
        yield store
    finally:
        with store.transaction() as tx:
            tx.execute(f'DROP SCHEMA "{schema}" CASCADE')
        store.close()


def test_a_scratch_table_gives_its_rows_to_one_upsert_only(postgres_store: SqlStore):
    """Rows go through a scratch table to an upsert of many rows or of a blob; a second upsert
    of the table in the same transaction takes only its own: a copy of hashes dropped between
    the two does not come back."""
    rows = pa.table({"size": pa.array([1]), "hashes": pa.array([b"\x00" * 8])})
    with postgres_store.transaction() as tx:
        for scope in ("p/a", "p/b"):
            tx.execute(
                "INSERT INTO {cio_source_hashes} (scope, size, hashes) VALUES (?, NULL, NULL)",
                [scope],
            )
        tx.upsert_table("cio_source_hashes", [], rows, {"scope": "p/a"}, blobs=True)
        tx.execute(
            "UPDATE {cio_source_hashes} SET size = NULL, hashes = NULL WHERE scope = ?", ["p/a"]
        )
        tx.upsert_table("cio_source_hashes", [], rows, {"scope": "p/b"}, blobs=True)
    kept = postgres_store.read("SELECT scope, size FROM {cio_source_hashes} ORDER BY scope")
    assert kept == [("p/a", None), ("p/b", 1)]


@pytest.mark.slow
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(OPS)
def test_postgres_with_its_first_syncs_in_segments_answers_as_a_row_per_person(
    postgres_store: SqlStore, ops: list[Any]
):
    """PostgreSQL, its writes as a load makes them (`remember_table`: a first sync's units in
    segments, any other write a row per person), against a row per person (`remember`)."""
    mine, theirs = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    segmented = PipelineState(postgres_store, mine).fingerprints
    plain = PipelineState(postgres_store, theirs).fingerprints
    replay(ops, segmented, plain, (f"{mine}/t", f"{theirs}/t"), forced=False)


@pytest.mark.slow
def test_postgres_writes_a_first_syncs_units_as_segments_and_the_rest_per_person(
    postgres_store: SqlStore,
):
    """The segment path runs where a first sync writes (and only there), and the revert case
    holds on PostgreSQL's own reads (its comparison in the database, its copy)."""
    segmented = PipelineState(postgres_store, "a").fingerprints
    plain = PipelineState(postgres_store, "b").fingerprints

    def counts(scope: str) -> tuple[int, int]:
        per_person = postgres_store.read(
            "SELECT count(*) FROM {cio_fingerprints} WHERE scope = ?", [scope]
        )[0][0]
        segments = postgres_store.read(
            "SELECT count(*) FROM {cio_fingerprint_segments} WHERE scope = ?", [scope]
        )[0][0]
        return per_person, segments

    def parts(scope: str) -> list[tuple[int, int]]:
        return parts_of(postgres_store, scope)

    first = [
        ("write", {f"u{i}": (1, {"plan": 5}, i) for i in range(u, u + 1_500)}, True)
        for u in (0, 1_500)
    ]
    replay(first, segmented, plain, ("a/t", "b/t"), forced=False)
    assert counts("a/t") == (0, 2)  # two units, two rows: no row per person
    assert parts("a/t") == [(0, 1_500), (1, 1_500)]  # each write wrote its hashes
    segmented.keep_copy("a/t")
    assert copy_of(segmented, "a/t") == list(range(3_000))  # made of the chain's writes
    mark = postgres_store.read("SELECT size, hashes FROM {cio_source_hashes} WHERE scope = 'a/t'")
    assert mark[0][0] == 3_000 and bytes(mark[0][1]).startswith(PARTS_MARK)  # not a blob

    later = [
        ("write", {"u1": (2, {"plan": 6}, -1), "u2000": (2, {"plan": 6}, -2)}, False),
        ("copy",),
        ("write", {"u1": (1, {"plan": 5}, 1), "u2000": (1, {"plan": 5}, 2_000)}, False),
        ("copy",),
        ("forget", ["u3", "u4"]),
        ("erase", ["u1", "u2999"]),
        ("copy",),
    ]
    replay(later, segmented, plain, ("a/t", "b/t"), forced=False)
    assert counts("a/t") == (1, 2)  # u2000 alone has a row of their own; both units rewritten
    assert parts("a/t") == []  # the first write after the first sync dropped them


@pytest.mark.slow
def test_a_copy_kept_in_parts_is_read_whole_or_not_at_all_and_an_erasure_drops_its_parts(
    postgres_store: SqlStore,
):
    """A first sync's copy on PostgreSQL is kept in parts (each write's hashes, written with
    it); a copy missing a part reads as no copy (never as fewer hashes); a new chain of the
    scope drops the parts of one that died; an erasure drops the parts with the copy."""
    fingerprints = PipelineState(postgres_store, "e").fingerprints
    units = [
        {f"u{i}": (1, {"plan": 5}, i) for i in range(start, start + 1_200)} for start in (0, 1_200)
    ]
    for unit in units:
        fingerprints.remember_table("e/t", table_of(unit))
    fingerprints.flush()
    fingerprints.keep_copy("e/t")
    assert copy_of(fingerprints, "e/t") == list(range(2_400))

    with postgres_store.transaction() as tx:
        tx.execute("DELETE FROM {cio_source_hash_parts} WHERE scope = 'e/t' AND part = 1")
    assert copy_of(fingerprints, "e/t") is None and parts_of(postgres_store, "e/t") == [(0, 1_200)]

    fingerprints.erase(["u7"])
    assert parts_of(postgres_store, "e/t") == [] and copy_of(fingerprints, "e/t") is None
    fingerprints.keep_copy("e/t")  # made by the server, in one blob
    assert copy_of(fingerprints, "e/t") == [i for i in range(2_400) if i != 7]

    dying = PipelineState(postgres_store, "f").fingerprints
    dying.remember_table("f/t", table_of(units[0]))  # a chain whose runner dies: no `keep_copy`
    dying.flush()
    assert parts_of(postgres_store, "f/t") == [(0, 1_200)]
    nxt = PipelineState(postgres_store, "f").fingerprints  # the next runner's completed load
    nxt.keep_copy("f/t")
    assert parts_of(postgres_store, "f/t") == [] and copy_of(nxt, "f/t") == list(range(1_200))
    nxt.forget("f/t", list(units[0]))  # the scope holds nobody: the next write starts a chain
    nxt.remember_table("f/t", table_of(units[1]))
    nxt.flush()
    nxt.keep_copy("f/t")
    assert parts_of(postgres_store, "f/t") == [(0, 1_200)]
    assert copy_of(nxt, "f/t") == list(range(1_200, 2_400))


@pytest.mark.slow
def test_a_copy_in_parts_too_large_to_keep_is_not_kept_and_leaves_no_part(
    postgres_store: SqlStore, monkeypatch: pytest.MonkeyPatch
):
    """A first sync's copy over `COPY_MOST_BYTES` is not kept (its loads read the hashes the
    slower way), and the parts its writes wrote go with it."""
    monkeypatch.setattr(fingerprints_module, "COPY_MOST_BYTES", 8 * 2_400 - 1)
    fingerprints = PipelineState(postgres_store, "g").fingerprints
    for start in (0, 1_200):
        fingerprints.remember_table(
            "g/t", table_of({f"u{i}": (1, {"plan": 5}, i) for i in range(start, start + 1_200)})
        )
    fingerprints.flush()
    assert parts_of(postgres_store, "g/t") == [(0, 1_200), (1, 1_200)]

    fingerprints.keep_copy("g/t")

    assert copy_of(fingerprints, "g/t") is None and parts_of(postgres_store, "g/t") == []
    assert sorted(fingerprints.read_source_hashes("g/t", 10**6).to_pylist()) == list(range(2_400))


def parts_of(store: SqlStore, scope: str) -> list[tuple[int, int]]:
    """The parts of a copy of the scope (`cio_source_hash_parts`): each one's number and count
    of hashes."""
    rows = store.read(
        "SELECT part, hashes FROM {cio_source_hash_parts} WHERE scope = ? ORDER BY part", [scope]
    )
    return [(part, len(hashes) // 8) for part, hashes in rows]


@pytest.mark.slow
def test_postgres_keeps_a_first_syncs_attribute_hashes_as_columns_and_writes_rows_as_before(
    postgres_store: SqlStore,
):
    """On PostgreSQL a first sync's unit is a segment whose body holds the attribute hashes
    as columns; a unit that is not (its chain broke: a person of it in a segment before) goes a
    row per person, whose JSON, written from the columns on the writer thread, is byte for
    byte what `remember` writes."""
    fingerprints = PipelineState(postgres_store, "a").fingerprints
    first = {
        f"u{i}": (1, {"plan": i, 'say "hi"': -i} if i % 3 else {"plan": i}, i) for i in range(1_500)
    }
    again = {"u1": (2, {"ünï.😀.d": 7, "plan": 8}, -1), "v": (3, {}, None)}

    fingerprints.remember_table("a/t", table_of(first))
    fingerprints.remember_table("a/t", table_of(again))
    fingerprints.flush()

    blobs = postgres_store.read_blobs(
        "SELECT size, fingerprints FROM {cio_fingerprint_segments} WHERE scope = ?", ["a/t"]
    )
    assert [size for size, _ in blobs] == [1_500]
    body = pa.ipc.open_stream(pa.py_buffer(blobs[0][1])).read_all()
    assert body.schema.field("attributes").type == pa.struct(
        [("plan", pa.int64()), ('say "hi"', pa.int64())]
    )
    rows = postgres_store.read(
        "SELECT identifier, attributes FROM {cio_fingerprints} WHERE scope = ?", ["a/t"]
    )
    assert sorted((i, bytes(a)) for i, a in rows) == [
        ("u1", orjson.dumps({"plan": 8, "ünï.😀.d": 7})),
        ("v", b"{}"),
    ]
    found = fingerprints.fingerprints_of("a/t", ["u1", "u2", "u3", "v"])
    assert {k: (v["r"], v.get("a")) for k, v in found.items()} == {
        "u1": (2, {"ünï.😀.d": 7, "plan": 8}),
        "u2": (1, {"plan": 2, 'say "hi"': -2}),
        "u3": (1, {"plan": 3}),
        "v": (3, {}),
    }


def people_resource(rows: list[dict[str, Any]], arrow: bool) -> Any:
    data: Any = rows
    if arrow:
        data = [pa.Table.from_pylist(rows, schema=ROWS_SCHEMA)]
    return customerio_adapter(
        dlt.resource(data, name="people"), action="identify", identifier="uid", changes_only=True
    )


ROWS_SCHEMA = pa.schema(
    [("uid", pa.int64()), ("plan", pa.string()), ("city", pa.string()), ("score", pa.int64())]
)


@pytest.fixture(params=["file", "sqlite_url", "duckdb_url", "postgresql"])
def state_keys(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The state keys of a store of each kind, an engine reaching it and its tables' prefix."""
    kind = request.param
    schema = None
    if kind == "file":
        url, keys = f"sqlite:///{state_path(tmp_path / 'pipelines' / 'upgraded')}", {}
    elif kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
        schema = f"layout_{uuid.uuid4().hex[:8]}"
        keys = {"state_url": url, "state_schema": schema}
    else:
        suffix = "db" if kind == "sqlite_url" else "duckdb"
        url = f"{kind.split('_')[0]}:///{tmp_path / f'state.{suffix}'}"
        keys = {"state_url": url}
    engine = sa.create_engine(url)
    try:
        yield {"keys": keys, "engine": engine, "prefix": f'"{schema}".' if schema else ""}
    finally:
        if schema:
            with engine.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        engine.dispose()


def let_go(pipeline: dlt.Pipeline, keys: dict[str, Any]) -> None:
    """Close the pipeline's state in this process, as a runner that ends does."""
    if "state_url" not in keys:
        release_state(pipeline.working_dir)
        return
    location = (keys["state_url"], keys.get("state_schema"))
    state = states._states.pop((*location, pipeline.pipeline_name))
    backend._stores.pop(location)
    state.close()


@pytest.mark.slow
@pytest.mark.parametrize("layout", [2, 3])
@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "dicts"])
def test_a_store_of_an_earlier_layout_is_upgraded_and_resends_nobody(
    httpx_mock: HTTPXMock, tmp_path: Path, state_keys: dict[str, Any], arrow: bool, layout: int
):
    """A store an earlier release wrote (layout 2: a row per person, before segments; layout
    3: before copies in parts) is upgraded on open (layout 4, the tables it lacks made;
    PostgreSQL: their blobs stored uncompressed) and its fingerprints and its copy (one blob)
    read as they are: unchanged rows send nothing, one changed attribute only that
    attribute."""
    sent = capture_batches(httpx_mock)
    keys, engine, prefix = state_keys["keys"], state_keys["engine"], state_keys["prefix"]
    destination = customerio(site_id="s", api_key="k", **keys)
    pipeline = dlt.pipeline(
        "upgraded", destination=destination, pipelines_dir=str(tmp_path / "pipelines")
    )
    pipeline.run(people_resource([{"uid": 0, "plan": "x", "city": "y", "score": 0}], arrow))
    pipeline.run(people_resource(ROWS, arrow))  # not a first sync: a row per person
    let_go(pipeline, keys)
    with engine.begin() as connection:  # back to the layout, as its release left the store
        if layout == 2:
            connection.exec_driver_sql(f"DROP TABLE {prefix}cio_fingerprint_segments")
        connection.exec_driver_sql(f"DROP TABLE {prefix}cio_source_hash_parts")
        connection.exec_driver_sql(
            f"UPDATE {prefix}cio_state_meta SET value = '{layout}' WHERE name = 'schema_version'"
        )
        copy = connection.exec_driver_sql(
            f"SELECT size, hashes FROM {prefix}cio_source_hashes WHERE scope = 'upgraded/people'"
        ).one()
    kept = 1 + len(ROWS) if arrow else 0  # (a dict row has no source-row hash)
    assert copy[0] == kept and len(copy[1]) == 8 * kept  # a copy in one blob
    sent.clear()

    pipeline.run(people_resource(ROWS, arrow))

    assert sent == []
    pipeline.run(people_resource([{**ROWS[0], "plan": "team"}, *ROWS[1:]], arrow))
    assert sent == [identify("1", {"plan": "team"})]
    with engine.connect() as connection:
        version = connection.exec_driver_sql(
            f"SELECT value FROM {prefix}cio_state_meta WHERE name = 'schema_version'"
        ).scalar()
        segments = connection.exec_driver_sql(
            f"SELECT count(*) FROM {prefix}cio_fingerprint_segments"
        ).scalar()
        storage = None
        if "state_schema" in keys:
            storage = connection.exec_driver_sql(
                "SELECT string_agg(attname || ':' || attstorage::text, ',' ORDER BY attname)"
                " FROM pg_attribute WHERE attrelid = %s::regclass AND attname IN"
                " ('keys', 'fingerprints')",
                (f"{prefix}cio_fingerprint_segments",),
            ).scalar()
            storage += (
                ","
                + connection.exec_driver_sql(
                    "SELECT attstorage::text FROM pg_attribute WHERE attrelid = %s::regclass"
                    " AND attname = 'hashes'",
                    (f"{prefix}cio_source_hash_parts",),
                ).scalar()
            )
    assert version == str(SCHEMA_VERSION) == "4"
    assert segments == 0 or layout == 3  # (layout 3 kept the first run's, if it wrote one)
    assert storage in (None, "fingerprints:e,keys:e,e")


@pytest.mark.slow
def test_a_person_who_changes_after_a_first_sync_on_postgres_and_changes_back_is_sent_back(
    tmp_path: Path,
    emulator: Emulator,
    database: Database,  # noqa: F811
):
    """End to end, on runners that start empty: a first sync keeps its fingerprints in
    segments; a later load changes a person (a row of their own), the next one brings back the
    row the segment holds: sent, whether the load reads the kept hashes in bulk (all rows) or
    looks its rows up (a few rows)."""

    def people(count: int, changed: dict[int, str]) -> Any:
        rows = pa.table(
            {
                "uid": [f"u{i}" for i in range(count)],
                "plan": [changed.get(i, "pro") for i in range(count)],
            }
        )
        resource = dlt.resource(rows, name="people")
        return customerio_adapter(resource, action="identify", identifier="uid", changes_only=True)

    def run(count: int, changed: dict[int, str]) -> dict[str, Any]:
        mark = len(emulator.requests)
        fresh_runner(tmp_path, emulator, database, "segments").run(people(count, changed))
        sent = [r for r in emulator.requests[mark:] if r.path.endswith("/batch")]
        plans = {p["identifiers"]["id"]: p["attributes"]["plan"] for p in emulator.people}
        return {"ops": sum(r.ops for r in sent), "plans": plans}

    assert run(2_000, {})["ops"] == 2_000
    with database.engine.connect() as connection:
        kept = connection.exec_driver_sql(
            f"SELECT (SELECT count(*) FROM {database.state}.cio_fingerprints),"
            f" (SELECT sum(size) FROM {database.state}.cio_fingerprint_segments)"
        ).one()
    assert tuple(kept) == (0, 2_000)  # the first sync's, in segments alone

    assert run(2_000, {3: "team"})["ops"] == 1  # in bulk
    back = run(2_000, {})
    assert back["ops"] == 1 and back["plans"]["u3"] == "pro"
    assert run(10, {4: "team"})["ops"] == 1  # looked up
    back = run(10, {})
    assert back["ops"] == 1 and back["plans"]["u4"] == "pro"
    assert run(2_000, {})["ops"] == 0


@pytest.mark.slow
def test_a_first_sync_over_the_most_people_in_segments_writes_the_rest_per_person(
    postgres_store: SqlStore, monkeypatch: pytest.MonkeyPatch
):
    """Past `CHAIN_MOST` people (the check of a unit against the segments before it grows with
    their square), a first sync's units go a row per person; every read answers the same."""
    monkeypatch.setattr(fingerprints_module, "CHAIN_MOST", 2_000)
    segmented = PipelineState(postgres_store, "a").fingerprints
    plain = PipelineState(postgres_store, "b").fingerprints
    units = [
        ("write", {f"u{i}": (1, {"plan": 5}, i) for i in range(u, u + 1_500)}, True)
        for u in (0, 1_500, 3_000)
    ]

    replay([*units, ("copy",)], segmented, plain, ("a/t", "b/t"), forced=False)

    rows = postgres_store.read(
        "SELECT (SELECT count(*) FROM {cio_fingerprints} WHERE scope = 'a/t'),"
        " (SELECT count(*) FROM {cio_fingerprint_segments} WHERE scope = 'a/t')"
    )
    assert tuple(rows[0]) == (3_000, 1)


def segment_people(store: SqlStore, scope: str) -> list[str]:
    """Every identifier the segments of `scope` hold, once per segment that holds it."""
    people: list[str] = []
    for _, blob in store.read_blobs(
        "SELECT segment, keys FROM {cio_fingerprint_segments} WHERE scope = ?", [scope]
    ):
        table = pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
        people += table.column("identifier").to_pylist()
    return people


def first_sync(fingerprints: StoredFingerprints, scope: str, people: int) -> None:
    fingerprints.remember_table(
        scope,
        pa.table(
            {
                "identifier": [f"p{i}" for i in range(people)],
                "row_hash": [1] * people,
                "attributes": [b"{}"] * people,
                "source_hash": list(range(people)),
            },
            schema=FINGERPRINT_SCHEMA,
        ),
    )
    fingerprints.flush()


@pytest.mark.slow
def test_a_forget_and_an_erasure_of_one_segment_at_once_both_take_their_person_out(
    postgres_store: SqlStore, monkeypatch: pytest.MonkeyPatch
):
    """A mirror's removal (forget) and a delete table's erasure in the same process, of two
    people of one segment: the erasure waits for the forget's rewrite of the segment and
    rewrites the segment that replaced it, so neither person comes back (no stale copy of
    the segment survives beside the new one). The erasure is let in while the forget holds
    its rewrite uncommitted, once the database shows it waiting on a lock: no timer."""
    fingerprints = PipelineState(postgres_store, "a").fingerprints
    first_sync(fingerprints, "a/t", 1_200)
    assert postgres_store.read("SELECT count(*) FROM {cio_fingerprint_segments}")[0][0] == 1
    written, release = threading.Event(), threading.Event()
    write = segments_module.Segments.write

    def held_open(tx: Any, scope: str, size: int, keys: Any, body: Any) -> int:
        segment = write(tx, scope, size, keys, body)
        if threading.current_thread().name == "forget":
            written.set()
            assert release.wait(120)
        return segment

    monkeypatch.setattr(segments_module.Segments, "write", staticmethod(held_open))
    errors: list[BaseException] = []

    def run(call: Any) -> None:
        try:
            call()
        except BaseException as error:
            errors.append(error)

    forget = threading.Thread(
        target=run, args=(lambda: fingerprints.forget("a/t", ["p1"]),), name="forget"
    )
    forget.start()
    assert written.wait(120)
    erase = threading.Thread(target=run, args=(lambda: fingerprints.erase(["p2"]),))
    erase.start()
    waiting = 0
    for _ in range(120_000):  # until the erasure waits on the forget's locks
        waiting = postgres_store.read(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        )[0][0]
        if waiting or not erase.is_alive():
            break
        erase.join(0.001)
    release.set()
    forget.join(120)
    erase.join(120)
    assert not errors and waiting

    people = segment_people(postgres_store, "a/t")
    assert "p1" not in people and "p2" not in people
    assert len(people) == len(set(people)) == 1_198  # one segment, its people once each
    assert sorted(fingerprints.fingerprints_of("a/t", ["p1", "p2", "p3"])) == ["p3"]


@pytest.mark.slow
def test_a_segment_rewritten_between_a_reads_statements_is_read_again(
    postgres_store: SqlStore, monkeypatch: pytest.MonkeyPatch
):
    """A lookup lists the scope's segments, then reads their keys and bodies: one rewritten
    between (another thread's forget) is listed again with the one that replaced it, so no
    person of it is missed (and sent again in full)."""
    fingerprints = PipelineState(postgres_store, "a").fingerprints
    first_sync(fingerprints, "a/t", 1_200)
    keys = segments_module.Segments.keys
    calls = []

    def rewritten_first(self: Any, reader: Any, held: Any) -> Any:
        if not calls:  # the first time, after the list was read: a forget rewrites it
            calls.append(1)
            other = threading.Thread(target=fingerprints.forget, args=("a/t", ["p500"]))
            other.start()
            other.join()
        return keys(self, reader, held)

    monkeypatch.setattr(segments_module.Segments, "keys", rewritten_first)
    found = fingerprints.fingerprints_of("a/t", [f"p{i}" for i in range(100)])
    assert calls and sorted(found) == sorted(f"p{i}" for i in range(100))
    assert fingerprints.source_hashes_of("a/t", ["p7", "p500"]) == {"p7": 7}


@pytest.mark.slow
def test_a_first_sync_that_wrote_a_unit_per_person_writes_no_segment_after_it(
    postgres_store: SqlStore, monkeypatch: pytest.MonkeyPatch
):
    """A first unit over `CHAIN_MOST` goes a row per person; a later unit of the same first
    sync with one of those people again must not go into a segment under their own row
    (which would hide the later value): it goes per person too, and answers as a store of
    one row per person does."""
    monkeypatch.setattr(fingerprints_module, "CHAIN_MOST", 1_000)
    segmented = PipelineState(postgres_store, "a").fingerprints
    plain = PipelineState(postgres_store, "b").fingerprints
    units = [
        ("write", {f"u{i}": (1, {"plan": 5}, i) for i in range(1_500)}, True),
        ("write", {"u1": (2, {"plan": 6}, -1), "u9000": (2, {"plan": 6}, -2)}, True),
        ("copy",),
    ]
    replay(units, segmented, plain, ("a/t", "b/t"), forced=False)
    assert (
        postgres_store.read("SELECT count(*) FROM {cio_fingerprint_segments} WHERE scope = 'a/t'")[
            0
        ][0]
        == 0
    )
