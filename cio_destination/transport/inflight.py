"""How many requests a workspace keeps in flight: about its rate times Customer.io's latency.

At 100 requests a second and 300 ms per answer, 30 requests must be in flight to use the whole
budget; at 20 ms, 2 do. Keeping more in flight than that only holds bodies in memory while
they wait for the rate limit (and leaves more rows to replay after a crash), so the window
follows the measured latency, capped by `max_concurrent_requests`. It sits in front of the rate
limiter and never reads its internals: the limiter decides when a request starts, the window
how many may wait for that start or for their answer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

# requests beyond rate x latency, so one that waits for its rate-limit slot is always ready
_SPARE = 2
_HEADROOM = 1.25
# weight of the newest latency measurement in the running average
_WEIGHT = 0.2


class InFlightWindow:
    """Requests admitted at once: `ceil(rate x latency x 1.25) + 2`, at most `cap`.

    `rate` is read on every admission (a 429 lowers it); the latency is the running average of
    measured answer times (rate-limit and retry waits left out). Thread-safe; one per workspace.
    """

    def __init__(self, cap: int, rate: Callable[[], float]) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self._rate = rate
        self._latency: float | None = None
        self._busy = 0
        self.most = 0
        """The most requests ever admitted at once."""
        self._changed = threading.Condition()

    @property
    def latency(self) -> float | None:
        """The running average of measured answer times, in seconds (None before the first)."""
        return self._latency

    @property
    def limit(self) -> int:
        """How many requests may be admitted at once now."""
        latency = self._latency
        if latency is None:
            return self.cap
        wanted = math.ceil(self._rate() * latency * _HEADROOM) + _SPARE
        return max(1, min(self.cap, wanted))

    def acquire(self) -> None:
        """Block until one more request may be in flight, and count it."""
        with self._changed:
            self._changed.wait_for(lambda: self._busy < self.limit)
            self._busy += 1
            self.most = max(self.most, self._busy)

    def release(self, latency: float | None = None) -> None:
        """A request admitted by `acquire` is done; `latency`: its answer time, if measured."""
        with self._changed:
            self._busy -= 1
            if latency is not None:
                self._observe(latency)
            self._wake()

    def observe(self, latency: float) -> None:
        """Count one measured answer time (seconds) into the running average."""
        with self._changed:
            self._observe(latency)
            self._wake()

    def _wake(self) -> None:
        # only as many waiters as there is room for: the rest sleep on, not woken for nothing
        room = self.limit - self._busy
        if room > 0:
            self._changed.notify(room)

    def _observe(self, latency: float) -> None:
        previous = self._latency
        self._latency = latency if previous is None else previous + _WEIGHT * (latency - previous)
