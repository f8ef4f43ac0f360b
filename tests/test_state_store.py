"""The state store seam: the same repositories over the local file and over `state_url`
(SQLite and DuckDB URLs here; PostgreSQL in tests/test_state_url.py)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import sqlalchemy as sa

from cio_destination import CustomerioTerminalError
from cio_destination.configuration import CustomerioConfiguration
from cio_destination.entries import Rejection
from cio_destination.report import key_columns
from cio_destination.state import TABLES, PipelineState
from cio_destination.state.backend import SCHEMA_VERSION, SqlStore, StateFile, StateStore

from .conftest import check_small_load_lookup


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def duckdb_url(tmp_path: Path) -> str:
    return f"duckdb:///{tmp_path / 'state.duckdb'}"


@pytest.fixture(params=["file", "sqlite_url", "duckdb_url"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "file":
        made: StateStore = StateFile(tmp_path / "state.sqlite", TABLES, "p")
    else:
        url = sqlite_url(tmp_path) if request.param == "sqlite_url" else duckdb_url(tmp_path)
        made = SqlStore(url, None, TABLES, "destination.customerio.state_url")
    yield made
    made.close()


def rejection(person: str, reason: str = "invalid_value", **row: object) -> Rejection:
    return Rejection(
        row={"uid": person, **row}, row_key=person, reason=reason, field="x", message="m"
    )


def test_every_repository_keeps_its_rows_per_pipeline(store: StateStore):
    mine, other = PipelineState(store, "p"), PipelineState(store, "q")
    mine.rejects.record("1.1", "people", "identify", [rejection("u1")], person_column="uid")
    mine.reports.record(batch_record("1.1"))
    mine.fingerprints.remember("p/people", {"u1": {"r": -(2**63), "a": {"plan": 2**63 - 1}}})
    mine.snapshots.record("p/people", {"u1", "u2"})
    assert mine.ledger.claim("receipts", "k1", "1.1") is None
    mine.ledger.mark_sent("k1", "d1")

    assert [r["row_key"] for r in mine.rejects.rows()] == ["u1"]
    assert [r["load_id"] for r in mine.reports.of_load("1.1")] == ["1.1"]
    assert mine.reports.latest_load_id() == "1.1"
    assert mine.fingerprints.fingerprints_of("p/people", ["u1", "u9"])["u1"].get("a") == {
        "plan": 2**63 - 1
    }
    assert mine.snapshots.snapshot_of("p/people") == {"u1", "u2"}
    assert mine.ledger.blockers(["k1", "k2"]) == {"k1": "sent"}
    # another pipeline in the same store sees none of it, and has its own ledger
    assert list(other.rejects.rows()) == [] and other.reports.latest_load_id() is None
    assert other.ledger.blockers(["k1"]) == {}
    assert other.ledger.identity()[0] != mine.ledger.identity()[0]


def batch_record(load_id: str, finished_at: float = 10.0) -> dict[str, object]:
    counters = dict.fromkeys(
        ("rows_in", "operations", "accepted", "rejected", "skipped", "requests", "retries"), 1
    )
    return {
        "load_id": load_id,
        "table_name": "people",
        "action": "identify",
        "batch_id": "b",
        "dry_run": 0,
        **counters,
        "throttled": 0,
        "throttled_seconds": 0.0,
        "started_at": finished_at - 1,
        "finished_at": finished_at,
        "reasons": "{}",
        "samples": "[]",
    }


def test_an_erasure_purges_the_person_from_rejects_fingerprints_and_snapshots(store: StateStore):
    state = PipelineState(store, "p")
    state.rejects.record(
        "1.1", "orders", "event", [rejection("order-7", amount=1)], person_column="uid"
    )
    state.rejects.record("1.1", "people", "identify", [rejection("u2")], person_column="uid")
    state.fingerprints.remember("p/people", {"u1": {"r": 1, "a": {}}, "u2": {"r": 2, "a": {}}})
    state.snapshots.record("p/people", {"u1", "u2"})

    state.erase(["order-7", "u1"])  # a row keyed by its event, and a person

    assert [r["row_key"] for r in state.rejects.rows()] == ["u2"]
    assert set(state.fingerprints.fingerprints_of("p/people", ["u1", "u2"])) == {"u2"}
    assert state.snapshots.snapshot_of("p/people") == {"u2"}


def test_rejected_rows_and_reports_older_than_the_retention_are_purged(store: StateStore):
    state = PipelineState(store, "p")
    state.reports.record(batch_record("1.1", finished_at=100.0))
    state.reports.record(batch_record("2.2", finished_at=300.0))
    state.rejects.record("2.2", "people", "identify", [rejection("u1")])

    state.purge_older_than(200.0)
    assert state.reports.of_load("1.1") == [] and len(state.reports.of_load("2.2")) == 1
    assert len(list(state.rejects.rows())) == 1  # recorded now: younger than the cutoff

    state.purge_older_than(float("inf"))
    assert list(state.rejects.rows()) == []


def test_keys_only_keeps_no_column_but_those_that_identify_the_row(tmp_path: Path):
    from cio_destination.mapping import compile_mapping
    from cio_destination.mapping_keys import TableMapping

    compiled = compile_mapping(
        "orders",
        TableMapping(action="event", identifier="uid", event_name="buy", event_id="order_id"),
        {c: {"name": c, "data_type": "text"} for c in ("uid", "order_id", "email", "address")},
    )
    state = PipelineState.in_file(tmp_path / "state.sqlite")
    row = {"uid": "u1", "order_id": "o1", "email": "a@b.c", "address": "1 Main St"}
    record = Rejection(row=row, row_key="o1", reason="invalid_value", field="x", message="m")
    state.rejects.record("1.1", "orders", "event", [record], keep_columns=key_columns(compiled))

    assert [r["row"] for r in state.rejects.rows()] == [{"uid": "u1", "order_id": "o1"}]


def test_the_lease_goes_to_one_holder_until_its_heartbeat_stops(store: StateStore):
    runs = PipelineState(store, "p").runs
    assert runs.take_lease("a", "host-a", 1, timeout=3600).holder == "a"
    found = runs.take_lease("b", "host-b", 2, timeout=3600)
    assert (found.holder, found.host, found.pid) == ("a", "host-a", 1)
    assert runs.beat("a") and not runs.beat("b")
    runs.release("a")
    # a holder whose beats stopped (its timeout, -1 here, makes its last beat already too old)
    assert runs.take_lease("b", "host-b", 2, timeout=-1).holder == "b"
    assert runs.take_lease("c", "host-c", 3, timeout=3600).holder == "c"  # taken over
    assert not runs.beat("b")
    runs.release("b")  # no longer its own: nothing happens
    assert runs.take_lease("d", "host-d", 4, timeout=3600).holder == "c"


def test_the_layout_version_is_recorded_and_a_newer_one_refused(tmp_path: Path):
    url = sqlite_url(tmp_path)
    SqlStore(url, None, TABLES, "k").close()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        version = connection.exec_driver_sql(
            "SELECT value FROM cio_state_meta WHERE name = 'schema_version'"
        ).scalar()
        assert version == str(SCHEMA_VERSION)
        connection.exec_driver_sql(
            "UPDATE cio_state_meta SET value = ? WHERE name = 'schema_version'",
            (str(SCHEMA_VERSION + 1),),
        )
    engine.dispose()

    with pytest.raises(CustomerioTerminalError, match="newer release"):
        SqlStore(url, None, TABLES, "k")


@pytest.mark.parametrize("kind", ["file", "sqlite_url", "duckdb_url"])
def test_a_store_of_layout_1_is_migrated_to_keep_copies_of_source_hashes(tmp_path: Path, kind: str):
    """Layout 2 added `cio_source_hashes`; a store of layout 1 gets it on open, its
    fingerprints kept, and records this release's layout (a release of layout 1, which would
    write fingerprints without dropping the copies, then refuses the store)."""

    def opened() -> StateStore:
        if kind == "file":
            return StateFile(tmp_path / "state.sqlite", TABLES, "p")
        url = sqlite_url(tmp_path) if kind == "sqlite_url" else duckdb_url(tmp_path)
        return SqlStore(url, None, TABLES, "k")

    store = opened()
    PipelineState(store, "p").fingerprints.remember("p/t", {"u": {"r": 1, "a": {}, "s": 7}})
    with store.transaction() as tx:  # back to layout 1
        tx.execute("DROP TABLE {cio_source_hashes}")
        tx.execute("UPDATE {cio_state_meta} SET value = '1' WHERE name = 'schema_version'")
    store.close()

    store = opened()

    assert store.read("SELECT value FROM {cio_state_meta} WHERE name = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    fingerprints = PipelineState(store, "p").fingerprints
    assert fingerprints.read_copy("p/t", 10) is None
    fingerprints.keep_copy("p/t")
    copy = fingerprints.read_copy("p/t", 10)
    assert copy is not None and list(copy.hashes) == [7]
    store.close()


def test_a_state_file_of_the_layout_before_versions_is_migrated(tmp_path: Path):
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE send_ledger (send_key TEXT PRIMARY KEY, table_name TEXT NOT NULL,
                state TEXT NOT NULL, delivery_id TEXT, load_id TEXT NOT NULL,
                updated_at REAL NOT NULL);
            CREATE TABLE ledger_meta (name TEXT PRIMARY KEY, value NOT NULL);
            INSERT INTO send_ledger VALUES ('k1', 'receipts', 'sent', 'd1', '1.1', 5.0);
            INSERT INTO ledger_meta VALUES ('ledger_id', 'abc'), ('generation', 7);
            CREATE TABLE fingerprints (scope TEXT NOT NULL, identifier TEXT NOT NULL,
                row_hash INTEGER NOT NULL, attributes BLOB NOT NULL, source_hash INTEGER,
                PRIMARY KEY (scope, identifier));
            INSERT INTO fingerprints VALUES ('p/people', 'u1', 3, X'7B7D', NULL);
            """
        )
    db.close()

    state = PipelineState.in_file(path, "p")

    assert state.ledger.identity() == ("abc", 7)  # the same ledger: loads that recorded it go on
    assert state.ledger.blockers(["k1"]) == {"k1": "sent"}
    assert set(state.fingerprints.fingerprints_of("p/people", ["u1"])) == {"u1"}
    state.close()


def test_state_writes_are_batched_never_one_statement_per_row(tmp_path: Path):
    statements: list[str] = []
    store = SqlStore(sqlite_url(tmp_path), None, TABLES, "k")
    state = PipelineState(store, "p")
    sa.event.listen(
        store._engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *args: statements.append(statement),
    )
    people = {f"u{i}": {"r": i, "a": {"plan": i}} for i in range(2_000)}

    state.fingerprints.remember("p/people", people)
    state.rejects.record("1.1", "people", "identify", [rejection(f"u{i}") for i in range(1_000)])
    state.fingerprints.fingerprints_of("p/people", list(people))

    writes = [s for s in statements if s.startswith("INSERT")]
    reads = [s for s in statements if s.startswith("SELECT")]
    assert len(writes) == 4 + 2 + 1  # 500 rows per statement; one drops the copy of kept hashes
    assert len(reads) == 4
    assert len(state.fingerprints.fingerprints_of("p/people", list(people))) == 2_000
    store.close()


def test_fingerprints_url_is_a_deprecated_alias_of_state_url(caplog: pytest.LogCaptureFixture):
    import cio_destination.configuration as configuration

    configuration._alias_logged = False
    config = CustomerioConfiguration(fingerprints_url="sqlite:///x.db")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="cio_destination"):
        assert config.state_location() == (
            "sqlite:///x.db",
            None,
            "destination.customerio.fingerprints_url",
        )
        config.state_location()
    assert caplog.text.count("fingerprints_url is deprecated") == 1

    both = CustomerioConfiguration(
        state_url="sqlite:///y.db",  # type: ignore[arg-type]
        fingerprints_url="sqlite:///x.db",  # type: ignore[arg-type]
        state_schema="cio",
    )
    assert both.state_location() == ("sqlite:///y.db", "cio", "destination.customerio.state_url")
    assert CustomerioConfiguration().state_location() is None


def test_changed_sources_are_those_whose_kept_hash_differs_or_is_missing(store: StateStore):
    fingerprints = PipelineState(store, "p").fingerprints
    fingerprints.remember("p/people", {"a": {"r": 1, "a": {}, "s": 10}, "b": {"r": 2, "a": {}}})
    asked = [("a", 10), ("a", 11), ("b", 20), ("c", 30)]  # a person twice in one batch, too

    assert fingerprints.changed_sources("p/people", asked) == {("a", 11), ("b", 20), ("c", 30)}


def test_only_the_ledger_s_claims_are_synced_to_disk_before_they_return(tmp_path: Path):
    state = PipelineState.in_file(tmp_path / "state.sqlite")
    store = state.store
    assert isinstance(store, StateFile)
    synced: list[tuple[str, int]] = []
    transaction = store.transaction
    writing = [""]

    def watched(*, durable: bool = False) -> Any:
        @contextlib.contextmanager
        def block() -> Iterator[Any]:
            with transaction(durable=durable) as tx:
                level = tx.execute("PRAGMA synchronous")[0][0]
                yield tx
            synced.append((writing[0], level))

        return block()

    store.transaction = watched  # type: ignore[method-assign]
    for name, write in [
        ("claim", lambda: state.ledger.claim("receipts", "k1", "1.1")),
        ("sent", lambda: state.ledger.mark_sent("k1", "d1")),
        ("fingerprints", lambda: state.fingerprints.remember("p/t", {"u": {"r": 1, "a": {}}})),
        ("rejects", lambda: state.rejects.record("1.1", "t", "identify", [rejection("u")])),
        ("reports", lambda: state.reports.record(batch_record("1.1"))),
    ]:
        writing[0] = name
        write()

    # 2 = FULL (synced at commit), 1 = NORMAL (safe from a crash of the process, in WAL mode)
    assert synced == [
        ("claim", 2),
        ("sent", 1),
        ("fingerprints", 1),  # the copy of the kept hashes dropped in the same transaction
        ("rejects", 1),
        ("reports", 1),
    ]
    state.close()


def arrow_fingerprints(people: dict[str, tuple[int, bytes, int | None]]) -> Any:

    from cio_destination.state.fingerprints import FINGERPRINT_SCHEMA

    columns = list(zip(*((k, *v) for k, v in people.items()), strict=True))
    return pa.table([list(c) for c in columns], schema=FINGERPRINT_SCHEMA)


def test_an_arrow_table_of_fingerprints_is_kept_as_remember_keeps_them(store: StateStore):
    fingerprints = PipelineState(store, "p").fingerprints
    odd = ["tab\there", "line\nbreak", 'quote"', "ünï", "\\N", ""]
    people = {
        f"{odd[i % len(odd)]}-{i}": (-(2**63) + i, b'{"pl\\"an":%d}' % i, None if i % 3 else i)
        for i in range(1_200)  # over the rows that make a write a COPY where there is one
    }

    fingerprints.remember_table("p/people", arrow_fingerprints(people))
    fingerprints.remember_table("p/people", arrow_fingerprints(dict(list(people.items())[:10])))

    found = fingerprints.fingerprints_of("p/people", list(people))
    assert {k: (v["r"], v.get("a")) for k, v in found.items()} == {
        k: (r, orjson.loads(a)) for k, (r, a, _) in people.items()
    }
    hashes = sorted(s for _, _, s in people.values() if s is not None)
    assert sorted(fingerprints.read_source_hashes("p/people", 400).to_pylist()) == hashes
    assert fingerprints.read_source_hashes("p/people", 399) is None  # more than that


def test_a_load_reads_the_kept_source_hashes_in_bulk_once_its_rows_come_to_a_twentieth(
    store: StateStore,
):
    fingerprints = PipelineState(store, "p").fingerprints
    people = {f"u{i}": {"r": i, "a": {}, "s": 10_000 + i} for i in range(1_500)}
    fingerprints.remember("p/people", people)
    kept = fingerprints.kept_sources("p/people")

    assert kept.changed(["u1"], [2]) == [0]  # 1 row against 1,500 kept: looked up
    assert kept.changed(["u1", None, "u3", "u99"], [10_001, 5, 7, 99]) == [1, 2, 3]
    assert not kept.bulk
    rows = [f"u{i}" for i in range(100)]
    assert kept.changed(rows, [10_000 + i + 90_000 * (i == 7) for i in range(100)]) == [7]
    assert kept.bulk  # 105 rows so far: 1,500 kept are no more than 20 times as many
    assert kept.changed(["u5", "u6", "u2000"], [10_005, 7, 7]) == [1, 2]


def test_a_small_load_looks_up_arrow_hashes_unit_by_unit_and_maps_only_the_changed_rows(
    store: StateStore,
):
    """A load hands its rows' identifiers and hashes over as Arrow arrays. Looked up unit by
    unit (the load's rows are under a twentieth of the hashes kept: the usual incremental
    run), the changed row is mapped and the unchanged ones are not."""
    check_small_load_lookup(PipelineState(store, "p").fingerprints)


def test_a_load_reads_the_kept_source_hashes_ahead_on_a_helper_thread(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
):
    """`prefetch` starts the bulk read `changed` would make, on another thread (the database
    reads while the rows are hashed); `changed` then uses it and reads nothing itself."""
    import threading

    fingerprints = PipelineState(store, "p").fingerprints
    fingerprints.remember("p/people", {f"u{i}": {"r": i, "a": {}, "s": i} for i in range(3)})
    reads: list[str] = []
    read = fingerprints.read_source_hashes

    def spied(scope: str, most: int) -> Any:
        reads.append(threading.current_thread().name)
        return read(scope, most)

    monkeypatch.setattr(fingerprints, "read_source_hashes", spied)
    kept = fingerprints.kept_sources("p/people")

    kept.prefetch(3)
    kept.prefetch(3)  # once
    assert kept.changed(["u0", "u1", "u2"], [0, 5, 2]) == [1]
    assert kept.bulk
    assert len(reads) == 1 and reads[0] != threading.current_thread().name


@pytest.mark.parametrize("ahead", [False, True], ids=["read", "read-ahead"])
@pytest.mark.parametrize("write", ["remember", "remember_table", "forget", "erase"])
def test_people_written_or_dropped_after_the_bulk_read_count_as_changed(
    store: StateStore, write: str, ahead: bool
):
    """Without it, a person sent with new values earlier in the load whose row comes again
    with the old values would be skipped: Customer.io would keep the new ones. A read made
    ahead (`prefetch`) counts the people written while it may be under way."""
    fingerprints = PipelineState(store, "p").fingerprints
    fingerprints.remember("p/people", {f"u{i}": {"r": i, "a": {}, "s": i} for i in range(3)})
    kept = fingerprints.kept_sources("p/people")
    if ahead:
        kept.prefetch(3)  # the write below comes while the read may still be under way
    else:
        assert kept.changed(["u0", "u1", "u2"], [0, 1, 2]) == []
        assert kept.bulk

    if write == "remember":
        fingerprints.remember("p/people", {"u1": {"r": 9, "a": {}, "s": 9}})
    elif write == "remember_table":
        fingerprints.remember_table("p/people", arrow_fingerprints({"u1": (9, b"{}", 9)}))
    elif write == "forget":
        fingerprints.forget("p/people", ["u1"])
    else:
        fingerprints.erase(["u1"])
    fingerprints.remember("p/others", {"u2": {"r": 9, "a": {}, "s": 9}})  # another table's

    assert kept.changed(["u0", "u1", "u2"], [0, 1, 2]) == [1]


def fail_writes_behind(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's transactions fail on the fingerprints' writer thread, and only there."""
    import threading

    from cio_destination import CustomerioTransientError

    transaction = store.transaction

    @contextlib.contextmanager
    def failing(**kwargs: Any) -> Iterator[Any]:
        if threading.current_thread().name.startswith("customerio-fingerprints"):
            raise CustomerioTransientError("the state database failed")
        with transaction(**kwargs) as tx:
            yield tx

    monkeypatch.setattr(store, "transaction", failing)


def test_a_read_on_another_thread_does_not_take_the_failure_of_a_write_behind(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
):
    """The prefetch of kept hashes reads on a helper thread, and its result may go unused: the
    write's failure must still reach the job's own `flush`."""
    import threading

    from cio_destination import CustomerioTransientError

    fingerprints = PipelineState(store, "p").fingerprints
    fail_writes_behind(store, monkeypatch)
    fingerprints.remember_table("p/people", arrow_fingerprints({"u2": (2, b"{}", 8)}))
    reader = threading.Thread(target=fingerprints.fingerprints_of, args=("p/people", ["u2"]))
    reader.start()
    reader.join()
    with pytest.raises(CustomerioTransientError):
        fingerprints.flush()


def test_fingerprints_written_behind_are_in_before_anything_reads_and_a_failure_is_raised(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
):
    import threading

    from cio_destination import CustomerioTransientError

    fingerprints = PipelineState(store, "p").fingerprints
    release = threading.Event()
    transaction = store.transaction

    @contextlib.contextmanager
    def slow(**kwargs: Any) -> Iterator[Any]:
        if threading.current_thread().name.startswith("customerio-fingerprints"):
            release.wait(10)
        with transaction(**kwargs) as tx:
            yield tx

    monkeypatch.setattr(store, "transaction", slow)
    fingerprints.remember_table("p/people", arrow_fingerprints({"u1": (1, b"{}", 7)}))
    threading.Timer(0.2, release.set).start()  # the write waits: the read must wait for it

    assert set(fingerprints.fingerprints_of("p/people", ["u1"])) == {"u1"}

    fail_writes_behind(store, monkeypatch)
    fingerprints.remember_table("p/people", arrow_fingerprints({"u2": (2, b"{}", 8)}))
    with pytest.raises(CustomerioTransientError):
        fingerprints.flush()
    fingerprints.flush()  # raised once
