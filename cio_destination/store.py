"""The destination's local state: one SQLite file in the pipeline's working directory.

It holds rejected rows (and, later, the send ledger and per-load reports). Nothing in it is needed
to deliver people and events correctly: losing it loses history, never correctness.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from cio_destination._framing import frame
from cio_destination.operations import Rejection

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
"""

# Send ledger states: `pending` is written (and synced to disk) before a send's request, `sent`
# after its answer. A key still `pending` after its load was interrupted has an unknown outcome.
PENDING = "pending"
SENT = "sent"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def row_to_json(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _reject_id(load_id: str, table: str, reason: str, field: str | None, row_json: bytes) -> str:
    """The same rejection of the same row in the same load gets the same id; any other, another.

    Ids were first made by joining the parts with \x00. That join is unambiguous while no part
    but the row holds \x00 and no field is "" (it stood for None): load ids and reasons never
    do, so the join is kept for those ids, and a rejection recorded before an upgrade is
    replaced, not doubled, when its batch is replayed. A table or column name holding \x00
    (dlt's direct naming keeps one) or an empty field name is framed instead
    (`cio_destination._framing`), behind a byte that never starts the joined form.
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a ledger entry must be on disk before the send it guards leaves the machine
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO rejected_rows VALUES (?,?,?,?,?,?,?,?,?,?)", records
            )
            self._db.execute("COMMIT")

    def claim_sends(
        self, table: str, keys: Sequence[str], load_id: str, *, reclaim_pending: bool = False
    ) -> dict[str, str]:
        """Mark `keys` pending before sending them; return the state of keys already known.

        A key returned as `sent` must not be sent again; one returned as `pending` was left with
        an unknown outcome by an interrupted load (unless `reclaim_pending` takes it over again).
        """
        now = time.time()
        known: dict[str, str] = {}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(keys), 500):
                    chunk = list(keys[start : start + 500])
                    marks = ",".join("?" * len(chunk))
                    for key, state in self._db.execute(
                        f"SELECT send_key, state FROM send_ledger WHERE send_key IN ({marks})",
                        chunk,
                    ):
                        known[key] = state
                claim = [
                    (k, table, PENDING, None, load_id, now)
                    for k in dict.fromkeys(keys)
                    if k not in known or (reclaim_pending and known[k] == PENDING)
                ]
                self._db.executemany(
                    "INSERT OR REPLACE INTO send_ledger VALUES (?,?,?,?,?,?)", claim
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if reclaim_pending:
            known = {k: v for k, v in known.items() if v != PENDING}
        return known

    def mark_sent(self, key: str, delivery_id: str | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE send_ledger SET state = ?, delivery_id = ?, updated_at = ?"
                " WHERE send_key = ?",
                (SENT, delivery_id, time.time(), key),
            )

    def release_sends(self, keys: Sequence[str]) -> None:
        """Forget pending keys whose request certainly did not deliver (refused or never sent)."""
        if not keys:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM send_ledger WHERE send_key = ? AND state = ?",
                [(k, PENDING) for k in keys],
            )
            self._db.execute("COMMIT")

    def send_states(self, table: str | None = None) -> dict[str, str]:
        query, params = "SELECT send_key, state FROM send_ledger", []
        if table is not None:
            query += " WHERE table_name = ?"
            params.append(table)
        with self._lock:
            return dict(self._db.execute(query, params).fetchall())

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
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO batch_stats ({','.join(columns)})"
                f" VALUES ({','.join('?' * len(columns))})",
                values,
            )

    def batch_records(self, load_id: str) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT * FROM batch_stats WHERE load_id = ? ORDER BY table_name, started_at",
                (load_id,),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def latest_load_id(self) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT load_id FROM batch_stats ORDER BY finished_at DESC LIMIT 1"
            ).fetchone()
        return row[0] if row else None

    def load(self, scope: str, identifiers: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Fingerprints of `identifiers` (see `cio_destination.changes`).

        The attribute hashes are parsed lazily: most people are settled by the row hash alone.
        """
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(identifiers), 5_000):
                chunk = list(identifiers[start : start + 5_000])
                marks = ",".join("?" * len(chunk))
                for identifier, row_hash, blob in self._db.execute(
                    "SELECT identifier, row_hash, attributes FROM fingerprints"
                    f" WHERE scope = ? AND identifier IN ({marks})",
                    [scope, *chunk],
                ):
                    found[identifier] = _LazyFingerprint(row_hash, blob)
        return found

    def save(self, scope: str, fingerprints: Mapping[str, dict[str, Any]]) -> None:
        if not fingerprints:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO fingerprints VALUES (?,?,?,?,?)",
                [
                    (scope, k, v["r"], orjson.dumps(v["a"]), v.get("s"))
                    for k, v in fingerprints.items()
                ],
            )
            self._db.execute("COMMIT")

    def load_source_hashes(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        """The source-row hashes stored with the fingerprints of `identifiers`, where known."""
        found: dict[str, int] = {}
        with self._lock:
            for start in range(0, len(identifiers), 5_000):
                chunk = list(identifiers[start : start + 5_000])
                marks = ",".join("?" * len(chunk))
                found.update(
                    self._db.execute(
                        "SELECT identifier, source_hash FROM fingerprints WHERE scope = ?"
                        f" AND identifier IN ({marks}) AND source_hash IS NOT NULL",
                        [scope, *chunk],
                    ).fetchall()
                )
        return found

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        """Drop fingerprints (the people were removed from Customer.io)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "DELETE FROM fingerprints WHERE scope = ? AND identifier = ?",
                [(scope, i) for i in identifiers],
            )
            self._db.execute("COMMIT")

    def mirror_snapshot(self, scope: str) -> set[str]:
        """The identifiers of the last recorded complete snapshot of a mirror table."""
        with self._lock:
            rows = self._db.execute(
                "SELECT identifier FROM mirror_members WHERE scope = ?", (scope,)
            ).fetchall()
        return {row[0] for row in rows}

    def record_mirror_snapshot(self, scope: str, members: set[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM mirror_members WHERE scope = ?", (scope,))
            self._db.executemany(
                "INSERT INTO mirror_members VALUES (?, ?)", [(scope, m) for m in members]
            )
            self._db.execute("COMMIT")

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
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
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


_stores: dict[Path, StateStore] = {}
_stores_lock = threading.Lock()


def store_for(working_dir: str | Path) -> StateStore:
    """The one shared store of a pipeline working directory."""
    path = state_path(working_dir).resolve()
    with _stores_lock:
        store = _stores.get(path)
        if store is None or not path.exists():
            if store is not None:
                store.close()  # the working directory was wiped: start a new file
            store = _stores[path] = StateStore(path)
        return store


def release_store(working_dir: str | Path) -> None:
    """Close and forget the store of a working directory that is about to be removed."""
    path = state_path(working_dir).resolve()
    with _stores_lock:
        store = _stores.pop(path, None)
    if store is not None:
        store.close()
