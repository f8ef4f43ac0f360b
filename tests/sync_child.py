"""A sync run in its own process, for tests that SIGKILL it at random points and run it again.

    python -m tests.sync_child PIPELINES_DIR EMULATOR_URL EVENTS PEOPLE DONE_MARKER

Each run first finishes any package a killed run left behind, then extracts and loads the same
deterministic rows. It writes DONE_MARKER only when a run completed with nothing pending.
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


def event_rows(count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {
            "event_key": f"evt-{i:07d}",
            "user_id": i % 997,
            "amount": i % 100 + 0.5,
            "at": 1_700_000_000 + i,
        }


def person_rows(count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {"user_id": i, "plan": ("free", "pro", "team")[i % 3], "score": i * 7 % 1000}


def resources(events: int, people: int) -> list[Any]:
    event_resource = customerio_adapter(
        dlt.resource(event_rows(events), name="events"),
        action="event",
        identifier="user_id",
        event_name="payment",
        event_id="event_key",
        timestamp="at",
    )
    people_resource = customerio_adapter(
        dlt.resource(person_rows(people), name="people"), action="identify", identifier="user_id"
    )
    return [event_resource, people_resource]


def main() -> int:
    pipelines_dir, url, events, people, marker = sys.argv[1:6]
    destination = customerio(
        site_id=SITE_ID,
        api_key=API_KEY,
        track_url=url,
        max_request_bytes=20_000,
        max_attempts=10,
    )
    pipeline = dlt.pipeline("killed_sync", destination=destination, pipelines_dir=pipelines_dir)
    if pipeline.list_extracted_load_packages() or pipeline.list_normalized_load_packages():
        pipeline.run()  # finish what a killed run left pending
    pipeline.run(resources(int(events), int(people)))
    if not pipeline.list_normalized_load_packages():
        Path(marker).write_text("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
