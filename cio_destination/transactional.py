"""Transactional emails, sent at most once per row through a durable ledger.

Customer.io has no idempotency key for sends, so the guarantee lives here: a row's send key is
written `pending` (and synced to disk) before its request and `sent` after the answer. A later
load skips `sent` keys, and does not repeat a key an interrupted load left `pending`, whose
outcome is unknown: it reports it instead (`send_outcome_unknown`), unless `resend_uncertain`
is set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cio_destination.client import AppClient, OutcomeUnknown, SendOutcome, SendResult, SendStats
from cio_destination.exceptions import CredentialsError, CustomerioTerminalError
from cio_destination.operations import Entry
from cio_destination.store import PENDING, SENT, StateStore

logger = logging.getLogger("cio_destination")

UNKNOWN_REASON = "send_outcome_unknown"
UNKNOWN_MESSAGE = (
    "a previous load was interrupted while this send was in flight; it may or may not have been"
    " delivered, so it is not sent again (set resend_uncertain to send such rows once more)"
)


@dataclass
class EmailResult(SendResult):
    skipped: int = 0
    """Rows whose send key was already sent: never sent twice."""


class EmailSender:
    """Sends one request per row through the App API, up to `max_in_flight` at once."""

    def __init__(self, client: AppClient, *, max_in_flight: int) -> None:
        self.client = client
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
        known = store.claim_sends(table, keys, load_id, reclaim_pending=resend_uncertain)
        to_send: list[Entry] = []
        for entry in entries:
            state = known.get(entry.key or "")
            if state == SENT:
                result.skipped += len(entry.rows)
            elif state == PENDING:
                result.rejections.extend(entry.reject(UNKNOWN_REASON, None, UNKNOWN_MESSAGE))
            else:
                to_send.append(entry)
        futures = [
            (e, self._pool.submit(self._send_one, e, store, resend_uncertain)) for e in to_send
        ]
        released: list[str] = []
        for entry, future in futures:
            self._collect(entry, future, result, released)
        store.release_sends(released)
        return result

    def _send_one(
        self, entry: Entry, store: StateStore, resend_uncertain: bool
    ) -> tuple[SendStats, SendOutcome | None]:
        """Send one row; `None` as outcome means it may or may not have been delivered."""
        stats = SendStats()
        try:
            outcome = self.client.send_email(entry.data, stats, resend_uncertain=resend_uncertain)
        except OutcomeUnknown:
            return stats, None
        if outcome.delivery_id is not None:
            store.mark_sent(entry.key or "", outcome.delivery_id)
        return stats, outcome

    def _collect(
        self,
        entry: Entry,
        future: Future[tuple[SendStats, SendOutcome | None]],
        result: EmailResult,
        released: list[str],
    ) -> None:
        try:
            stats, outcome = future.result()
        except BaseException as exc:
            # refused or out of retries: Customer.io did not take it, so a later load may send it
            released.append(entry.key or "")
            if result.error is None or (
                isinstance(exc, CustomerioTerminalError)
                and not isinstance(result.error, CustomerioTerminalError)
            ):
                result.error = exc
            if isinstance(exc, CredentialsError):
                logger.error("Customer.io App API refused the credentials")
            return
        result.stats.add(stats)
        if outcome is None:
            message = (
                "a gateway error, a timeout or a dropped connection came after the send may have"
                " reached Customer.io; it is not sent again unless resend_uncertain is set"
            )
            result.rejections.extend(entry.reject(UNKNOWN_REASON, None, message))
        elif outcome.rejection is not None:
            released.append(entry.key or "")
            result.rejections.extend(entry.reject(*outcome.rejection))
