"""One sync of two tables in its own process, sharing its rate budget through `rate_limit_url`.

    python -m tests.rate_child PIPELINES_DIR EMULATOR_URL SITE_ID RATE_LIMIT_URL NAME ROWS GO

Sends ROWS events and ROWS people, each named after NAME (so every process's rows are its own),
at `requests_per_second = 20` in small requests. Once extracted and normalized, it writes
`GO.NAME` and loads only when the file GO exists, so several children load together however
long each took to start. Exit 0 when the load completed; otherwise the destination's one-line
error on stderr and exit 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt

from cio_destination import customerio, customerio_adapter, exit_status

API_KEY = "test-key"
RATE = 20
TABLES = ("events", "people")


def event_keys(name: str, rows: int) -> list[str]:
    return [f"{name}-evt-{i:05d}" for i in range(rows)]


def person_ids(name: str, rows: int) -> list[str]:
    return [f"{name}-{i:05d}" for i in range(rows)]


def event_rows(name: str, rows: int) -> Iterator[dict[str, Any]]:
    for i, key in enumerate(event_keys(name, rows)):
        yield {"event_key": key, "user_id": f"{name}-{i % 50:05d}", "amount": i % 100 + 0.5}


def person_rows(name: str, rows: int) -> Iterator[dict[str, Any]]:
    for i, uid in enumerate(person_ids(name, rows)):
        yield {"uid": uid, "plan": ("free", "pro", "team")[i % 3]}


def resources(name: str, rows: int) -> list[Any]:
    events = customerio_adapter(
        dlt.resource(event_rows(name, rows), name="events"),
        action="event",
        identifier="user_id",
        event_name="payment",
        event_id="event_key",
    )
    people = customerio_adapter(
        dlt.resource(person_rows(name, rows), name="people"), action="identify", identifier="uid"
    )
    return [events, people]


def main() -> int:
    pipelines_dir, url, site_id, rate_limit_url, name, rows, go = sys.argv[1:8]
    destination = customerio(
        site_id=site_id,
        api_key=API_KEY,
        track_url=url,
        rate_limit_url=rate_limit_url,
        requests_per_second=RATE,
        max_request_bytes=1_000,
        max_attempts=10,
    )
    pipeline = dlt.pipeline(f"shared_{name}", destination=destination, pipelines_dir=pipelines_dir)
    try:
        pipeline.extract(resources(name, int(rows)))
        pipeline.normalize()
        Path(f"{go}.{name}").touch()
        deadline = time.monotonic() + 600  # only a test that never says go trips this
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        pipeline.load()
    except Exception as error:
        status = exit_status(error)
        print(status[1] if status else type(error).__name__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
