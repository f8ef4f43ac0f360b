"""Requests in flight at once, counted where they are made, never inferred from a clock.

A test that wants to know whether a sender overlaps its requests holds each one until `width` of
them are in flight together: a sender that overlaps them gets there on any machine, however slow;
one that waits for each answer before its next request never does, and the test fails on the
count, not on a time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# only a sender that never overlaps its requests waits this long, once
_PATIENCE = 60.0


class InFlight:
    """Counts requests in flight and holds each one until `width` are in flight at once.

    The first `let_through` requests are not held (a sender may send its first request alone).
    Once `width` requests have been in flight together (`filled`), none is held again; a hold
    that waits in vain for `_PATIENCE` seconds also ends the holding, leaving `filled` False.
    `most` is the most requests ever in flight at once.
    """

    def __init__(self, width: int, *, let_through: int = 0) -> None:
        self.width = width
        self.most = 0
        self.filled = False
        self._let_through = let_through
        self._seen = 0
        self._now = 0
        self._holding = True
        self._changed = threading.Condition()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Wrap one request: it counts as in flight inside, and is held there if need be."""
        with self._changed:
            self._seen += 1
            self._now += 1
            self.most = max(self.most, self._now)
            if self._now >= self.width:
                self.filled = True
                self._holding = False
                self._changed.notify_all()
            elif (
                self._holding
                and self._seen > self._let_through
                and not self._changed.wait_for(lambda: not self._holding, timeout=_PATIENCE)
            ):
                self._holding = False  # waited in vain: hold no more, `filled` stays False
                self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._now -= 1
