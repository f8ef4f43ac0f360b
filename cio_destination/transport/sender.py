"""The Track API's sender: entries packed into request bodies, several requests in flight."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from cio_destination.entries import Entry, pack_entries
from cio_destination.exceptions import CustomerioTerminalError
from cio_destination.transport.results import SendResult
from cio_destination.transport.track import TrackClient


class Sender:
    """Packs entries into bodies and keeps up to `max_in_flight` requests going at once.

    One pool per workspace, shared by every dlt load thread: latency does not cut throughput, and
    the rate limiter, not the pool, decides how fast requests start. Until one request has been
    accepted, requests go one at a time, so bad credentials cost a single request; after a
    terminal answer (refused credentials, a wrong URL), every send of the same load stops
    without a request, and the next load tries one request first again.
    """

    def __init__(self, client: TrackClient, *, max_in_flight: int, max_request_bytes: int) -> None:
        self.client = client
        self.max_request_bytes = max_request_bytes
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="customerio-send")
        self._probe_lock = threading.Lock()
        self._verified = False
        self._refused: CustomerioTerminalError | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def forget_refusal(self) -> None:
        """A new load tries the credentials again (they may have been fixed in the meantime)."""
        self._refused = None

    def send(self, entries: Sequence[Entry]) -> SendResult:
        return self.send_parts([entries])

    def send_parts(self, parts: Sequence[Sequence[Entry]]) -> SendResult:
        """Send several sequences of entries (lists, or blocks still in Arrow) as one: bodies
        are packed within each part, and all of them share the in-flight requests."""
        groups = [g for part in parts for g in pack_entries(part, self.max_request_bytes)]
        total = SendResult()
        if not groups:
            return total
        if not self._verified:
            with self._probe_lock:
                if self._refused is None and not self._verified:
                    self._collect(total, self._pool.submit(self._send_batch, groups[0]))
                    groups = groups[1:]
                    self._verified = total.error is None
        if self._refused is not None:
            total.error = self._refused
        if total.error is not None:
            return total
        futures = [self._pool.submit(self._send_batch, g) for g in groups]
        for future in futures:
            self._collect(total, future)
        return total

    def _send_batch(self, entries: Sequence[Entry]) -> SendResult:
        refused = self._refused
        if refused is not None:
            raise refused.again()  # a request of this load was refused: no more requests
        return self.client.send_batch(entries)

    def _collect(self, total: SendResult, future: Future[SendResult]) -> None:
        try:
            part = future.result()
        except BaseException as exc:
            if isinstance(exc, CustomerioTerminalError):
                self._refused, self._verified = exc, False
            if total.error is None or (
                isinstance(exc, CustomerioTerminalError)
                and not isinstance(total.error, CustomerioTerminalError)
            ):
                total.error = exc
            return
        total.rejections.extend(part.rejections)
        total.delivered.extend(part.delivered)
        total.stats.add(part.stats)
