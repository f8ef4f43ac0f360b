"""The destination's local state: one SQLite file in the pipeline's working directory.

It holds rejected rows, per-load reports, fingerprints, mirror snapshots and the send ledger.
Losing it loses history, never the correctness of people and events; the send ledger is what
keeps emails at most once, which is why it has an identity that loads record (see
`cio_destination.transactional`). Any SQLite failure surfaces as a `StateFileError` naming the file.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cio_destination.entries import Rejection
from cio_destination.exceptions import StateFileError
from cio_destination.framing import frame
from cio_destination.values import recordable_json

STATE_DIR = "customerio"
STATE_FILE = "state.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rejected_rows (
    reject_id TEXT PRIMARY KEY,
    load_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    action TEXT NOT NULL,
    row_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    field TEXT,
    message TEXT NOT NULL,
    row_json BLOB NOT NULL,
    rejected_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_rows_load ON rejected_rows (load_id, table_name);
CREATE TABLE IF NOT EXISTS batch_stats (
    load_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    action TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    rows_in INTEGER NOT NULL,
    operations INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    throttled INTEGER NOT NULL,
    throttled_seconds REAL NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    reasons TEXT NOT NULL,
    samples TEXT NOT NULL,
    PRIMARY KEY (load_id, table_name, batch_id)
);
CREATE TABLE IF NOT EXISTS fingerprints (
    scope TEXT NOT NULL,
    identifier TEXT NOT NULL,
    row_hash INTEGER NOT NULL,
    attributes BLOB NOT NULL,
    source_hash INTEGER,
    PRIMARY KEY (scope, identifier)
);
CREATE TABLE IF NOT EXISTS mirror_members (
    scope TEXT NOT NULL,
    identifier TEXT NOT NULL,
    PRIMARY KEY (scope, identifier)
);
CREATE TABLE IF NOT EXISTS send_ledger (
    send_key TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    state TEXT NOT NULL,
    delivery_id TEXT,
    load_id TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_meta (
    name TEXT PRIMARY KEY,
    value NOT NULL
);
"""

# Send ledger states: `pending` is written (and synced to disk) right before a send's request,
# `sent` after its answer. A key still `pending` after its load was interrupted has an unknown
# outcome. IN_FLIGHT is never stored: a key this process is sending right now.
PENDING = "pending"
SENT = "sent"
IN_FLIGHT = "in_flight"

_CLAIM, _SENT, _RELEASE = "claim", "sent", "release"


@dataclass(eq=False)
class _LedgerWrite:
    """One change to the send ledger, waiting for the next group commit."""

    op: str
    key: str
    table: str = ""
    load_id: str = ""
    reclaim: bool = False
    delivery_id: str | None = None
    blocked_by: str | None = None
    done: bool = False
    error: BaseException | None = None


def row_to_json(row: dict[str, Any]) -> bytes:
    """The JSON a rejected row is kept as: any row can be recorded (see `recordable_json`)."""
    return recordable_json(row)


def _reject_id(load_id: str, table: str, reason: str, field: str | None, row_json: bytes) -> str:
    """The same rejection of the same row in the same load gets the same id; any other, another.

    Ids were first made by joining the parts with \x00. That join is unambiguous while no part
    but the row holds \x00 and no field is "" (it stood for None): load ids and reasons never
    do, so the join is kept for those ids, and a rejection recorded before an upgrade is
    replaced, not doubled, when its batch is replayed. A table or column name holding \x00
    (dlt's direct naming keeps one) or an empty field name is framed instead
    (`cio_destination.framing`), behind a byte that never starts the joined form.
    """
    head = [load_id.encode(), table.encode(), reason.encode()]
    if field == "" or any(b"\x00" in part for part in head) or (field and "\x00" in field):
        data = b"\xff" + frame([*head, None if field is None else field.encode(), row_json])
    else:
        data = b"\x00".join([*head, (field or "").encode(), row_json])
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _LazyFingerprint(dict):  # type: ignore[type-arg]
    """A stored fingerprint whose attribute hashes are parsed only when asked for."""

    def __init__(self, row_hash: int, blob: bytes) -> None:
        super().__init__(r=row_hash)
        self._blob = blob

    def get(self, key: str, default: Any = None) -> Any:
        if key == "a" and "a" not in self:
            self["a"] = orjson.loads(self._blob)
        return super().get(key, default)


def state_path(working_dir: str | Path) -> Path:
    return Path(working_dir) / STATE_DIR / STATE_FILE


class StateStore:
    """Thread-safe access to one pipeline's state file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ledger_turn = threading.Condition()
        self._ledger_queue: list[_LedgerWrite] = []
        self._ledger_leader = False
        self._in_flight: set[str] = set()
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a ledger entry must be on disk before the send it guards leaves the machine
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            # a ledger that already holds keys (a file older than the identity) starts at 1, so
            # a load that records it protects those keys too
            db.execute(
                "INSERT OR IGNORE INTO ledger_meta VALUES ('ledger_id', ?),"
                " ('generation', (SELECT count(*) > 0 FROM send_ledger))",
                (uuid.uuid4().hex,),
            )
            stat = self.path.stat()
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise StateFileError.unusable(self.path, exc) from None
        self._db = db
        self.file_id = (stat.st_dev, stat.st_ino)
        """The file this store opened: a file replaced under it is another store."""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StateFileError.unusable(self.path, exc) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed (and synced) as a whole, or rolled back."""
        with self._connection() as db, _atomic(db):
            yield db

    def record_rejections(
        self, load_id: str, table: str, action: str, rejections: Sequence[Rejection]
    ) -> None:
        """Store rejections; a replayed batch rewrites the same records instead of doubling them."""
        if not rejections:
            return
        now = time.time()
        records = []
        for rejection in rejections:
            row_json = row_to_json(rejection.row)
            reject_id = _reject_id(load_id, table, rejection.reason, rejection.field, row_json)
            records.append(
                (
                    reject_id,
                    load_id,
                    table,
                    action,
                    rejection.row_key,
                    rejection.reason,
                    rejection.field,
                    rejection.message,
                    row_json,
                    now,
                )
            )
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO rejected_rows VALUES (?,?,?,?,?,?,?,?,?,?)", records
            )

    def send_blockers(
        self, keys: Sequence[str], *, reclaim_pending: bool = False
    ) -> dict[str, str]:
        """Why some of `keys` must not be sent now: SENT, PENDING (an interrupted send, whose
        outcome is unknown, unless `reclaim_pending`) or IN_FLIGHT (this process sends it now).

        Nothing is written: a key is claimed by `claim_send` right before its request.
        """
        blockers: dict[str, str] = {}
        with self._connection() as db:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for key, state in db.execute(
                    f"SELECT send_key, state FROM send_ledger WHERE send_key IN ({marks})", chunk
                ):
                    blocker = self._blocker(key, state, reclaim_pending, self._in_flight)
                    if blocker is not None:
                        blockers[key] = blocker
        return blockers

    @staticmethod
    def _blocker(key: str, state: str | None, reclaim: bool, in_flight: set[str]) -> str | None:
        if state is None:
            return None
        if state == PENDING:
            if key in in_flight:
                return IN_FLIGHT
            return None if reclaim else PENDING
        return SENT

    def claim_send(
        self, table: str, key: str, load_id: str, *, reclaim_pending: bool = False
    ) -> str | None:
        """Mark `key` pending, on disk, right before its request may leave the machine.

        Returns None when the key is now this process's to send, else what blocks it (see
        `send_blockers`). Claims of concurrent senders share one commit (one fsync).
        """
        write = _LedgerWrite(_CLAIM, key, table, load_id, reclaim=reclaim_pending)
        self._commit_ledger(write)
        return write.blocked_by

    def mark_sent(self, key: str, delivery_id: str | None) -> None:
        """Record, on disk, that Customer.io took the send of `key`: it is never sent again."""
        self._commit_ledger(_LedgerWrite(_SENT, key, delivery_id=delivery_id))

    def release_send(self, key: str) -> None:
        """Forget a claimed key whose request certainly did not deliver (refused, never sent)."""
        self._commit_ledger(_LedgerWrite(_RELEASE, key))

    def keep_pending(self, key: str) -> None:
        """The send of `key` may or may not have been delivered: it stays pending for good."""
        with self._lock:
            self._in_flight.discard(key)

    def _commit_ledger(self, write: _LedgerWrite) -> None:
        """Group commit: the first waiting thread writes every queued change in one transaction."""
        with self._ledger_turn:
            self._ledger_queue.append(write)
            while not write.done:
                if self._ledger_leader:
                    self._ledger_turn.wait()
                    continue
                self._ledger_leader = True
                batch, self._ledger_queue = self._ledger_queue, []
                error: BaseException | None = None
                self._ledger_turn.release()
                try:
                    self._apply_ledger(batch)
                except BaseException as exc:
                    error = exc
                finally:
                    self._ledger_turn.acquire()
                for queued in batch:
                    queued.error, queued.done = error, True
                self._ledger_leader = False
                self._ledger_turn.notify_all()
        if write.error is not None:
            raise write.error

    def _apply_ledger(self, batch: list[_LedgerWrite]) -> None:
        now = time.time()
        with self._connection() as db:
            in_flight = set(self._in_flight)
            with _atomic(db):
                self._write_ledger(db, batch, in_flight, now)
            self._in_flight = in_flight  # only once the changes are on disk

    def _write_ledger(
        self, db: sqlite3.Connection, batch: list[_LedgerWrite], in_flight: set[str], now: float
    ) -> None:
        for write in batch:
            if write.op == _CLAIM:
                row = db.execute(
                    "SELECT state FROM send_ledger WHERE send_key = ?", (write.key,)
                ).fetchone()
                write.blocked_by = self._blocker(
                    write.key, row[0] if row else None, write.reclaim, in_flight
                )
                if write.blocked_by is None:
                    db.execute(
                        "INSERT OR REPLACE INTO send_ledger VALUES (?,?,?,?,?,?)",
                        (write.key, write.table, PENDING, None, write.load_id, now),
                    )
                    in_flight.add(write.key)
            elif write.op == _SENT:
                db.execute(
                    "UPDATE send_ledger SET state = ?, delivery_id = ?, updated_at = ?"
                    " WHERE send_key = ?",
                    (SENT, write.delivery_id, now, write.key),
                )
                in_flight.discard(write.key)
            else:
                db.execute(
                    "DELETE FROM send_ledger WHERE send_key = ? AND state = ?",
                    (write.key, PENDING),
                )
                in_flight.discard(write.key)
        db.execute("UPDATE ledger_meta SET value = value + 1 WHERE name = 'generation'")

    def ledger_identity(self) -> tuple[str, int]:
        """The ledger's id (new with every new file) and its generation (counts its commits)."""
        with self._connection() as db:
            meta = dict(db.execute("SELECT name, value FROM ledger_meta").fetchall())
        return str(meta["ledger_id"]), int(meta["generation"])

    def send_states(self, table: str | None = None) -> dict[str, str]:
        query, params = "SELECT send_key, state FROM send_ledger", []
        if table is not None:
            query += " WHERE table_name = ?"
            params.append(table)
        with self._connection() as db:
            return dict(db.execute(query, params).fetchall())

    def record_batch(self, record: dict[str, Any]) -> None:
        """Store one batch's counters; a replayed batch (same id) replaces its earlier record."""
        columns = (
            "load_id",
            "table_name",
            "action",
            "batch_id",
            "dry_run",
            "rows_in",
            "operations",
            "accepted",
            "rejected",
            "skipped",
            "requests",
            "retries",
            "throttled",
            "throttled_seconds",
            "started_at",
            "finished_at",
            "reasons",
            "samples",
        )
        values = [record[c] for c in columns]
        with self._connection() as db:
            db.execute(
                f"INSERT OR REPLACE INTO batch_stats ({','.join(columns)})"
                f" VALUES ({','.join('?' * len(columns))})",
                values,
            )

    def batch_records(self, load_id: str) -> list[dict[str, Any]]:
        with self._connection() as db:
            cursor = db.execute(
                "SELECT * FROM batch_stats WHERE load_id = ? ORDER BY table_name, started_at",
                (load_id,),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def latest_load_id(self) -> str | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT load_id FROM batch_stats ORDER BY finished_at DESC LIMIT 1"
            ).fetchone()
        return row[0] if row else None

    def load(self, scope: str, identifiers: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Fingerprints of `identifiers` (see `cio_destination.changes`).

        The attribute hashes are parsed lazily: most people are settled by the row hash alone.
        """
        found: dict[str, dict[str, Any]] = {}
        with self._connection() as db:
            for start in range(0, len(identifiers), 5_000):
                chunk = list(identifiers[start : start + 5_000])
                marks = ",".join("?" * len(chunk))
                for identifier, row_hash, blob in db.execute(
                    "SELECT identifier, row_hash, attributes FROM fingerprints"
                    f" WHERE scope = ? AND identifier IN ({marks})",
                    [scope, *chunk],
                ):
                    found[identifier] = _LazyFingerprint(row_hash, blob)
        return found

    def save(self, scope: str, fingerprints: Mapping[str, dict[str, Any]]) -> None:
        if not fingerprints:
            return
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO fingerprints VALUES (?,?,?,?,?)",
                [
                    (scope, k, v["r"], orjson.dumps(v["a"]), v.get("s"))
                    for k, v in fingerprints.items()
                ],
            )

    def load_source_hashes(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        """The source-row hashes stored with the fingerprints of `identifiers`, where known."""
        found: dict[str, int] = {}
        with self._connection() as db:
            for start in range(0, len(identifiers), 5_000):
                chunk = list(identifiers[start : start + 5_000])
                marks = ",".join("?" * len(chunk))
                found.update(
                    db.execute(
                        "SELECT identifier, source_hash FROM fingerprints WHERE scope = ?"
                        f" AND identifier IN ({marks}) AND source_hash IS NOT NULL",
                        [scope, *chunk],
                    ).fetchall()
                )
        return found

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        """Drop fingerprints (the people were removed from Customer.io)."""
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM fingerprints WHERE scope = ? AND identifier = ?",
                [(scope, i) for i in identifiers],
            )

    def mirror_snapshot(self, scope: str) -> set[str]:
        """The identifiers of the last recorded complete snapshot of a mirror table."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT identifier FROM mirror_members WHERE scope = ?", (scope,)
            ).fetchall()
        return {row[0] for row in rows}

    def record_mirror_snapshot(self, scope: str, members: set[str]) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM mirror_members WHERE scope = ?", (scope,))
            db.executemany(
                "INSERT INTO mirror_members VALUES (?, ?)", [(scope, m) for m in members]
            )

    def iter_rejections(
        self, load_id: str | None = None, table: str | None = None
    ) -> Iterator[dict[str, Any]]:
        query = "SELECT * FROM rejected_rows"
        clauses, params = [], []
        if load_id is not None:
            clauses.append("load_id = ?")
            params.append(load_id)
        if table is not None:
            clauses.append("table_name = ?")
            params.append(table)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY rejected_at, reject_id"
        with self._connection() as db:
            rows = db.execute(query, params).fetchall()
        for row in rows:
            (reject_id, load, table_name, action, row_key, reason, field, message, row_json, at) = (
                row
            )
            yield {
                "reject_id": reject_id,
                "load_id": load,
                "table": table_name,
                "action": action,
                "row_key": row_key,
                "reason": reason,
                "field": field,
                "message": message,
                "row": orjson.loads(row_json),
                "rejected_at": at,
            }


@contextmanager
def _atomic(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


_stores: dict[Path, StateStore] = {}
_stores_lock = threading.Lock()


def store_for(working_dir: str | Path) -> StateStore:
    """The one shared store of a pipeline working directory.

    A file deleted, emptied or replaced since it was opened is opened anew, never written through
    the old handle: its send ledger is then a new one, which `send_email` loads refuse until told.
    """
    path = state_path(working_dir).resolve()
    with _stores_lock:
        store = _stores.get(path)
        if store is not None and not _still_open(store, path):
            store.close()
            store = None
        if store is None:
            store = _stores[path] = StateStore(path)
        return store


def _still_open(store: StateStore, path: Path) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return stat.st_size > 0 and (stat.st_dev, stat.st_ino) == store.file_id


def release_store(working_dir: str | Path) -> None:
    """Close and forget the store of a working directory that is about to be removed."""
    path = state_path(working_dir).resolve()
    with _stores_lock:
        store = _stores.pop(path, None)
    if store is not None:
        store.close()
