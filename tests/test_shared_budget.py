"""The shared rate limiter over a fake backend: what it asks of the backend, what it does with
the answers, and the error a failing backend gives (the real servers: tests/test_shared_rate.py)."""

from __future__ import annotations

import dataclasses

import pytest
from dlt.common.configuration.exceptions import ConfigurationValueError

from cio_destination.configuration import CustomerioConfiguration
from cio_destination.exceptions import CustomerioTerminalError, CustomerioTransientError
from cio_destination.transport.shared_budget import (
    SharedRateLimiter,
    backend_of,
    budget_name,
    shared_limiter,
    where,
)

from .test_ratelimit import FakeClock

URL = "redis://:hunter2secret@cache.internal:6380/0"


class Down(Exception):
    """What the fake backend raises when it is "unreachable"."""


class FakeBudget:
    """A backend that grants every `grant_every`-th claim and records what it was asked."""

    errors = (Down,)

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.factor = 1.0
        self.held_until = 0.0
        self.down = False
        self.claims: list[float] = []
        self.changes: list[tuple[str, float, float]] = []
        self.refuse = 0

    def take(self, rate: float) -> float:
        if self.down:
            raise Down("connection refused to cache.internal:6380 password=hunter2secret")
        self.claims.append(rate)
        if self.refuse:
            self.refuse -= 1
            return 0.05
        return 0.0

    def adapt(self, change: str, amount: float, pause: float) -> tuple[float, float]:
        if self.down:
            raise Down("connection refused")
        self.changes.append((change, amount, pause))
        if change == "cut":
            self.factor = max(amount, self.factor / 2)
            self.held_until = max(self.held_until, self.clock() + pause)
        elif change == "recover":
            self.factor = min(1.0, self.factor + amount)
        return self.factor, max(0.0, self.held_until - self.clock())


def limiter(budget: FakeBudget, clock: FakeClock) -> SharedRateLimiter:
    return SharedRateLimiter(20, budget, URL, clock=clock, sleep=clock.sleep)


def test_each_start_is_claimed_from_the_shared_budget_and_waits_as_it_says():
    clock = FakeClock()
    budget = FakeBudget(clock)
    shared = limiter(budget, clock)
    budget.refuse = 3

    waited = shared.acquire()

    assert budget.claims == [20.0] * 4  # refused three times, 50 ms apart, then granted
    assert waited == pytest.approx(0.15) and clock() == pytest.approx(0.15)


def test_a_cut_made_by_another_process_is_read_within_the_refresh_interval():
    clock = FakeClock()
    budget = FakeBudget(clock)
    shared = limiter(budget, clock)
    shared.acquire()
    clock.now += 0.25
    budget.factor, budget.held_until = 0.25, clock() + 1.0  # another process met a 429

    shared.acquire()

    assert clock() == pytest.approx(1.25)  # held for the whole Retry-After
    assert budget.claims[-1] == pytest.approx(5.0)  # then claimed at a quarter of the rate
    assert shared.rate == pytest.approx(5.0)


def test_a_429_cuts_the_shared_rate_and_successes_win_it_back():
    clock = FakeClock()
    budget = FakeBudget(clock)
    shared = limiter(budget, clock)

    shared.throttled(2.0)
    assert budget.changes[-1] == ("cut", pytest.approx(1 / 16), 2.0)  # the floor: rate / 16
    assert shared.rate == pytest.approx(10.0)
    for _ in range(10):
        shared.succeeded()

    assert [change for change, _, _ in budget.changes].count("recover") == 10
    assert shared.rate == pytest.approx(20.0)
    shared.succeeded()  # at the full rate, a success asks the backend nothing
    assert len(budget.changes) == 11


def test_an_unreachable_backend_fails_the_request_as_transient_naming_the_key():
    clock = FakeClock()
    budget = FakeBudget(clock)
    shared = limiter(budget, clock)
    budget.down = True

    with pytest.raises(CustomerioTransientError) as raised:
        shared.acquire()

    message = str(raised.value)
    assert "destination.customerio.rate_limit_url (redis://cache.internal:6380)" in message
    assert "Down" in message and "next run resumes it" in message
    assert "hunter2secret" not in message and raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_an_answered_request_is_not_failed_by_the_backend_after_it():
    clock = FakeClock()
    budget = FakeBudget(clock)
    shared = limiter(budget, clock)
    shared.throttled()
    budget.down = True

    shared.succeeded()  # the request was delivered: nothing raised here
    shared.throttled(1.0)
    with pytest.raises(CustomerioTransientError):
        shared.acquire()  # the next start meets the failure


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://localhost:6379/0", "redis"),
        ("rediss://user:pw@cache:6380", "redis"),
        ("unix:///run/redis.sock", "redis"),
        ("postgresql://u:p@db/analytics", "postgresql"),
        ("postgresql+psycopg2://u:p@db/analytics", "postgresql"),
        ("postgres://db/x", "postgresql"),
        ("redis+sentinel://cache", None),
        ("mysql://db/x", None),
        ("cache:6379", None),
    ],
)
def test_the_backend_is_told_by_the_urls_scheme(url: str, kind: str | None):
    assert backend_of(url) == kind


def test_an_error_shows_only_the_scheme_host_and_port():
    assert where("postgresql://loader:s3cret@db.internal:5433/analytics") == (
        "postgresql://db.internal:5433"
    )
    assert where(URL) == "redis://cache.internal:6380"


def test_a_budget_is_named_after_a_digest_of_the_workspace():
    name = budget_name("site-123", "track")
    assert "site-123" not in name and name.endswith("_track")
    assert name == budget_name("site-123", "track") != budget_name("site-124", "track")
    assert name.replace("_track", "_app") == budget_name("site-123", "app")


def config(**values) -> CustomerioConfiguration:
    return dataclasses.replace(CustomerioConfiguration(site_id="site", api_key="key"), **values)


def test_a_rate_limit_url_of_another_kind_is_refused_without_repeating_it():
    with pytest.raises(ConfigurationValueError) as raised:
        config(rate_limit_url="mysql://loader:s3cret@db/x").on_resolved()

    assert "destination.customerio.rate_limit_url" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    config(rate_limit_url="redis://localhost:6379/0").on_resolved()


def test_a_rate_limit_url_gives_its_own_workspace_and_rate():
    shared = config(rate_limit_url="redis://localhost:6379/0").workspace_key()

    assert shared != config().workspace_key()
    assert "redis://localhost:6379/0" not in repr(shared)  # a secret: kept as a digest


def test_a_redis_url_that_cannot_be_parsed_is_a_setting_to_fix_without_repeating_it():
    with pytest.raises(CustomerioTerminalError) as raised:
        shared_limiter(20, "redis://:s3cret@cache:port/0", "budget_track")

    assert "destination.customerio.rate_limit_url is not a valid" in str(raised.value)
    assert "s3cret" not in str(raised.value) and raised.value.__cause__ is None
