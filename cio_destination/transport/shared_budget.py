"""One request budget shared by every process and machine that sends to a workspace.

`rate_limit_url` names where it lives: Redis or Valkey (`redis://`, `rediss://`, `unix://`) or
PostgreSQL (`postgresql://`, also in SQLAlchemy's `postgresql+<driver>://` form, so the URL of
`state_url` can serve). pyrate-limiter keeps the budget itself:

* in Redis, a GCRA bucket with no burst (one theoretical arrival time per budget, moved by a Lua
  script): every process's starts are spaced evenly at the rate, as one process's are;
* in PostgreSQL, a sliding-window log (a row per start, the table locked for each check): at
  most the rate in any second, and starts at least 0.9/rate of a second apart, so they do not
  bunch up.

The adaptive cut on 429 is this module's own and lives in the same backend: a factor of the
configured rate that a 429 anywhere halves (its `Retry-After` holds every start for all) and each
accepted request anywhere raises by 5% of the rate. Each process reads it at most every 0.2 s, so
a throttle reaches every process within a second, and so does the recovery.

A backend that cannot be reached fails the request with `CustomerioTransientError` naming
`rate_limit_url` (never the URL's credentials): pacing never falls back to an unshared budget.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from cio_destination.exceptions import CustomerioTerminalError, CustomerioTransientError
from cio_destination.transport.ratelimit import RateLimiter

URL_KEY = "destination.customerio.rate_limit_url"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
REFRESH_SECONDS = 0.2
"""How long a process goes on with the shared factor it read last."""
RECOVERY_STEP = 0.05
"""What each accepted request gives back of the configured rate after a cut."""
_CONNECT_TIMEOUT = 5.0
_T = TypeVar("_T")


def backend_of(url: str) -> str | None:
    """`redis` or `postgresql` for a `rate_limit_url`, None for a URL of neither kind."""
    scheme, _, driver = urlsplit(url).scheme.lower().partition("+")
    if scheme in REDIS_SCHEMES and not driver:
        return "redis"
    if scheme in POSTGRES_SCHEMES:
        return "postgresql"
    return None


def where(url: str) -> str:
    """The URL's scheme, host and port only: what an error may show of `rate_limit_url`."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def budget_name(workspace: str, api: str) -> str:
    """The name of a workspace's budget for one API in the backend: a digest of what identifies
    the workspace (its site id), never the text itself."""
    return f"{hashlib.sha256(workspace.encode()).hexdigest()[:20]}_{api}"


class Budget(Protocol):
    """A backend holding budgets and their adaptive factors."""

    errors: tuple[type[BaseException], ...]
    """What the backend raises when it cannot be reached or used."""

    def take(self, rate: float) -> float:
        """Claim one start at `rate` per second: 0 when granted, else the seconds to wait."""

    def adapt(self, change: str, amount: float, pause: float) -> tuple[float, float]:
        """`change` is `read`, `cut` (halve, not below `amount`) or `recover` (add `amount`, up
        to 1); `pause` holds every start that long. Returns (factor, seconds still held)."""


class SharedRateLimiter(RateLimiter):
    """A `RateLimiter` whose budget and 429 adaptation are shared through `rate_limit_url`.

    Within a process one thread at a time claims from the backend (the others queue behind it,
    as they would for the next slot of an in-process limiter), so a process adds one round trip
    per request start, not a poll per waiting thread.
    """

    def __init__(
        self,
        rate: float,
        budget: Budget,
        url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(rate, clock=clock, sleep=sleep)
        self._budget = budget
        self._where = where(url)
        self._factor = 1.0
        self._held_until = float("-inf")
        self._read_at = float("-inf")
        self._turn = threading.Lock()

    @property
    def rate(self) -> float:
        return self.configured_rate * self._factor

    def acquire(self) -> float:
        """Block until the shared budget grants this caller a start; returns the seconds waited.

        Raises `CustomerioTransientError` naming `rate_limit_url` when the backend fails."""
        asked = self._clock()
        with self._turn:
            while True:
                now = self._clock()
                if now - self._read_at >= REFRESH_SECONDS:
                    self._update(self._call(self._budget.adapt, "read", 0.0, 0.0))
                held = self._held_until - now
                if held > 0:
                    self._sleep(min(held, REFRESH_SECONDS))
                    continue
                wait = self._call(self._budget.take, self.rate)
                if wait <= 0:
                    break
                self._sleep(min(wait, REFRESH_SECONDS))
        return max(self._clock() - asked, 0.0)

    def shared_rate(self) -> tuple[float, float]:
        """What the backend says now: the rate every process of the budget may start requests
        at, and for how many more seconds a `Retry-After` holds them all."""
        factor, held = self._call(self._budget.adapt, "read", 0.0, 0.0)
        return self.configured_rate * factor, held

    def throttled(self, pause: float = 0.0) -> None:
        """Customer.io said 429: halve the shared rate and hold every process's starts."""
        self._quietly("cut", self.min_rate / self.configured_rate, pause)

    def succeeded(self) -> None:
        if self._factor < 1.0:
            self._quietly("recover", RECOVERY_STEP, 0.0)

    def _quietly(self, change: str, amount: float, pause: float) -> None:
        # after a request's answer: a failing backend must not turn a delivered request into a
        # failed one; the next acquire() meets the failure and names it
        try:
            self._update(self._budget.adapt(change, amount, pause))
        except self._budget.errors:
            self._read_at = float("-inf")

    def _update(self, adapted: tuple[float, float]) -> None:
        factor, held = adapted
        with self._lock:
            now = self._clock()
            self._factor = min(1.0, max(factor, self.min_rate / self.configured_rate))
            self._held_until = now + held
            self._read_at = now

    def _call(self, method: Callable[..., _T], *args: Any) -> _T:
        try:
            return method(*args)
        except self._budget.errors as error:
            raise CustomerioTransientError(
                f"the shared rate limit at {URL_KEY} ({self._where}) cannot be used"
                f" ({type(error).__name__}); requests are never paced without it, so the load"
                " package stays pending and the next run resumes it: check that the server is"
                " up and reachable"
            ) from None


def shared_limiter(rate: float, url: str, name: str) -> SharedRateLimiter:
    """The limiter of budget `name` (see `budget_name`) in the backend of `rate_limit_url`."""
    kind = backend_of(url)
    budget: Budget
    try:
        if kind == "redis":
            budget = RedisBudget(url, name)
        elif kind == "postgresql":
            budget = PostgresBudget(url, name)
        else:
            raise ValueError(kind)
    except ValueError:
        # not chained: a parser's message may quote the URL, password and all
        raise CustomerioTerminalError(
            f"{URL_KEY} is not a valid redis:// or postgresql:// URL"
        ) from None
    return SharedRateLimiter(rate, budget, url)


def _missing(package: str, extra: str) -> CustomerioTerminalError:
    return CustomerioTerminalError(
        f"{URL_KEY} needs the {package} package: pip install 'cio-destination[{extra}]'"
    )


_ADAPT_LUA = """
local factor = tonumber(redis.call('GET', KEYS[1]) or '1')
local amount = tonumber(ARGV[2])
if ARGV[1] == 'cut' then
  factor = math.max(amount, factor / 2)
elseif ARGV[1] == 'recover' then
  factor = math.min(1, factor + amount)
end
if ARGV[1] ~= 'read' then
  if factor >= 1 then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], tostring(factor), 'EX', 3600)
  end
end
local pause = tonumber(ARGV[3])
if pause > 0 and redis.call('PTTL', KEYS[2]) < pause then
  redis.call('SET', KEYS[2], '1', 'PX', pause)
end
local held = redis.call('PTTL', KEYS[2])
if held < 0 then held = 0 end
return {tostring(factor), held}
"""


class RedisBudget:
    """A budget in Redis (or Valkey): pyrate-limiter's GCRA state and a Lua-kept factor."""

    def __init__(self, url: str, name: str) -> None:
        try:
            import redis
            from pyrate_limiter import GCRA, RateItem, RedisStateStore, StateBucket
        except ImportError:
            raise _missing("redis", "redis") from None
        self.errors = (redis.RedisError, OSError)
        self._redis = redis.Redis.from_url(
            url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_CONNECT_TIMEOUT
        )
        prefix = f"cio-destination:{name}"
        self._keys = (f"{prefix}:factor", f"{prefix}:hold")
        self._adapt = self._redis.register_script(_ADAPT_LUA)
        self._item = RateItem
        self._rate = 0.0
        self._bucket = StateBucket(
            [_even(1.0)], algorithm=GCRA(), store=RedisStateStore(self._redis, f"{prefix}:gcra")
        )

    def take(self, rate: float) -> float:
        if rate != self._rate:
            self._bucket.rates = [_even(rate)]
            self._rate = rate
        item = self._item("start", self._bucket.now(), 1)
        if self._bucket.put(item):
            return 0.0
        return max(int(self._bucket.waiting(item)), 1) / 1000

    def adapt(self, change: str, amount: float, pause: float) -> tuple[float, float]:
        factor, held = self._adapt(keys=self._keys, args=[change, amount, int(pause * 1000)])
        return float(factor), int(held) / 1000


def _even(rate: float) -> Any:
    """`rate` starts a second, evenly spaced (no burst), in microsecond steps."""
    from pyrate_limiter import Rate

    return Rate(max(1, round(rate * 1000)), 1_000_000, burst=1)


def _windows(rate: float) -> list[Any]:
    """Sliding windows: at most `rate` starts in any second, and starts at least 0.9/`rate` of a
    second apart (a tenth of the rate per 100 ms above 1,000 a second), so they do not bunch up;
    the 10% leaves room for the round trips of each claim, so the second's cap sets the pace."""
    from pyrate_limiter import Rate

    if rate > 1000:
        per_second = math.floor(rate)
        return [Rate(math.ceil(per_second / 10), 100), Rate(per_second, 1000)]
    if rate >= 2:
        return [Rate(1, max(1, math.floor(900 / rate))), Rate(math.floor(rate), 1000)]
    interval = math.ceil(1000 / rate)
    return [Rate(1, interval), Rate(2, 2 * interval)]


_FACTORS = "cio_destination_rate_factors"
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {_FACTORS} (
    budget text PRIMARY KEY,
    factor double precision NOT NULL,
    held_until timestamptz NOT NULL)
"""
_HELD = "GREATEST(0, EXTRACT(EPOCH FROM held_until - clock_timestamp()))::float8"
_READ = f"SELECT factor, {_HELD} FROM {_FACTORS} WHERE budget = %s"
_CUT = f"""
INSERT INTO {_FACTORS} AS t VALUES (%s, GREATEST(%s, 0.5), clock_timestamp() + %s * INTERVAL '1 s')
ON CONFLICT (budget) DO UPDATE SET factor = GREATEST(%s, t.factor / 2),
    held_until = GREATEST(t.held_until, EXCLUDED.held_until)
RETURNING factor, {_HELD}
"""
_RECOVER = f"""
UPDATE {_FACTORS} SET factor = LEAST(1, factor + %s) WHERE budget = %s RETURNING factor, {_HELD}
"""
_LEAK_EVERY = 10.0


class PostgresBudget:
    """A budget in PostgreSQL: pyrate-limiter's sliding-window bucket (table
    `ratelimit___cio_<budget>`) and the factors in `cio_destination_rate_factors`."""

    def __init__(self, url: str, name: str) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
            from pyrate_limiter import PostgresBucket, RateItem
        except ImportError:
            raise _missing("psycopg[pool]", "postgres") from None
        self.errors = (psycopg.Error, PoolTimeout, OSError)
        rest = url.partition("://")[2]
        self._pool = ConnectionPool(
            f"postgresql://{rest}",
            min_size=1,
            max_size=2,
            timeout=_CONNECT_TIMEOUT,
            open=False,
            kwargs={"connect_timeout": int(_CONNECT_TIMEOUT)},
        )
        self._name = name
        self._make_bucket = PostgresBucket
        self._item = RateItem
        self._bucket: Any = None
        self._rate = 0.0
        self._leaked_at = float("-inf")
        self._opening = threading.Lock()

    def _ready(self) -> Any:
        """The bucket, its tables created on first use (by one thread)."""
        with self._opening:
            if self._bucket is None:
                self._pool.open()
                with self._pool.connection() as connection:
                    connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_FACTORS,))
                    connection.execute(_CREATE)
                self._bucket = self._make_bucket(self._pool, f"cio_{self._name}", _windows(1.0))
            return self._bucket

    def take(self, rate: float) -> float:
        bucket = self._ready()
        if rate != self._rate:
            bucket.rates = _windows(rate)
            self._rate = rate
        now = bucket.now()
        if time.monotonic() - self._leaked_at > _LEAK_EVERY:
            bucket.leak(now)
            self._leaked_at = time.monotonic()
        item = self._item("start", now, 1)
        if bucket.put(item):
            return 0.0
        # 0 when another process held the table's lock: try again shortly
        return max(int(bucket.waiting(item)), 2) / 1000

    def adapt(self, change: str, amount: float, pause: float) -> tuple[float, float]:
        self._ready()
        with self._pool.connection() as connection:
            if change == "cut":
                row = connection.execute(_CUT, (self._name, amount, pause, amount)).fetchone()
            elif change == "recover":
                row = connection.execute(_RECOVER, (amount, self._name)).fetchone()
            else:
                row = connection.execute(_READ, (self._name,)).fetchone()
        return (1.0, 0.0) if row is None else (float(row[0]), float(row[1]))
