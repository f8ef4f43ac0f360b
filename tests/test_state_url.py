"""Runners that start empty, with every piece of state in PostgreSQL (`state_url`).

Each run here gets a new, empty pipelines directory, as an Airflow task, a Dagster container or a
CI runner does; only the database carries the state from one run to the next. The server is the
one tests/test_postgres.py gets (`CIO_TEST_POSTGRES_URL`, or a throwaway cluster).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa
from dlt.pipeline.exceptions import CannotRestorePipelineException
from dlt.sources.sql_database import sql_table

from cio_destination import (
    customerio,
    customerio_adapter,
    exit_status,
    rejected_rows,
    restore_state,
    sync_report,
)
from cio_destination.emulator import Emulator

from .conftest import API_KEY, SITE_ID, check_small_load_lookup
from .kills import REPO, child_env, kill_after_progress
from .test_postgres import postgres_url  # noqa: F401 - the server fixture

pytestmark = pytest.mark.slow  # a real PostgreSQL server, whole pipelines, child processes


class Database:
    """One test's warehouse schema and state schema in the PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        suffix = uuid.uuid4().hex[:10]
        self.warehouse = f"wh_{suffix}"
        self.state = f"cio_state_{suffix}"
        self.engine = sa.create_engine(url)

    def execute(self, script: str) -> None:
        with self.engine.begin() as connection:
            connection.exec_driver_sql(script.format(w=self.warehouse))

    def state_cells(self) -> Iterator[tuple[str, Any]]:
        """(table, cell) of every cell of every table of the state schema."""
        with self.engine.connect() as connection:
            tables = connection.execute(
                sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": self.state},
            ).scalars()
            for table in list(tables):
                for row in connection.exec_driver_sql(f'SELECT * FROM "{self.state}"."{table}"'):
                    for cell in row:
                        yield table, cell


@pytest.fixture
def database(postgres_url: str) -> Iterator[Database]:  # noqa: F811
    database = Database(postgres_url)
    database.execute("CREATE SCHEMA {w}")
    try:
        yield database
    finally:
        with database.engine.begin() as connection:
            for schema in (database.warehouse, database.state):
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        database.engine.dispose()


SEED = """
CREATE TABLE {w}.people (id integer PRIMARY KEY, plan text, updated_at integer NOT NULL);
INSERT INTO {w}.people SELECT i, 'free', 1 FROM generate_series(1, 40) i;
CREATE TABLE {w}.members (uid text PRIMARY KEY, score integer);
INSERT INTO {w}.members SELECT 'm' || i, i FROM generate_series(1, 60) i;
CREATE TABLE {w}.orders (id integer PRIMARY KEY, person integer, amount numeric);
INSERT INTO {w}.orders SELECT i, mod(i, 40) + 1, i * 1.5 FROM generate_series(1, 30) i;
CREATE TABLE {w}.receipts (id integer PRIMARY KEY, email text);
INSERT INTO {w}.receipts SELECT i, 'buyer' || i || '@example.com' FROM generate_series(1, 8) i;
"""


def warehouse_sync(database: Database) -> list[Any]:
    def table(name: str, cursor: str | None = None) -> Any:
        incremental = dlt.sources.incremental(cursor) if cursor else None
        return sql_table(
            credentials=database.url,
            schema=database.warehouse,
            table=name,
            incremental=incremental,
        )

    people = customerio_adapter(table("people", "updated_at"), action="identify", identifier="id")
    members = customerio_adapter(
        table("members"), action="identify", identifier="uid", changes_only=True, mirror="delete"
    )
    orders = customerio_adapter(
        table("orders", "id"), action="event", identifier="person", event_name="purchase"
    )
    receipts = customerio_adapter(
        table("receipts", "id"),
        action="send_email",
        identifier="email",
        identifier_type="email",
        transactional_message_id=3,
        to="email",
        event_id="id",
    )
    return [people, members, orders, receipts]


def fresh_runner(
    tmp_path: Path, emulator: Emulator, database: Database, name: str = "stateless"
) -> dlt.Pipeline:
    """The pipeline on a runner whose disk starts empty."""
    destination = customerio(
        site_id=SITE_ID,
        api_key=API_KEY,
        app_api_key="test-app-key",
        track_url=emulator.url,
        app_url=emulator.url,
        state_url=database.url,
        state_schema=database.state,
    )
    pipelines_dir = tmp_path / uuid.uuid4().hex
    assert not pipelines_dir.exists()
    return dlt.pipeline(name, destination=destination, pipelines_dir=str(pipelines_dir))


def batch_ops(emulator: Emulator, since: int) -> tuple[int, int]:
    """(batch requests, operations in them) since request number `since`."""
    batches = [r for r in emulator.requests[since:] if r.path.endswith("/batch")]
    return len(batches), sum(r.ops for r in batches)


def test_a_sync_on_runners_that_start_empty_sends_each_change_once(
    tmp_path: Path, emulator: Emulator, database: Database
):
    database.execute(SEED)

    def run() -> tuple[int, int]:
        mark = len(emulator.requests)
        pipeline = fresh_runner(tmp_path, emulator, database)
        restore_state(pipeline)
        pipeline.run(warehouse_sync(database))
        return batch_ops(emulator, mark)

    # run 1 sends everything
    assert run()[1] == 40 + 60 + 30
    assert len(emulator.deliveries) == 8

    # run 2: nothing changed: not one batch request, no email
    assert run() == (0, 0)
    assert len(emulator.deliveries) == 8

    # run 3: ten rows change (five people by their cursor, five members by their values)
    database.execute(
        "UPDATE {w}.people SET plan = 'pro', updated_at = 2 WHERE id <= 5;"
        " UPDATE {w}.members SET score = -1 WHERE uid IN ('m1', 'm2', 'm3', 'm4', 'm5')"
    )
    assert run()[1] == 10
    people = {p["identifiers"]["id"]: p["attributes"] for p in emulator.people}
    assert [people[str(i)]["plan"] for i in range(1, 7)] == ["pro"] * 5 + ["free"]
    assert [people[f"m{i}"]["score"] for i in range(1, 7)] == [-1] * 5 + [6]

    # run 4: five people leave the mirrored table: exactly they are deleted
    database.execute("DELETE FROM {w}.members WHERE uid IN ('m6', 'm7', 'm8', 'm9', 'm10')")
    assert run()[1] == 5
    left = {p["identifiers"]["id"] for p in emulator.people}
    assert not {f"m{i}" for i in range(6, 11)} & left and {"m5", "m11"} <= left
    assert Counter(d["message_data"]["id"] for d in emulator.deliveries) == dict.fromkeys(
        range(1, 9), 1
    )

    # any runner reads the history of every load from state_url
    reader = fresh_runner(tmp_path, emulator, database)
    assert {(t.table, t.accepted) for t in sync_report(reader).tables} == {("members", 5)}
    assert list(rejected_rows(reader)) == []


def test_an_incremental_changes_only_run_sends_the_person_who_changed(
    tmp_path: Path, emulator: Emulator, database: Database
):
    """The usual incremental run: far fewer rows than people kept, so each unit's source-row
    hashes are looked up in the database rather than read in bulk. A changed person is sent,
    the others are not."""

    def people(count: int, changed: int | None = None) -> Any:
        rows = pa.table(
            {
                "uid": [f"u{i}" for i in range(count)],
                "plan": ["team" if i == changed else "pro" for i in range(count)],
            }
        )
        resource = dlt.resource(rows, name="people")
        return customerio_adapter(resource, action="identify", identifier="uid", changes_only=True)

    fresh_runner(tmp_path, emulator, database, "incremental").run(people(2_000))
    mark = len(emulator.requests)

    fresh_runner(tmp_path, emulator, database, "incremental").run(people(10, changed=3))

    assert batch_ops(emulator, mark) == (1, 1)
    found = {p["identifiers"]["id"]: p["attributes"] for p in emulator.people}
    assert found["u3"]["plan"] == "team" and found["u4"]["plan"] == "pro"


def test_a_send_killed_mid_load_is_finished_by_a_runner_with_an_empty_disk(
    tmp_path: Path, emulator: Emulator, database: Database
):
    rows = 300

    def command(timeout: float = 1.0) -> list[str]:
        pipelines_dir = str(tmp_path / uuid.uuid4().hex)
        args = [pipelines_dir, emulator.url, database.url, database.state, str(rows)]
        return [sys.executable, "-m", "tests.state_child", *args, str(timeout)]

    assert kill_after_progress(command(), lambda: len(emulator.deliveries), 30)
    sent_before = len(emulator.deliveries)
    assert sent_before < rows

    # the killed run's lease runs out (its lease_timeout, 1 s, without a beat); until then the
    # second runner stops at once, naming the lease
    finish_on_a_new_runner(command)

    sent = Counter(d["message_data"]["receipt_id"] for d in emulator.deliveries)
    assert max(sent.values()) == 1  # no email twice
    reader = fresh_runner(tmp_path, emulator, database, name="stateless_sends")
    unknown = {
        int(r["row_key"]) for r in rejected_rows(reader) if r["reason"] == "send_outcome_unknown"
    }
    # an uncertain send (its request left, the kill came before the answer was recorded) may
    # have been delivered: it is reported, never sent again
    assert set(sent) | unknown == set(range(rows))  # every row sent once or reported
    assert len(unknown) <= 4  # at most the requests in flight when it was killed


def finish_on_a_new_runner(command: Any) -> list[str]:
    """Run the child on new runners until one finishes; the refusals it printed before."""
    refusals = []
    deadline = time.monotonic() + 600  # only a hung run gets here
    while True:
        done = subprocess.run(
            command(), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600
        )
        if done.returncode == 0:
            return refusals
        assert done.returncode == 1 and "is already running" in done.stderr, done.stderr
        refusals.append(done.stderr)
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_one_run_at_a_time_and_a_dead_holder_is_taken_over(
    tmp_path: Path, emulator: Emulator, database: Database
):
    hold, release = tmp_path / "holding", tmp_path / "release"

    def command(*extra: str) -> list[str]:
        pipelines_dir = str(tmp_path / uuid.uuid4().hex)
        args = [pipelines_dir, emulator.url, database.url, database.state, "3", "2", *extra]
        return [sys.executable, "-m", "tests.state_child", *args]

    runs = [
        subprocess.Popen(
            command(str(hold), str(release)),
            cwd=REPO,
            env=child_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    # exactly one ends at once, with the lease error naming the pipeline and the holder
    finished = None
    deadline = time.monotonic() + 600  # only a hung run gets here
    while finished is None:
        finished = next((run for run in runs if run.poll() is not None), None)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    holder = next(run for run in runs if run is not finished)
    error = finished.stderr.read()
    assert finished.returncode == 1, error
    assert "pipeline 'stateless_sends' is already running" in error
    assert f"(process {holder.pid})" in error and "started 20" in error
    while not hold.exists():
        assert holder.poll() is None
        time.sleep(0.01)

    holder.kill()  # SIGKILL: it never gives the lease back
    holder.wait()
    release.write_text("go")
    refusals = finish_on_a_new_runner(command)

    assert all(f"(process {holder.pid})" in refusal for refusal in refusals)
    assert len(emulator.deliveries) == 3  # the run that took the lease over sent everything


def test_an_erasure_leaves_no_copy_of_the_person_in_the_state(
    tmp_path: Path, emulator: Emulator, database: Database
):
    person = "ximena-7731"
    database.execute(
        "CREATE TABLE {w}.members (uid text PRIMARY KEY, plan text);"
        f" INSERT INTO {{w}}.members VALUES ('{person}', 'pro'), ('other-1', 'free');"
        # enough people that a segment's streams are compressed: found only once decoded
        " INSERT INTO {w}.members SELECT 'other-' || i, 'free' FROM generate_series(2, 2000) i;"
        " CREATE TABLE {w}.visits (id integer PRIMARY KEY, uid text, data text);"
        f" INSERT INTO {{w}}.visits VALUES (1, '{person}', 'not json'), (2, 'other-1', 'x');"
        f" CREATE TABLE {{w}}.erasures (uid text PRIMARY KEY); INSERT INTO {{w}}.erasures"
        f" VALUES ('{person}')"
    )

    def table(name: str) -> Any:
        return sql_table(credentials=database.url, schema=database.warehouse, table=name)

    members = customerio_adapter(
        table("members"), action="identify", identifier="uid", changes_only=True, mirror="delete"
    )
    visits = customerio_adapter(
        table("visits"),
        action="event",
        identifier="uid",
        event_name="visit",
        event_data_column="data",
        json_columns=["data"],
    )
    first = fresh_runner(tmp_path, emulator, database)
    restore_state(first)
    first.run([members, visits])
    cells = [(t, _cell_bytes(c)) for t, c in database.state_cells()]
    # a fingerprint (a first sync's, in a segment), a snapshot, a rejection
    assert sum(person.encode() in cell for _, cell in cells) >= 3
    assert any(person.encode() in c for t, c in cells if t == "cio_fingerprint_segments")

    erasure = fresh_runner(tmp_path, emulator, database)
    restore_state(erasure)
    erasure.run(customerio_adapter(table("erasures"), action="suppress", identifier="uid"))

    assert {s.get("id") for s in emulator.suppressions} == {person}
    for table_name, cell in database.state_cells():
        assert person.encode() not in _cell_bytes(cell), table_name
    cells = [_cell_bytes(c) for t, c in database.state_cells() if t == "cio_fingerprint_segments"]
    assert any(b"other-1" in cell for cell in cells)  # the others' records stay


def _cell_bytes(cell: Any) -> bytes:
    """A cell of the state as bytes: a blob's own, anything else's text in UTF-8. A blob that
    is an Arrow IPC stream (a segment's, its buffers compressed) also as the text of every
    value it holds, decoded: compressed, an identifier need not be among its bytes."""
    if not isinstance(cell, memoryview | bytes):
        return str(cell).encode()
    blob = bytes(cell)
    try:
        table = pa.ipc.open_stream(blob).read_all()
    except pa.ArrowInvalid:
        return blob
    return blob + str(table.to_pylist()).encode()


def test_postgres_writes_and_compares_a_whole_batch_in_one_statement(
    database: Database,
):
    from cio_destination.state import TABLES, PipelineState
    from cio_destination.state.backend import SqlStore

    store = SqlStore(database.url, database.state, TABLES, "destination.customerio.state_url")
    fingerprints = PipelineState(store, "p").fingerprints
    statements: list[str] = []
    sa.event.listen(
        store._engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *args: statements.append(statement.split()[0]),
    )
    kept = {f"u{i}": {"r": i, "a": {"plan": i}, "s": i} for i in range(2_000)}

    fingerprints.remember("p/people", kept)
    asked = [(f"u{i}", i if i % 4 else -i - 1) for i in range(1_000, 3_000)]
    changed = fingerprints.changed_sources("p/people", asked)

    assert changed == {(i, h) for i, h in asked if int(i[1:]) >= 2_000 or int(i[1:]) % 4 == 0}
    # the write: the drop of the copy of kept hashes, then the 2,000 rows in one statement
    assert [s for s in statements if s in ("INSERT", "SELECT")] == ["INSERT", "INSERT", "SELECT"]
    store.close()


def test_postgres_looks_up_a_small_loads_arrow_hashes_and_maps_only_the_changed_rows(
    database: Database,
):
    """The lost update this guards against: the usual incremental run (rows under a twentieth
    of the hashes kept) compared Arrow scalars with the database's ints, found no row changed
    and skipped them all, the changed person included."""
    from cio_destination.state import TABLES, PipelineState
    from cio_destination.state.backend import SqlStore

    store = SqlStore(database.url, database.state, TABLES, "destination.customerio.state_url")
    check_small_load_lookup(PipelineState(store, "p").fingerprints)
    store.close()


def test_large_writes_stream_through_copy_and_keep_every_value(database: Database):
    from cio_destination.state import TABLES, PipelineState
    from cio_destination.state.backend import SqlStore

    store = SqlStore(database.url, database.state, TABLES, "destination.customerio.state_url")
    fingerprints = PipelineState(store, "p").fingerprints
    odd = ["tab\there", "line\nbreak\r", "back\\slash", "\\N", "ünï 😀", "quote'\"", ""]
    kept = {
        f"{odd[i % len(odd)]}-{i}": {
            "r": -(2**63) + i,
            "a": {"k\t\\": i},
            "s": None if i % 2 else i,
        }
        for i in range(3_000)
    }

    fingerprints.remember("p/people", kept)
    fingerprints.remember("p/people", dict(list(kept.items())[:1_500]))  # replaced, not doubled

    found = fingerprints.fingerprints_of("p/people", list(kept))
    assert {k: (v["r"], v.get("a")) for k, v in found.items()} == {
        k: (v["r"], v["a"]) for k, v in kept.items()
    }
    assert fingerprints.source_hashes_of("p/people", list(kept)) == {
        k: v["s"] for k, v in kept.items() if v["s"] is not None
    }
    # identifiers go to the database as one text, or as an array where one holds a line break
    asked = [(k, 0 if v["s"] is None else v["s"]) for k, v in kept.items()]
    for pairs in (asked, [(k, h) for k, h in asked if "\n" not in k]):
        assert fingerprints.changed_sources("p/people", pairs) == {
            (k, h) for k, h in pairs if kept[k]["s"] is None
        }
    store.close()


def test_arrow_fingerprints_go_in_as_one_binary_copy_and_their_hashes_come_back_in_one_read(
    database: Database, monkeypatch: pytest.MonkeyPatch
):
    """Texts, blobs of any bytes (the binary COPY takes them as they are; the CSV one took
    only UTF-8) and 64-bit numbers, NULL or not, come back as they went in."""
    import orjson

    from cio_destination.state import TABLES, PipelineState
    from cio_destination.state.backend import SqlStore

    from .test_state_store import arrow_fingerprints

    store = SqlStore(database.url, database.state, TABLES, "destination.customerio.state_url")
    copies: list[tuple[int, bool]] = []  # rows, and whether they went straight in
    copy_table = store._copy_table

    def spied(connection: Any, table: str, data: Any, new: bool) -> str | None:
        scratch = copy_table(connection, table, data, new)
        copies.append((len(data), scratch is None))
        return scratch

    monkeypatch.setattr(store, "_copy_table", spied)
    fingerprints = PipelineState(store, "p").fingerprints
    odd = ["tab\there", "line\nbreak\r", "back\\slash", "\\N", "ünï 😀", "quote'\"", ""]
    people = {
        f"{odd[i % len(odd)]}-{i}": (
            -(2**63) + i if i % 4 else 2**63 - 1 - i,
            orjson.dumps({"k\t\\ü": i}) if i % 5 else bytes([i % 256, 0, 255, 92, 10]),
            None if i % 2 else i * (-1) ** (i // 2),
        )
        for i in range(3_000)
    }

    fingerprints.remember("p/people", {"seed": {"r": 1, "a": {}}})  # not a first sync's write
    fingerprints.remember_table("p/people", arrow_fingerprints(people))
    fingerprints.remember_table("p/people", arrow_fingerprints(dict(list(people.items())[:1_500])))

    fingerprints.flush()  # written behind
    assert copies == [(3_000, True), (1_500, False)]  # the second through a scratch table
    found = fingerprints.fingerprints_of("p/people", list(people))
    assert {k: v["r"] for k, v in found.items()} == {k: r for k, (r, _, _) in people.items()}
    with store.transaction() as tx:  # the blobs are the bytes given, not their text
        blobs = dict(tx.execute("SELECT identifier, attributes FROM {cio_fingerprints}"))
    assert {k: bytes(v) for k, v in blobs.items()} == {
        "seed": b"{}",
        **{k: a for k, (_, a, _) in people.items()},
    }
    assert sorted(fingerprints.read_source_hashes("p/people", 1_500).to_pylist()) == sorted(
        s for _, _, s in people.values() if s is not None
    )
    store.close()


def test_the_audit_loader_reads_the_history_from_state_url_on_a_runner_that_starts_empty(
    tmp_path: Path, emulator: Emulator, database: Database, monkeypatch: pytest.MonkeyPatch
):
    database.execute(
        "CREATE TABLE {w}.visits (id integer PRIMARY KEY, uid text, data text);"
        " INSERT INTO {w}.visits VALUES (1, 'p1', 'not json'), (2, 'p2', '{{\"a\": 1}}')"
    )
    visits = customerio_adapter(
        sql_table(credentials=database.url, schema=database.warehouse, table="visits"),
        action="event",
        identifier="uid",
        event_name="visit",
        event_data_column="data",
        json_columns=["data"],
    )
    sync = fresh_runner(tmp_path, emulator, database, name="audited")
    restore_state(sync)
    load_id = sync.run(visits).loads_ids[-1]
    # the audit runs on another runner: only the settings (and state_url) are there
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__STATE_URL", database.url)
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__STATE_SCHEMA", database.state)
    audit_example = _load_pipeline("sync_audit_to_warehouse")
    audit = f"duckdb:///{tmp_path / 'audit.duckdb'}"
    empty = tmp_path / "empty_runner"

    assert audit_example.load_audit("audited", audit, pipelines_dir=str(empty)) == (1, 1)
    with duckdb.connect(str(tmp_path / "audit.duckdb")) as con:
        reports = con.execute(
            'SELECT load_id, "table", rows_in, rejected FROM customerio_audit'
            ".customerio_sync_reports"
        ).fetchall()
        reasons = con.execute(
            "SELECT reason FROM customerio_audit.customerio_rejected_rows"
        ).fetchall()
    assert reports == [(load_id, "visits", 2, 1)] and reasons == [("invalid_event_data",)]

    # a name no runner and no state_url knows is still a setting to fix (exit 2), and leaves
    # nothing behind
    with pytest.raises(CannotRestorePipelineException, match="nobody"):
        audit_example.load_audit("nobody", audit, pipelines_dir=str(empty))
    assert not (empty / "nobody").exists()
    assert exit_status(CannotRestorePipelineException("nobody", str(empty), "x"))[0] == 2


def _load_pipeline(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "pipelines" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_first_syncs_copy_of_hashes_is_made_of_its_writes_not_read_back_at_its_end(
    database: Database, monkeypatch: pytest.MonkeyPatch
):
    """Fingerprints COPYed in of people a table had none of, since it had none, with no other
    write between: the load's end makes the table's copy of source-row hashes of what those
    writes wrote, without the database reading every fingerprint back. Any other write between
    (this process's, another runner's, one that replaced fingerprints kept, one that failed)
    and the end reads them back, and the copy always holds exactly the hashes kept."""
    import contextlib

    from cio_destination import CustomerioTransientError
    from cio_destination.state import TABLES, PipelineState
    from cio_destination.state.backend import SqlStore
    from cio_destination.state.fingerprints import StoredFingerprints

    from .test_state_store import arrow_fingerprints

    store = SqlStore(database.url, database.state, TABLES, "destination.customerio.state_url")
    read_back: list[str] = []
    make_copy = StoredFingerprints._make_copy

    def counted(self: StoredFingerprints, tx: Any, scope: str, *, server: bool) -> None:
        read_back.append(scope)
        make_copy(self, tx, scope, server=server)

    monkeypatch.setattr(StoredFingerprints, "_make_copy", counted)
    fingerprints = PipelineState(store, "p").fingerprints
    other_runner = StoredFingerprints(store, "p")

    def people(first: int, count: int = 1_500) -> Any:
        return arrow_fingerprints(
            {
                f"u{i}": (i, b"{}", None if i % 7 == 0 else i * 1_000_003)
                for i in range(first, first + count)
            }
        )

    def write(scope: str, first: int, count: int = 1_500) -> None:
        fingerprints.remember_table(scope, people(first, count))
        fingerprints.flush()

    def copy_is_the_truth(scope: str) -> bool:
        copy = other_runner.read_copy(scope, 10**6)
        kept = other_runner.read_source_hashes(scope, 10**6)  # per person, and in segments
        truth = sorted(kept.to_pylist()) if kept is not None else None
        return copy is not None and sorted(copy.hashes) == truth != []

    for first in (0, 1_500, 3_000):  # a first sync's units
        write("p/first", first)
        assert other_runner.read_copy("p/first", 10**6) is None  # none until the end
    fingerprints.keep_copy("p/first")
    assert read_back == [] and copy_is_the_truth("p/first")

    write("p/first", 4_000)  # new people, but the table had fingerprints
    fingerprints.keep_copy("p/first")
    write("p/replaced", 0)
    write("p/replaced", 1_000)  # 500 of them kept already
    write("p/replaced", 3_000)
    fingerprints.keep_copy("p/replaced")
    write("p/between", 0)
    fingerprints.remember("p/between", {"x": {"r": 1, "a": {}, "s": 5}})
    write("p/between", 1_500)
    fingerprints.keep_copy("p/between")
    write("p/other", 0)
    other_runner.remember_table("p/other", people(1_500))
    other_runner.flush()
    write("p/other", 3_000)
    fingerprints.keep_copy("p/other")
    assert read_back == ["p/first", "p/replaced", "p/between", "p/other"]
    assert all(copy_is_the_truth(s) for s in ("p/first", "p/replaced", "p/between", "p/other"))

    write("p/failed", 0)
    transaction = store.transaction

    @contextlib.contextmanager
    def failing_at_commit(**kwargs: Any) -> Any:
        with transaction(**kwargs) as tx:
            yield tx
            raise CustomerioTransientError("the commit failed")  # rolled back

    monkeypatch.setattr(store, "transaction", failing_at_commit)
    fingerprints.remember_table("p/failed", people(1_500))
    with pytest.raises(CustomerioTransientError):
        fingerprints.flush()
    monkeypatch.setattr(store, "transaction", transaction)
    fingerprints.keep_copy("p/failed")
    assert read_back[4:] == [] and copy_is_the_truth("p/failed")  # the first write's, alone
    store.close()


def test_a_write_behind_is_not_stopped_by_an_erasure_that_waits_for_its_row(database: Database):
    """A first sync's write behind locks the copy's row with its first statement; an erasure
    (a delete table's job) holds the fingerprints' copy lock while its own statement waits for
    that row. The write must then finish without the copy lock, or the load hangs: a Python
    lock and a row lock that PostgreSQL cannot see as a deadlock."""
    import threading

    from cio_destination.state import TABLES, PipelineState
    from cio_destination.state.backend import SqlStore

    from .kills import wait_for
    from .test_state_store import arrow_fingerprints

    store = SqlStore(database.url, database.state, TABLES, "destination.customerio.state_url")
    fingerprints = PipelineState(store, "p").fingerprints

    def people(first: int) -> Any:
        return arrow_fingerprints({f"u{i}": (i, b"{}", i) for i in range(first, first + 1_500)})

    fingerprints.remember_table("p/first", people(0))  # a first sync's first unit
    fingerprints.flush()
    with database.engine.connect() as holder:  # the row is held until the erasure waits too
        holder.exec_driver_sql(
            f"SELECT 1 FROM {database.state}.cio_source_hashes WHERE scope = 'p/first' FOR UPDATE"
        )
        fingerprints.remember_table("p/first", people(1_500))  # its next unit, behind

        def waiting_for_the_row() -> bool:
            with database.engine.connect() as connection:
                return bool(
                    connection.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE '%%cio_source_hashes%%'"
                    ).scalar()
                )

        wait_for(waiting_for_the_row)
        written = threading.Event()

        def flushed() -> None:
            fingerprints.flush()
            written.set()

        with fingerprints._copy_lock:  # as `erase` holds it while its statement waits
            holder.commit()  # the write behind goes on
            threading.Thread(target=flushed, daemon=True).start()
            finished = written.wait(timeout=120)  # only a hang takes this long
    assert finished
    assert len(fingerprints.fingerprints_of("p/first", [f"u{i}" for i in range(3_000)])) == 3_000
    store.close()


def test_a_bulk_read_of_source_hashes_that_finds_none_gives_an_empty_column(database: Database):
    """Fingerprints with no source-row hash (kept from dict rows, or by a release that kept
    none), then Arrow rows: the COPY of no row is an empty file, which Arrow's CSV reader
    refuses; the read gives no hash instead of failing the load."""
    from cio_destination.state import TABLES, PipelineState
    from cio_destination.state.backend import SqlStore

    store = SqlStore(database.url, database.state, TABLES, "destination.customerio.state_url")
    fingerprints = PipelineState(store, "p").fingerprints
    fingerprints.remember("p/people", {"u1": {"r": 1, "a": {"plan": 2}}})

    found = fingerprints.read_source_hashes("p/people", 10)

    assert found is not None and found.to_pylist() == []
    store.close()
