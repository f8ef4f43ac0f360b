"""The Track API's sender: entries packed into request bodies, several requests in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from cio_destination.entries import Entry, pack_entries
from cio_destination.exceptions import CustomerioTerminalError
from cio_destination.transport.inflight import InFlightWindow
from cio_destination.transport.results import SendResult
from cio_destination.transport.track import TrackClient


class Sending:
    """Requests started by `Sender.start`; `result()` waits for their answers."""

    def __init__(self, sender: Sender, result: SendResult) -> None:
        self._sender = sender
        self._total = result
        self._futures: list[Future[SendResult]] = []
        self._admitted = 0
        self._changed = threading.Condition()

    def add(self, future: Future[SendResult]) -> None:
        self._futures.append(future)

    def admitted(self) -> None:
        """One request of this send got into the window (or will never need it)."""
        with self._changed:
            self._admitted += 1
            self._changed.notify_all()

    def wait_admitted(self) -> None:
        """Block until every request of this send is in flight or answered: none still waits
        for room in the window."""
        with self._changed:
            self._changed.wait_for(lambda: self._admitted >= len(self._futures))

    def done(self) -> bool:
        """True once every request has its answer (`result()` then returns at once)."""
        return all(future.done() for future in self._futures)

    def result(self) -> SendResult:
        """What every request of this send came to, once all of them are answered."""
        for future in self._futures:
            self._sender.collect(self._total, future)
        self._futures.clear()
        return self._total


class Sender:
    """Packs entries into bodies and keeps requests in flight, as many as the window admits.

    One pool per workspace, shared by every dlt load thread: latency does not cut throughput, and
    the rate limiter, not the pool, decides how fast requests start; the window
    (`InFlightWindow`) decides how many bodies may wait for a start or an answer, about the rate
    times the measured latency. Until one request has been accepted, requests go one at a time,
    so bad credentials cost a single request; after a terminal answer (refused credentials, a
    wrong URL), every send of the same load stops without a request, and the next load tries
    one request first again.
    """

    def __init__(self, client: TrackClient, *, max_in_flight: int, max_request_bytes: int) -> None:
        self.client = client
        self.max_request_bytes = max_request_bytes
        self.window = InFlightWindow(max_in_flight, lambda: client.limiter.rate)
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
        return self.start(parts).result()

    def start(self, parts: Sequence[Sequence[Entry]]) -> Sending:
        """Start sending `parts` as `send_parts` does and return without waiting for their
        answers. The requests wait for room in the window in the pool's queue (a body is
        written only once its request is admitted), so the caller can prepare its next
        entries meanwhile; `Sending.wait_admitted` tells when none is waiting any more."""
        groups = [g for part in parts for g in pack_entries(part, self.max_request_bytes)]
        total = SendResult()
        sending = Sending(self, total)
        if not groups:
            return sending
        if not self._verified:
            with self._probe_lock:
                if self._refused is None and not self._verified:
                    probe = Sending(self, total)
                    probe.add(self._pool.submit(self._send_batch, groups[0], probe))
                    probe.result()
                    groups = groups[1:]
                    self._verified = total.error is None
        if self._refused is not None:
            total.error = self._refused
        if total.error is not None:
            return sending
        for group in groups:
            sending.add(self._pool.submit(self._send_batch, group, sending))
        return sending

    def _send_batch(self, entries: Sequence[Entry], sending: Sending) -> SendResult:
        self.window.acquire()
        sending.admitted()
        latency = None
        try:
            refused = self._refused
            if refused is not None:
                raise refused.again()  # a request of this load was refused: no more requests
            started = time.monotonic()
            try:
                result = self.client.send_batch(entries)
            except CustomerioTerminalError as exc:
                self._refused = exc  # the requests still queued stop at once, not when collected
                raise
            stats = result.stats
            if stats.requests and not stats.retries:
                # the answer time alone: the rate limit's waits are the limiter's business
                elapsed = time.monotonic() - started - stats.throttled_seconds
                latency = max(elapsed, 0.0) / stats.requests
            return result
        finally:
            self.window.release(latency)

    def collect(self, total: SendResult, future: Future[SendResult]) -> None:
        """Add the outcome of one request (its result, or the error it raised) to `total`."""
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
