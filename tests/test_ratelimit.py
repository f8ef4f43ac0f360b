"""The shared rate limiter with a fake clock: spacing, windows, throttling and recovery."""

from __future__ import annotations

import itertools
import threading

import pytest

from cio_destination.transport.ratelimit import RateLimiter


class FakeClock:
    """A clock that only moves when someone sleeps; sleeps are recorded, never real."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def starts_of(limiter: RateLimiter, clock: FakeClock, n: int) -> list[float]:
    starts = []
    for _ in range(n):
        asked = clock()
        waited = limiter.acquire()
        assert waited == pytest.approx(clock() - asked)  # what it says it waited, it slept
        starts.append(clock())
    return starts


def test_requests_are_spaced_evenly_at_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock, sleep=clock.sleep)

    starts = starts_of(limiter, clock, 100)

    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap == pytest.approx(0.05) for gap in gaps)


def test_no_one_second_window_holds_more_than_rate_plus_one():
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock, sleep=clock.sleep)

    starts = starts_of(limiter, clock, 200)

    worst = max(sum(1 for s in starts if t <= s < t + 1.0) for t in starts)
    assert worst <= 21


def test_idle_time_does_not_build_up_a_burst():
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock, sleep=clock.sleep)
    starts_of(limiter, clock, 3)
    clock.now += 60.0  # a long pause

    starts = starts_of(limiter, clock, 5)

    assert [round(s - starts[0], 6) for s in starts] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_threads_share_one_budget():
    clock = FakeClock()
    limiter = RateLimiter(50, clock=clock, sleep=lambda s: None)
    reserved: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            limiter.acquire()
            with lock:
                reserved.append(limiter._next)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # 100 reservations from 4 threads took 100 distinct slots 20 ms apart: one budget, not four
    assert sorted(round(r, 6) for r in reserved) == [round(0.02 * i, 6) for i in range(1, 101)]


def test_throttling_halves_the_rate_and_success_recovers_it():
    clock = FakeClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)

    limiter.throttled()
    limiter.throttled()
    assert limiter.rate == pytest.approx(25)

    for _ in range(100):
        limiter.succeeded()
    assert limiter.rate == pytest.approx(100)


def test_throttling_never_goes_below_the_floor():
    limiter = RateLimiter(100, min_rate=10)
    for _ in range(20):
        limiter.throttled()
    assert limiter.rate == pytest.approx(10)


def test_a_pause_holds_every_new_start():
    clock = FakeClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)
    limiter.acquire()

    limiter.throttled(pause=2.0)
    limiter.acquire()

    assert clock() == pytest.approx(2.0)


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(0)
