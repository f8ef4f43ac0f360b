"""Fault injection: latency, rate limiting, 429s, 5xx, dropped connections, lost responses."""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Outcomes of FaultInjector.decide().
NONE = ""
RATE_LIMITED = "rate_limit"
HTTP429 = "http429"
HTTP500 = "http500"
HTTP503 = "http503"
DROP = "drop"
LOST_RESPONSE = "lost_response"

_RATES = ("http429_rate", "error_rate", "drop_rate", "lost_response_rate")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    return float(value)


@dataclass(frozen=True)
class Faults:
    """Faults the emulator injects into Track and App API requests (all off by default).

    The ``*_rate`` fields are fractions of API requests, drawn from one uniform number per request,
    so together they must not exceed 1.  Faulted requests (429, 5xx, dropped) change no state; a
    *lost response* is applied first and then its connection is closed without an answer.
    Inspection endpoints (``/_emulator/*``) are never faulted.
    """

    #: Seconds added before answering every API request.
    latency: float = 0.0
    #: Up to this many extra seconds (uniform) on top of ``latency``.
    latency_jitter: float = 0.0
    #: Requests per second allowed across all API endpoints (sliding one-second window); requests
    #: over it are answered ``429`` with ``Retry-After``.  ``None`` = unlimited.
    rate_limit: float | None = None
    #: Value of the ``Retry-After`` header (seconds) on 429 answers.
    retry_after: int = 1
    #: Fraction of API requests answered ``429`` with ``Retry-After``.
    http429_rate: float = 0.0
    #: Fraction of API requests answered ``500`` or ``503`` (half each).
    error_rate: float = 0.0
    #: Fraction of API requests whose connection is closed without a response, not applied.
    drop_rate: float = 0.0
    #: Fraction of API requests applied and then closed without a response.
    lost_response_rate: float = 0.0
    #: Seed of the random draws, for reproducible runs.
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency", "latency_jitter"):
            if _number(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.rate_limit is not None and _number("rate_limit", self.rate_limit) <= 0:
            raise ValueError("rate_limit must be > 0 (or None for no limit)")
        if isinstance(self.retry_after, bool) or not isinstance(self.retry_after, int):
            raise ValueError("retry_after must be an integer")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        total = 0.0
        for name in _RATES:
            rate = _number(name, getattr(self, name))
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError("http429_rate + error_rate + drop_rate + lost_response_rate exceeds 1")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError("seed must be an integer or None")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build from a mapping of field names; unknown names raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        return cls(**data)

    @property
    def active(self) -> bool:
        """True when any fault is switched on."""
        return bool(
            self.latency
            or self.latency_jitter
            or self.rate_limit is not None
            or any(getattr(self, name) for name in _RATES)
        )


class FaultInjector:
    """Decides, under one lock and with one ``random.Random``, what happens to each API request."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)
        self._window: collections.deque[float] = collections.deque()

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> None:
        """Replace the faults; re-seeds the random draws and empties the rate window."""
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._window.clear()

    def clear_window(self) -> None:
        with self._lock:
            self._window.clear()

    def decide(self, now: float) -> tuple[str, float, int]:
        """``(outcome, delay_seconds, retry_after)`` for a request that arrived at ``now``."""
        faults = self._faults
        if not faults.active:
            return NONE, 0.0, faults.retry_after
        with self._lock:
            faults = self._faults
            rng = self._rng
            delay = faults.latency
            if faults.latency_jitter:
                delay += rng.uniform(0.0, faults.latency_jitter)
            if faults.rate_limit is not None:
                window = self._window
                cutoff = now - 1.0
                while window and window[0] <= cutoff:
                    window.popleft()
                if len(window) >= faults.rate_limit:
                    return RATE_LIMITED, delay, faults.retry_after
                window.append(now)
            if not (
                faults.http429_rate
                or faults.error_rate
                or faults.drop_rate
                or faults.lost_response_rate
            ):
                return NONE, delay, faults.retry_after
            draw = rng.random()
            edge = faults.http429_rate
            if draw < edge:
                return HTTP429, delay, faults.retry_after
            edge += faults.error_rate
            if draw < edge:
                outcome = HTTP500 if rng.random() < 0.5 else HTTP503
                return outcome, delay, faults.retry_after
            edge += faults.drop_rate
            if draw < edge:
                return DROP, delay, faults.retry_after
            edge += faults.lost_response_rate
            if draw < edge:
                return LOST_RESPONSE, delay, faults.retry_after
            return NONE, delay, faults.retry_after
