"""One request rate per workspace, shared by every thread that sends to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Spaces request starts evenly at `rate` per second across all threads (no bursts).

    Each caller reserves the next free slot under a lock and sleeps outside it, so any 1-second
    window holds at most `rate + 1` starts. A 429 halves the rate (down to `min_rate`); every later
    success wins back 5% of the configured rate, so throttling recovers once it stops.
    """

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.configured_rate = float(rate)
        self.min_rate = (
            min(float(min_rate), self.configured_rate)
            if min_rate
            else max(self.configured_rate / 16, min(1.0, self.configured_rate))
        )
        self._rate = self.configured_rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    def acquire(self) -> float:
        """Block until this caller may start a request; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self._rate
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def throttled(self, pause: float = 0.0) -> None:
        """Customer.io said 429: slow down for everyone, and hold new starts for `pause` seconds."""
        with self._lock:
            self._rate = max(self.min_rate, self._rate / 2)
            if pause > 0:
                self._next = max(self._next, self._clock() + pause)

    def succeeded(self) -> None:
        if self._rate < self.configured_rate:
            with self._lock:
                self._rate = min(self.configured_rate, self._rate + self.configured_rate / 20)
