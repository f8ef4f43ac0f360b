"""The send ledger: which transactional send keys are pending or sent, durably.

`cio_destination.transport.emails` writes a key `pending` (synced to disk) right before its
request may leave the machine and `sent` after the answer, so no key is ever sent twice; a key
still `pending` after its load was interrupted has an unknown outcome. Changes of concurrent
senders share one commit (one fsync). The ledger has an identity (an id, new with every new file,
and a generation that counts its commits), which loads record so that a lost or replaced ledger
is noticed (`cio_destination.state.ledger_guard`).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cio_destination.state.backend import StateFile, atomic

# A key's states: `pending` is written (and synced to disk) right before a send's request, `sent`
# after its answer. IN_FLIGHT is never stored: a key this process is sending right now.
PENDING = "pending"
SENT = "sent"
IN_FLIGHT = "in_flight"

_CLAIM, _SENT, _RELEASE, _STAMP = "claim", "sent", "release", "stamp"


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


class SendLedger:
    """The send keys of one pipeline's transactional sends, and the ledger's identity."""

    SCHEMA = """
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
    """The tables it keeps."""

    def __init__(self, backend: StateFile) -> None:
        self._backend = backend
        self.path = backend.path
        """The file that holds the ledger: errors about the ledger name it."""
        self._turn = threading.Condition()
        self._queue: list[_LedgerWrite] = []
        self._leader = False
        self._in_flight: set[str] = set()
        """Keys claimed by this process whose answer has not come: guarded by the backend."""
        with backend.connection() as db:
            # a ledger that already holds keys (a file older than the identity) starts at 1, so
            # a load that records it protects those keys too
            db.execute(
                "INSERT OR IGNORE INTO ledger_meta VALUES ('ledger_id', ?),"
                " ('generation', (SELECT count(*) > 0 FROM send_ledger))",
                (uuid.uuid4().hex,),
            )

    def blockers(self, keys: Sequence[str], *, reclaim_pending: bool = False) -> dict[str, str]:
        """Why some of `keys` must not be sent now: SENT, PENDING (an interrupted send, whose
        outcome is unknown, unless `reclaim_pending`) or IN_FLIGHT (this process sends it now).

        Nothing is written: a key is claimed by `claim` right before its request.
        """
        blockers: dict[str, str] = {}
        with self._backend.connection() as db:
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

    def claim(
        self, table: str, key: str, load_id: str, *, reclaim_pending: bool = False
    ) -> str | None:
        """Mark `key` pending, on disk, right before its request may leave the machine.

        Returns None when the key is now this process's to send, else what blocks it (see
        `blockers`). Claims of concurrent senders share one commit (one fsync).
        """
        write = _LedgerWrite(_CLAIM, key, table, load_id, reclaim=reclaim_pending)
        self._commit(write)
        return write.blocked_by

    def mark_sent(self, key: str, delivery_id: str | None) -> None:
        """Record, on disk, that Customer.io took the send of `key`: it is never sent again."""
        self._commit(_LedgerWrite(_SENT, key, delivery_id=delivery_id))

    def release(self, key: str) -> None:
        """Forget a claimed key whose request certainly did not deliver (refused, never sent)."""
        self._commit(_LedgerWrite(_RELEASE, key))

    def stamp(self) -> tuple[str, int]:
        """Advance the generation by one commit and return the identity: a load records it
        before its first claim, so its record names a generation of at least 1, which only this
        ledger (or a copy of it at least as new) holds."""
        self._commit(_LedgerWrite(_STAMP, ""))
        return self.identity()

    def keep_pending(self, key: str) -> None:
        """The send of `key` may or may not have been delivered: it stays pending for good."""
        with self._backend.connection():
            self._in_flight.discard(key)

    def _commit(self, write: _LedgerWrite) -> None:
        """Group commit: the first waiting thread writes every queued change in one transaction."""
        with self._turn:
            self._queue.append(write)
            while not write.done:
                if self._leader:
                    self._turn.wait()
                    continue
                self._leader = True
                batch, self._queue = self._queue, []
                error: BaseException | None = None
                self._turn.release()
                try:
                    self._apply(batch)
                except BaseException as exc:
                    error = exc
                finally:
                    self._turn.acquire()
                for queued in batch:
                    queued.error, queued.done = error, True
                self._leader = False
                self._turn.notify_all()
        if write.error is not None:
            raise write.error

    def _apply(self, batch: list[_LedgerWrite]) -> None:
        now = time.time()
        with self._backend.connection() as db:
            in_flight = set(self._in_flight)
            with atomic(db):
                self._write(db, batch, in_flight, now)
            self._in_flight = in_flight  # only once the changes are on disk

    def _write(
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
            elif write.op == _RELEASE:
                db.execute(
                    "DELETE FROM send_ledger WHERE send_key = ? AND state = ?",
                    (write.key, PENDING),
                )
                in_flight.discard(write.key)
        db.execute("UPDATE ledger_meta SET value = value + 1 WHERE name = 'generation'")

    def identity(self) -> tuple[str, int]:
        """The ledger's id (new with every new file) and its generation (counts its commits)."""
        with self._backend.connection() as db:
            meta = dict(db.execute("SELECT name, value FROM ledger_meta").fetchall())
        return str(meta["ledger_id"]), int(meta["generation"])
