"""The send ledger: which transactional send keys are pending or sent, durably.

`cio_destination.transport.emails` writes a key `pending` (synced to disk) right before its
request may leave the machine and `sent` after the answer, so no key is ever sent twice; a key
still `pending` after its load was interrupted has an unknown outcome. Changes of concurrent
senders share one commit (one fsync). The ledger has an identity (an id, new with every new file,
and a generation that counts its commits), which loads record so that a lost or replaced ledger
is noticed (`cio_destination.state.ledger_guard`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from cio_destination.state.backend import StateStore, Transaction

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

    TABLES = (
        """CREATE TABLE IF NOT EXISTS {cio_send_ledger} (
            pipeline_name TEXT NOT NULL,
            send_key TEXT NOT NULL,
            table_name TEXT NOT NULL,
            state TEXT NOT NULL,
            delivery_id TEXT,
            load_id TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (pipeline_name, send_key)
        )""",
        """CREATE TABLE IF NOT EXISTS {cio_send_ledger_meta} (
            pipeline_name TEXT PRIMARY KEY,
            ledger_id TEXT NOT NULL,
            generation BIGINT NOT NULL
        )""",
    )
    """The tables it keeps."""
    _COLUMNS = ("pipeline_name", "send_key", "table_name", "state", "delivery_id", "load_id")

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self._store = store
        self._pipeline = pipeline_name
        self.path = store.location
        """Where the ledger is kept (its file, or `state_url`): errors about the ledger name it."""
        self.shared = store.shared
        """Whether it is kept in `state_url` (a database shared by runners), not a file."""
        self._turn = threading.Condition()
        self._queue: list[_LedgerWrite] = []
        self._leader = False
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        """Keys claimed by this process whose answer has not come: guarded by `_lock`."""
        with store.transaction(durable=True) as tx:
            # a ledger that already holds keys (one older than the identity) starts at 1, so a
            # load that records it protects those keys too
            tx.execute(
                "INSERT INTO {cio_send_ledger_meta} (pipeline_name, ledger_id, generation)"
                " SELECT ?, ?, CASE WHEN EXISTS (SELECT 1 FROM {cio_send_ledger}"
                " WHERE pipeline_name = ?) THEN 1 ELSE 0 END"
                " ON CONFLICT (pipeline_name) DO NOTHING",
                [pipeline_name, uuid.uuid4().hex, pipeline_name],
            )

    def blockers(self, keys: Sequence[str], *, reclaim_pending: bool = False) -> dict[str, str]:
        """Why some of `keys` must not be sent now: SENT, PENDING (an interrupted send, whose
        outcome is unknown, unless `reclaim_pending`) or IN_FLIGHT (this process sends it now).

        Nothing is written: a key is claimed by `claim` right before its request.
        """
        found = list(
            self._store.read_in(
                "SELECT send_key, state FROM {{cio_send_ledger}} WHERE pipeline_name = ?"
                " AND send_key IN ({marks})",
                [self._pipeline],
                keys,
            )
        )
        blockers: dict[str, str] = {}
        with self._lock:
            for key, state in found:
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
        """Record that Customer.io took the send of `key`: it is never sent again."""
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
        with self._lock:
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
        """One transaction for the batch; synced to disk when it claims (or stamps): a claim
        must be on disk before its request leaves, a lost `sent` only leaves a key uncertain."""
        durable = any(write.op in (_CLAIM, _STAMP) for write in batch)
        with self._lock:
            in_flight = set(self._in_flight)
            with self._store.transaction(durable=durable) as tx:
                self._write(tx, batch, in_flight, time.time())
            self._in_flight = in_flight  # only once the changes are on disk

    def _write(
        self, tx: Transaction, batch: list[_LedgerWrite], in_flight: set[str], now: float
    ) -> None:
        claims = [write for write in batch if write.op == _CLAIM]
        states = self._states(tx, [write.key for write in claims])
        rows = []
        for write in batch:
            if write.op == _CLAIM:
                write.blocked_by = self._blocker(
                    write.key, states.get(write.key), write.reclaim, in_flight
                )
                if write.blocked_by is None:
                    row = (self._pipeline, write.key, write.table, PENDING, None, write.load_id)
                    rows.append((*row, now))
                    states[write.key] = PENDING
                    in_flight.add(write.key)
            elif write.op == _SENT:
                self._flush(tx, rows)
                tx.execute(
                    "UPDATE {cio_send_ledger} SET state = ?, delivery_id = ?, updated_at = ?"
                    " WHERE pipeline_name = ? AND send_key = ?",
                    [SENT, write.delivery_id, now, self._pipeline, write.key],
                )
                states[write.key] = SENT
                in_flight.discard(write.key)
            elif write.op == _RELEASE:
                self._flush(tx, rows)
                tx.execute(
                    "DELETE FROM {cio_send_ledger} WHERE pipeline_name = ? AND send_key = ?"
                    " AND state = ?",
                    [self._pipeline, write.key, PENDING],
                )
                states.pop(write.key, None)
                in_flight.discard(write.key)
        self._flush(tx, rows)
        tx.execute(
            "UPDATE {cio_send_ledger_meta} SET generation = generation + 1 WHERE pipeline_name = ?",
            [self._pipeline],
        )

    def _states(self, tx: Transaction, keys: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            states.update(
                tx.execute(  # type: ignore[arg-type]
                    "SELECT send_key, state FROM {cio_send_ledger} WHERE pipeline_name = ?"
                    f" AND send_key IN ({marks})",
                    [self._pipeline, *chunk],
                )
            )
        return states

    def _flush(self, tx: Transaction, rows: list[tuple[object, ...]]) -> None:
        """Write the claims gathered so far (before a later change of the same batch)."""
        if rows:
            tx.upsert(
                "cio_send_ledger",
                (*self._COLUMNS, "updated_at"),
                ("pipeline_name", "send_key"),
                rows,
            )
            rows.clear()

    def identity(self) -> tuple[str, int]:
        """The ledger's id (new with every new ledger) and its generation (counts its commits)."""
        rows = self._store.read(
            "SELECT ledger_id, generation FROM {cio_send_ledger_meta} WHERE pipeline_name = ?",
            [self._pipeline],
        )
        return str(rows[0][0]), int(rows[0][1])
