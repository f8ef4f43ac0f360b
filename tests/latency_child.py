"""A sync against a slow Customer.io in its own process, for a test that SIGKILLs it mid-load.

    python -m tests.latency_child PIPELINES_DIR EMULATOR_URL PEOPLE EVENTS DONE_MARKER

Each run first finishes any package a killed run left behind, then loads two tables one after
the other (so every request in flight at a moment is of one table): `people`, where every
person comes twice, first with stale values and then, further down the table, with their
final ones; and `events`. Default settings otherwise: bodies of up to 500 KB, so one dlt batch
of 10,000 rows makes only a few requests. It writes DONE_MARKER only when a run completed
with nothing pending.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt

from cio_destination import customerio, customerio_adapter

SITE_ID = "test-site"
API_KEY = "test-key"


def final_person(i: int) -> dict[str, Any]:
    return {"user_id": i, "plan": ("free", "pro", "team")[i % 3], "score": i * 7 % 1000}


def people_rows(count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {"user_id": i, "plan": "stale", "score": -1}
    for i in range(count):
        yield final_person(i)


def event_rows(count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {"event_key": f"evt-{i:07d}", "user_id": i % 997, "at": 1_700_000_000 + i}


def main() -> int:
    pipelines_dir, url, people, events, marker = sys.argv[1:6]
    destination = customerio(site_id=SITE_ID, api_key=API_KEY, track_url=url, max_attempts=10)
    pipeline = dlt.pipeline("slow_sync", destination=destination, pipelines_dir=pipelines_dir)
    if pipeline.list_extracted_load_packages() or pipeline.list_normalized_load_packages():
        pipeline.run()  # finish what a killed run left pending
    people_resource = dlt.resource(people_rows(int(people)), name="people")
    pipeline.run(customerio_adapter(people_resource, action="identify", identifier="user_id"))
    event_resource = dlt.resource(event_rows(int(events)), name="events")
    pipeline.run(
        customerio_adapter(
            event_resource,
            action="event",
            identifier="user_id",
            event_name="visit",
            event_id="event_key",
            timestamp="at",
        )
    )
    if not pipeline.list_normalized_load_packages():
        Path(marker).write_text("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
