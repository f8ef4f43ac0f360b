"""What sending did: the counters of requests, and the result of sending a list of entries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain

from cio_destination.entries import Entry, Rejection


@dataclass
class SendStats:
    """Counters of one or more sends; added up per load, table and action for the report."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    throttled_seconds: float = 0.0
    accepted: int = 0

    def add(self, other: SendStats) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.throttled += other.throttled
        self.throttled_seconds += other.throttled_seconds
        self.accepted += other.accepted


@dataclass
class SendResult:
    """What happened to a list of entries: rejections, counters, and the error that stopped it."""

    rejections: list[Rejection] = field(default_factory=list)
    stats: SendStats = field(default_factory=SendStats)
    error: BaseException | None = None
    delivered: list[Sequence[Entry]] = field(default_factory=list)
    """Groups of entries Customer.io accepted (a 2xx, or a 207 that did not name them)."""
    skipped: int = 0
    """Rows not sent because their send key was already sent (or is being sent right now):
    transactional sends are never sent twice."""

    def delivered_entries(self) -> Iterator[Entry]:
        return chain.from_iterable(self.delivered)
