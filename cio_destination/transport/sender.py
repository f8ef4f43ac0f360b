"""The Track API's sender: entries packed into request bodies, several requests in flight.

A job's consecutive sends may share a `Carry`: the part-filled last body of one send is held
back and filled with the next send's first entries, so a table takes as many requests as its
operations packed as one sequence would. A send whose entries ride in a later send's request
is answered only once that request is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from cio_destination.entries import Entry, pack_across, pack_entries
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
        self._carry: Carry | None = None
        self._carried: list[tuple[Future[SendResult], bool]] = []

    def add(self, future: Future[SendResult]) -> None:
        self._futures.append(future)

    def hold(self, carry: Carry) -> None:
        """Some of this send's entries wait in `carry` for a later send's request."""
        self._carry = carry

    def carried_by(self, future: Future[SendResult], collect: bool) -> None:
        """Entries of this send went out in `future`'s request: this send is answered only
        once it is, and fails if it fails; `collect`: its outcome is this send's to count
        (else the send it belongs to counts it)."""
        self._carried.append((future, collect))
        self._carry = None

    def admitted(self) -> None:
        """One request of this send got into the window (or will never need it)."""
        with self._changed:
            self._admitted += 1
            self._changed.notify_all()

    def waiting(self) -> int:
        """Requests of this send that still wait for room in the window."""
        with self._changed:
            return max(len(self._futures) - self._admitted, 0)

    def wait_admitted(self) -> None:
        """Block until every request of this send is in flight or answered: none still waits
        for room in the window."""
        with self._changed:
            self._changed.wait_for(lambda: self._admitted >= len(self._futures))

    def done(self) -> bool:
        """True once every request holding an entry of it has its answer (`result()` then
        returns at once); never while some of its entries are still held back."""
        return self._carry is None and all(
            future.done() for future in [*self._futures, *(f for f, _ in self._carried)]
        )

    def result(self) -> SendResult:
        """What every request of this send came to, once all of them are answered (entries
        still held back are sent now, alone)."""
        if self._carry is not None:
            self._carry.flush()
        for future in self._futures:
            self._sender.collect(self._total, future)
        for future, collect in self._carried:
            self._sender.collect(self._total, future, outcome=collect)
        self._futures.clear()
        self._carried.clear()
        return self._total


class Sender:
    """Packs entries into bodies and keeps requests in flight, as many as the window admits.

    One pool per workspace, shared by every dlt load thread: latency does not cut throughput, and
    the rate limiter, not the pool, decides how fast requests start; the window
    (`InFlightWindow`) decides how many bodies may wait for a start or an answer, about the rate
    times the measured latency. Until one request has been accepted, requests go one at a time,
    so bad credentials cost a single request, unless the caller checked them already
    (`credentials_checked`: the workspace's region check, a request with the same credentials
    to the same host); after a terminal answer (refused credentials, a wrong URL), every send
    of the same load stops without a request, and the next load tries one request first again.
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

    def credentials_checked(self) -> None:
        """A request with the client's credentials to its host was just accepted (the load's
        region check): the first batches need not go one at a time. At 500 ms, one alone held
        back every other request of a 1M-row sync for a round trip, a tenth of it."""
        self._verified = True

    def forget_refusal(self) -> None:
        """A new load tries the credentials again (they may have been fixed in the meantime)."""
        self._refused = None

    def send(self, entries: Sequence[Entry]) -> SendResult:
        return self.send_parts([entries])

    def send_parts(self, parts: Sequence[Sequence[Entry]]) -> SendResult:
        """Send several sequences of entries (lists, or blocks still in Arrow) as one: bodies
        are packed within each part, and all of them share the in-flight requests."""
        return self.start(parts).result()

    def start(self, parts: Sequence[Sequence[Entry]], carry: Carry | None = None) -> Sending:
        """Start sending `parts` as `send_parts` does and return without waiting for their
        answers. The requests wait for room in the window in the pool's queue (a body is
        written only once its request is admitted), so the caller can prepare its next
        entries meanwhile; `Sending.wait_admitted` tells when none is waiting any more.

        With `carry`, the entries it holds lead the first body, bodies are filled across
        `parts`, and the last, part-filled body is held back in it in turn."""
        sending = Sending(self, SendResult())
        if carry is None:
            groups = [g for part in parts for g in pack_entries(part, self.max_request_bytes)]
            self._submit(groups, sending)
        else:
            carry.start(self, parts, sending)
        return sending

    def _submit(self, groups: list[Sequence[Entry]], sending: Sending) -> Future[SendResult] | None:
        """Submit a request per group for `sending`; returns the first group's future."""
        futures: list[Future[SendResult]] = []
        if groups and not self._verified:
            with self._probe_lock:
                if self._refused is None and not self._verified:
                    probe = self._pool.submit(self._send_batch, groups[0], sending)
                    sending.add(probe)
                    futures.append(probe)
                    groups = groups[1:]
                    self._verified = probe.exception() is None
                    if not self._verified:
                        return probe  # no more requests after a failed first one
        if groups and self._refused is not None:
            failed: Future[SendResult] = Future()
            failed.set_exception(self._refused.again())
            sending.add(failed)
            sending.admitted()  # it needs no room in the window
            return futures[0] if futures else failed
        for group in groups:
            futures.append(self._pool.submit(self._send_batch, group, sending))
            sending.add(futures[-1])
        return futures[0] if futures else None

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

    def collect(
        self, total: SendResult, future: Future[SendResult], *, outcome: bool = True
    ) -> None:
        """Add the outcome of one request (its result, or the error it raised) to `total`;
        `outcome=False`: only the error (another send counts the result)."""
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
        if not outcome:
            return
        total.rejections.extend(part.rejections)
        total.delivered.extend(part.delivered)
        total.stats.add(part.stats)


class Carry:
    """The part-filled last body of one job's sends, held back for the job's next send.

    The next send's first entries fill it (a request then holds entries of two sends, or more
    when a send is smaller than a body), and every send with an entry in that request is
    answered once it is (`Sending.carried_by`). A send that waits for its answers while its
    entries are still held sends them alone first (`flush`). One per job, used by the job's
    thread alone.
    """

    def __init__(self) -> None:
        self._sender: Sender | None = None
        self._held: Sequence[Entry] = []
        self._owners: list[Sending] = []

    def start(self, sender: Sender, parts: Sequence[Sequence[Entry]], sending: Sending) -> None:
        """Submit `parts` for `sending`, the held entries first; hold the new last body."""
        self._sender = sender
        groups, tail = pack_across(self._held, parts, sender.max_request_bytes)
        owners = self._owners
        self._held, self._owners = tail, []
        if not groups:
            self._owners = owners  # nothing went out: all of it is still held
        if len(tail) and any(len(part) for part in parts):
            self._owners.append(sending)
        for owner in self._owners:
            owner.hold(self)
        first = sender._submit(groups, sending)
        if groups and owners:
            assert first is not None
            for owner in owners:  # the first request holds their entries: its outcome is sending's
                owner.carried_by(first, collect=False)

    def flush(self) -> None:
        """Send the held entries alone now; the newest send they belong to counts the answer."""
        held, owners = self._held, self._owners
        self._held, self._owners = [], []
        if not len(held) or self._sender is None:
            return
        carrier = Sending(self._sender, SendResult())
        first = self._sender._submit([held], carrier)
        assert first is not None
        for owner in owners:
            owner.carried_by(first, collect=owner is owners[-1])
