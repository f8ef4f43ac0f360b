"""Transactional emails, sent at most once per row through a durable ledger.

Customer.io has no idempotency key for sends, so the guarantee lives here: a row's send key is
written `pending` (and synced to disk) right before its request may leave the machine, and `sent`
after the answer. A later load skips `sent` keys, and does not repeat a key an interrupted load
left `pending`, whose outcome is unknown: it reports it instead (`send_outcome_unknown`), unless
`resend_uncertain` is set. Keys are claimed one request at a time, once the request's rate-limit
slot is taken (the client tells its `AttemptWatcher`), and given back while a send waits to
retry after an answer that proves it was not taken, so a crash leaves uncertain only the
requests that were in flight or may have been taken; claims of concurrent requests share one
fsync.

The ledger only protects if it is the one earlier loads sent through:
`cio_destination.state.ledger_guard.SendLedgerGuard` stops a load that finds another one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cio_destination.entries import Entry
from cio_destination.exceptions import CredentialsError, CustomerioTerminalError
from cio_destination.state.ledger import PENDING, SendLedger
from cio_destination.transport.api import OutcomeUnknown
from cio_destination.transport.app import AppClient, SendOutcome
from cio_destination.transport.results import SendResult, SendStats

logger = logging.getLogger("cio_destination")

UNKNOWN_REASON = "send_outcome_unknown"
UNKNOWN_MESSAGE = (
    "a previous load was interrupted while this send was in flight; it may or may not have been"
    " delivered, so it is not sent again (set resend_uncertain to send such rows once more)"
)


class _KeyBlocked(Exception):
    """The claim found the key sent, being sent, or left uncertain meanwhile: no request."""

    def __init__(self, blocker: str) -> None:
        super().__init__(blocker)
        self.blocker = blocker


class _Claim:
    """The ledger claim of one send key, held exactly while the send may be on its way or may
    have been taken (an `AttemptWatcher` of the client's attempts).

    Made right before each attempt leaves (once its rate-limit slot has come), given back
    while the send waits to retry after answers that all prove it was not taken (a 429, a
    refused connection), so a crash during that wait leaves nothing uncertain; once an
    answer leaves open whether Customer.io took it, the claim is kept whatever follows.
    """

    def __init__(
        self, ledger: SendLedger, table: str, key: str, load_id: str, reclaim_pending: bool
    ) -> None:
        self._ledger = ledger
        self._args = (table, key, load_id)
        self._reclaim_pending = reclaim_pending
        self.made = False
        self.maybe_taken = False
        """An attempt's answer left open whether Customer.io took the send."""

    def leaving(self) -> None:
        if self.made:
            return
        blocker = self._ledger.claim(*self._args, reclaim_pending=self._reclaim_pending)
        if blocker is not None:
            raise _KeyBlocked(blocker)
        self.made = True

    def failed(self, maybe_taken: bool) -> None:
        self.maybe_taken = self.maybe_taken or maybe_taken
        if self.made and not self.maybe_taken:
            self._ledger.release(self._args[1])
            self.made = False

    def abandon(self) -> None:
        """The request ended without an answer to record (refused, out of retries): forget the
        key unless the send may have been taken, which then stays uncertain."""
        if not self.made:
            return
        if self.maybe_taken:
            self._ledger.keep_pending(self._args[1])
        else:
            self._ledger.release(self._args[1])


@dataclass
class _Sent:
    stats: SendStats
    outcome: SendOutcome | None = None
    """None: the request may or may not have been delivered."""
    blocked_by: str | None = None
    """Not sent: the key was sent, or is being sent, or was left uncertain meanwhile."""


class EmailSender:
    """Sends one request per row through the App API, up to `max_in_flight` at once.

    Until Customer.io has answered one send, sends go one at a time, so a wrong `app_api_key`
    or `app_url` costs a single request; a terminal answer (refused credentials, a workspace
    that may not send, a wrong URL) is remembered, and every later send of the same load stops
    without a request, as the Track API's `Sender` does.
    """

    def __init__(self, client: AppClient, *, max_in_flight: int) -> None:
        self.client = client
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="customerio-email")
        self._probe_lock = threading.Lock()
        self._verified = False
        self._stopped: CustomerioTerminalError | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def forget_refusal(self) -> None:
        """A new load tries again (the setting may have been fixed), one send first."""
        self._stopped = None

    def send(
        self,
        entries: Sequence[Entry],
        *,
        ledger: SendLedger,
        table: str,
        load_id: str,
        resend_uncertain: bool = False,
    ) -> SendResult:
        """Send every entry whose key the ledger lets go; `skipped` counts the rows of the
        keys already sent (or being sent by another row right now)."""
        result = SendResult()
        keys = [e.key for e in entries if e.key]
        blockers = ledger.blockers(keys, reclaim_pending=resend_uncertain)
        to_send: list[Entry] = []
        for entry in entries:
            if not self._blocked(entry, blockers.get(entry.key or ""), result):
                to_send.append(entry)
        args = (ledger, table, load_id, resend_uncertain)
        while to_send and not self._verified and result.error is None:
            with self._probe_lock:
                if self._verified or self._stopped is not None:
                    break
                entry = to_send.pop(0)
                sent = self._pool.submit(self._send_one, entry, *args)
                answered = self._collect(entry, sent, result)
                self._verified = answered and result.error is None
        stopped = self._stopped
        if result.error is None and stopped is not None:
            result.error = stopped
        if result.error is not None:
            return result  # the rows not sent stay in the load package, which stays pending
        futures = [(e, self._pool.submit(self._send_one, e, *args)) for e in to_send]
        for entry, future in futures:
            self._collect(entry, future, result)
        return result

    @staticmethod
    def _blocked(entry: Entry, blocker: str | None, result: SendResult) -> bool:
        if blocker is None:
            return False
        if blocker == PENDING:
            result.rejections.extend(entry.reject(UNKNOWN_REASON, None, UNKNOWN_MESSAGE))
        else:  # sent, or the same key being sent right now by another row
            result.skipped += len(entry.rows)
        return True

    def _send_one(
        self, entry: Entry, ledger: SendLedger, table: str, load_id: str, resend_uncertain: bool
    ) -> _Sent:
        """The request of one row, its key claimed right before it leaves, and the ledger's
        record of what came of it."""
        stopped = self._stopped
        if stopped is not None:
            raise stopped.again()  # a send of this load was refused: no more requests
        key = entry.key or ""
        stats = SendStats()
        claim = _Claim(ledger, table, key, load_id, resend_uncertain)
        try:
            outcome = self.client.send_email(
                entry.data, stats, resend_uncertain=resend_uncertain, watcher=claim
            )
        except _KeyBlocked as blocked:
            return _Sent(stats, blocked_by=blocked.blocker)
        except OutcomeUnknown:
            ledger.keep_pending(key)
            return _Sent(stats)
        except BaseException:
            claim.abandon()
            raise
        if outcome.delivery_id is not None:
            ledger.mark_sent(key, outcome.delivery_id)
        elif outcome.rejection is not None:
            ledger.release(key)
        else:
            ledger.keep_pending(key)
        return _Sent(stats, outcome)

    def _collect(self, entry: Entry, future: Future[_Sent], result: SendResult) -> bool:
        """Record what came of one row's send; True when Customer.io answered it (it was
        delivered or rejected), which proves the key and the URL."""
        try:
            sent = future.result()
        except BaseException as exc:
            if result.error is None or (
                isinstance(exc, CustomerioTerminalError)
                and not isinstance(result.error, CustomerioTerminalError)
            ):
                result.error = exc
            if isinstance(exc, CustomerioTerminalError) and self._stopped is None:
                self._stopped, self._verified = exc, False
                if isinstance(exc, CredentialsError):
                    logger.error("Customer.io App API refused the credentials")
            return False
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
        return sent.blocked_by is None and sent.outcome is not None
