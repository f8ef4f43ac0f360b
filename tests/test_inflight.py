"""The window of requests in flight: about the rate times the measured latency, capped."""

from __future__ import annotations

import threading

import pytest

from cio_destination.transport.inflight import InFlightWindow


def test_the_window_follows_rate_times_latency_within_the_cap():
    rate = [100.0]
    window = InFlightWindow(64, lambda: rate[0])
    assert window.limit == 64  # nothing measured yet: the cap

    window.observe(0.02)  # 20 ms: 100/s x 0.02 s = 2 at Customer.io, plus room to start
    assert window.limit == 5
    window = InFlightWindow(64, lambda: rate[0])
    window.observe(0.2)
    assert window.limit == 27
    window = InFlightWindow(64, lambda: rate[0])
    window.observe(0.5)  # 50 wanted at Customer.io: 65 with the spare, capped at 64
    assert window.limit == 64
    rate[0] = 25.0  # a 429 halved the shared rate twice: fewer requests are needed in flight
    assert window.limit == 18


def test_the_latency_is_a_running_average_of_the_answers():
    window = InFlightWindow(64, lambda: 100.0)
    window.observe(0.1)
    for _ in range(40):
        window.observe(0.5)
    assert window.latency == pytest.approx(0.5, abs=0.001)
    window.observe(0.0)  # one fast answer moves the average a fifth of the way
    assert window.latency == pytest.approx(0.4, abs=0.001)


def test_acquire_blocks_while_the_window_is_full_and_release_lets_one_in():
    window = InFlightWindow(2, lambda: 100.0)
    window.acquire()
    window.acquire()
    entered = threading.Event()

    def third() -> None:
        window.acquire()
        entered.set()

    thread = threading.Thread(target=third)
    thread.start()
    assert not entered.wait(0.05)  # two in flight: the third waits (a check, not a timing)
    window.release(0.01)
    thread.join(timeout=60)
    assert entered.is_set()
    assert window.most == 2


def test_a_window_needs_room_for_one_request():
    with pytest.raises(ValueError):
        InFlightWindow(0, lambda: 100.0)
