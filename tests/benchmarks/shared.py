"""The `shared` section: how much of one shared budget four processes use (`rate_limit_url`).

Four sync processes (`tests.rate_child`: 300 events and 300 people each, in requests of at most
1,000 bytes) load at once against one emulator workspace at `requests_per_second = 20`, sharing
the budget through Redis and then through PostgreSQL. The figure is the share of the budget they
used over the span of their requests at the emulator: requests / (span x rate). Target >= 0.85:
sharing must not cost the workspace its throughput (a budget claimed twice per request, or each
process pacing itself at a quarter, would show as half or less).

How much of the budget is used depends on the machine's speed (each claim's round trips to the
backend, each process's own work), so it is measured here; `tests/test_shared_rate.py` asserts
what holds at any speed: the budget is never exceeded, a `429` slows every process, and every row
arrives exactly once. Redis is `CIO_TEST_REDIS_URL` or a throwaway `redis-server`; PostgreSQL as
the `state` section finds it. A backend that cannot be started is reported as skipped, with why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests import rate_child
from tests.benchmarks.state import postgres

PROCESSES = 4
ROWS = 300
TARGETS = {
    "shared_budget_used_redis": (">=", 0.85),
    "shared_budget_used_postgresql": (">=", 0.85),
}


@contextlib.contextmanager
def redis() -> Iterator[str]:
    """A Redis URL: the one given, or a throwaway server's."""
    given = os.environ.get("CIO_TEST_REDIS_URL")
    if given:
        yield given
        return
    from tests.test_shared_rate import ThrowawayRedis

    server = ThrowawayRedis()
    try:
        yield server.start()
    finally:
        server.remove()


def share_used(rate_limit_url: str) -> dict[str, Any]:
    """Four processes sharing `rate_limit_url`: the share of the budget used, and what it is of."""
    from cio_destination.emulator import Emulator
    from tests.test_shared_rate import finish, go, most_in_one_second, start_child

    scratch = Path(tempfile.mkdtemp(prefix="cio-bench-shared-"))
    names = [f"p{i}" for i in range(PROCESSES)]
    site_id = f"bench-{uuid.uuid4().hex[:12]}"  # a budget of its own in a shared server
    try:
        with Emulator(site_id=site_id, api_key=rate_child.API_KEY) as workspace:
            children = [
                start_child(scratch, workspace.url, site_id, rate_limit_url, name, ROWS)
                for name in names
            ]
            go(scratch, children)
            finish(children)
            times = [r.time for r in workspace.requests]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    span = max(times) - min(times)
    return {
        "used": len(times) / (span * rate_child.RATE),
        "requests": len(times),
        "span_s": round(span, 2),
        "most_in_one_second": most_in_one_second(times),
    }


def section(bench: Any) -> None:
    """Each backend in turn; figures into `bench`."""
    from tests.test_postgres import PostgresUnavailable
    from tests.test_shared_rate import RedisUnavailable

    print(
        f"\n[shared] {PROCESSES} processes, one rate_limit_url budget of"
        f" {rate_child.RATE} requests/s: the share of it they used, per backend"
    )
    for backend, server in (("redis", redis), ("postgresql", postgres)):
        try:
            with server() as url:
                result = share_used(url)
        except (RedisUnavailable, PostgresUnavailable) as error:
            print(f"  {backend}: skipped: {error}")
            continue
        print(
            f"  {backend:<10} {result['requests']} requests in {result['span_s']} s:"
            f" {result['used']:.0%} of the budget, at most {result['most_in_one_second']}"
            " in one second",
            flush=True,
        )
        bench.figure(f"shared_budget_used_{backend}", result.pop("used"), "of budget", **result)
