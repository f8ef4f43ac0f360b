"""Transactional emails, sent at most once per row through a durable ledger.

Customer.io has no idempotency key for sends, so the guarantee lives here: a row's send key is
written `pending` (and synced to disk) right before its request may leave the machine, and `sent`
after the answer. A later load skips `sent` keys, and does not repeat a key an interrupted load
left `pending`, whose outcome is unknown: it reports it instead (`send_outcome_unknown`), unless
`resend_uncertain` is set. Keys are claimed one request at a time, after the request's rate-limit
slot, so a crash leaves uncertain only the requests that were in flight; claims of concurrent
requests share one fsync.

The ledger only protects if it is the one earlier loads sent through: `SendLedgerGuard` stops a
load that finds another one (see there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dlt
from dlt.common.storages.exceptions import LoadPackageNotFound

from cio_destination.client import AppClient, OutcomeUnknown, SendOutcome, SendResult, SendStats
from cio_destination.entries import Entry
from cio_destination.exceptions import (
    CredentialsError,
    CustomerioTerminalError,
    SendLedgerLostError,
)
from cio_destination.ratelimit import RateLimiter
from cio_destination.store import PENDING, StateStore

logger = logging.getLogger("cio_destination")

UNKNOWN_REASON = "send_outcome_unknown"
UNKNOWN_MESSAGE = (
    "a previous load was interrupted while this send was in flight; it may or may not have been"
    " delivered, so it is not sent again (set resend_uncertain to send such rows once more)"
)


@dataclass
class EmailResult(SendResult):
    skipped: int = 0
    """Rows whose send key was already sent (or is being sent right now): never sent twice."""


class _SlotFirst:
    """The App API's rate limiter as the client sees it, with the first slot of a send taken
    before its key is claimed: a key still waiting for its turn is not pending yet."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._held = threading.local()

    def take(self) -> float:
        """Wait for the slot of this thread's next request; returns the seconds waited."""
        waited = self._limiter.acquire()
        self._held.slot = True
        return waited

    def drop(self) -> None:
        self._held.slot = False

    def acquire(self) -> float:
        if getattr(self._held, "slot", False):
            self._held.slot = False
            return 0.0  # waited for in `take`
        return self._limiter.acquire()

    def throttled(self, pause: float = 0.0) -> None:
        self._limiter.throttled(pause)

    def succeeded(self) -> None:
        self._limiter.succeeded()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._limiter, name)


@dataclass
class _Sent:
    stats: SendStats
    outcome: SendOutcome | None = None
    """None: the request may or may not have been delivered."""
    blocked_by: str | None = None
    """Not sent: the key was sent, or is being sent, or was left uncertain meanwhile."""


class EmailSender:
    """Sends one request per row through the App API, up to `max_in_flight` at once."""

    def __init__(self, client: AppClient, *, max_in_flight: int) -> None:
        self.client = client
        self._slots = _SlotFirst(client.limiter)
        client.limiter = self._slots  # type: ignore[assignment]
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="customerio-email")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def send(
        self,
        entries: Sequence[Entry],
        *,
        store: StateStore,
        table: str,
        load_id: str,
        resend_uncertain: bool = False,
    ) -> EmailResult:
        result = EmailResult()
        keys = [e.key for e in entries if e.key]
        blockers = store.send_blockers(keys, reclaim_pending=resend_uncertain)
        to_send: list[Entry] = []
        for entry in entries:
            if not self._blocked(entry, blockers.get(entry.key or ""), result):
                to_send.append(entry)
        futures = [
            (e, self._pool.submit(self._send_one, e, store, table, load_id, resend_uncertain))
            for e in to_send
        ]
        for entry, future in futures:
            self._collect(entry, future, result)
        return result

    @staticmethod
    def _blocked(entry: Entry, blocker: str | None, result: EmailResult) -> bool:
        if blocker is None:
            return False
        if blocker == PENDING:
            result.rejections.extend(entry.reject(UNKNOWN_REASON, None, UNKNOWN_MESSAGE))
        else:  # sent, or the same key being sent right now by another row
            result.skipped += len(entry.rows)
        return True

    def _send_one(
        self, entry: Entry, store: StateStore, table: str, load_id: str, resend_uncertain: bool
    ) -> _Sent:
        key = entry.key or ""
        stats = SendStats()
        stats.throttled_seconds += self._slots.take()
        try:
            blocked_by = store.claim_send(table, key, load_id, reclaim_pending=resend_uncertain)
            if blocked_by is not None:
                return _Sent(stats, blocked_by=blocked_by)
            outcome = self._request(entry, key, store, stats, resend_uncertain)
        finally:
            self._slots.drop()  # a slot not spent on a request is not kept for the next one
        return _Sent(stats, outcome)

    def _request(
        self, entry: Entry, key: str, store: StateStore, stats: SendStats, resend_uncertain: bool
    ) -> SendOutcome | None:
        """The request of a claimed key, and the ledger's record of what came of it."""
        try:
            outcome = self.client.send_email(entry.data, stats, resend_uncertain=resend_uncertain)
        except OutcomeUnknown:
            store.keep_pending(key)
            return None
        except BaseException:
            # refused or out of retries: Customer.io did not take it, so a later load may send it
            store.release_send(key)
            raise
        if outcome.delivery_id is not None:
            store.mark_sent(key, outcome.delivery_id)
        elif outcome.rejection is not None:
            store.release_send(key)
        else:
            store.keep_pending(key)
        return outcome

    def _collect(self, entry: Entry, future: Future[_Sent], result: EmailResult) -> None:
        try:
            sent = future.result()
        except BaseException as exc:
            if result.error is None or (
                isinstance(exc, CustomerioTerminalError)
                and not isinstance(result.error, CustomerioTerminalError)
            ):
                result.error = exc
            if isinstance(exc, CredentialsError):
                logger.error("Customer.io App API refused the credentials")
            return
        result.stats.add(sent.stats)
        if sent.blocked_by is not None:
            self._blocked(entry, sent.blocked_by, result)
        elif sent.outcome is None:
            message = (
                "a gateway error, a timeout or a dropped connection came after the send may have"
                " reached Customer.io; it is not sent again unless resend_uncertain is set"
            )
            result.rejections.extend(entry.reject(UNKNOWN_REASON, None, message))
        elif sent.outcome.rejection is not None:
            result.rejections.extend(entry.reject(*sent.outcome.rejection))
        elif sent.outcome.delivery_id is None:
            message = "Customer.io's answer did not say whether the send was taken"
            result.rejections.extend(entry.reject(UNKNOWN_REASON, None, message))


LEDGER_MARK = "customerio_send_ledger"
"""The load package state key under which a load with `send_email` tables records its ledger."""


class SendLedgerGuard:
    """Keeps one load's emails on the send ledger that earlier loads of the pipeline sent through.

    A load with `send_email` tables records, in its load package state, the identity of the ledger
    it sends through: the ledger's id (new with every new file) and its generation (a count of its
    commits). dlt keeps that state with the package, and keeps completed packages under the
    pipeline's `load/loaded/` folder, apart from the state file, so the record survives the file's
    loss. Before any email, the ledger found is compared with the newest record (this package's
    own, if the load is resumed, else the newest completed package's): another id (the file was
    deleted, emptied or replaced) or an older generation (restored from an older copy) stops the
    load with `SendLedgerLostError`, unless `accept_new_send_ledger` is set. A pipeline with no
    such record (a new one, a `dev_mode` one, one that never sent) has nothing to lose.
    """

    def __init__(
        self,
        package_state: dict[str, Any],
        commit: Callable[[], None],
        *,
        accept_new: bool,
    ) -> None:
        self._state = package_state
        self._commit = commit
        self._accept_new = accept_new
        self._lock = threading.Lock()

    def check(self, store: StateStore, pipeline: dlt.Pipeline) -> None:
        """Raise `SendLedgerLostError` unless `store` holds the ledger of the newest record;
        then record it for this load, on disk before any email of the load."""
        with self._lock:
            mark = self._state.get(LEDGER_MARK) or _newest_completed_mark(pipeline)
            ledger_id, generation = store.ledger_identity()
            if not _holds(mark, ledger_id, generation):
                if not self._accept_new:
                    raise SendLedgerLostError(store.path)
                logger.warning(
                    "accept_new_send_ledger: sending through a new send ledger in %s; emails"
                    " of earlier loads may go out again",
                    store.path,
                )
            if self._state.get(LEDGER_MARK) != mark or mark is None or mark["id"] != ledger_id:
                self._state[LEDGER_MARK] = {"id": ledger_id, "generation": generation}
                self._commit()

    def record(self, store: StateStore) -> None:
        """Note how far this load took the ledger (dlt saves it with the load's progress)."""
        ledger_id, generation = store.ledger_identity()
        with self._lock:
            mark = self._state.get(LEDGER_MARK)
            if mark is not None and mark["id"] == ledger_id:
                mark["generation"] = max(int(mark["generation"]), generation)


def _holds(mark: dict[str, Any] | None, ledger_id: str, generation: int) -> bool:
    if mark is None or not mark.get("generation"):
        return True  # the ledger recorded had never been written to: nothing to lose
    return mark.get("id") == ledger_id and int(mark["generation"]) <= generation


def _newest_completed_mark(pipeline: dlt.Pipeline) -> dict[str, Any] | None:
    for load_id in sorted(pipeline.list_completed_load_packages(), key=_load_order, reverse=True):
        try:
            mark = pipeline.get_load_package_state(load_id).get(LEDGER_MARK)
        except LoadPackageNotFound:
            continue
        if mark:
            return dict(mark)
    return None


def _load_order(load_id: str) -> tuple[float, str]:
    try:
        return float(load_id), load_id
    except ValueError:
        return 0.0, load_id
