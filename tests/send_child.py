"""Transactional sends in their own process, for a test that SIGKILLs it and runs it again.

python -m tests.send_child PIPELINES_DIR EMULATOR_URL ROWS DONE_MARKER [IN_FLIGHT]

IN_FLIGHT is `max_concurrent_requests`: at most that many sends are in flight when it is killed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import dlt

from cio_destination import customerio, customerio_adapter


def receipts(count: int) -> list[dict[str, object]]:
    return [
        {"receipt_id": i, "email": f"buyer{i}@example.com", "amount": i % 50 + 0.25}
        for i in range(count)
    ]


def receipts_resource(count: int) -> Any:
    """`count` transactional sends (message 3), one per receipt, to the buyer's email."""
    return customerio_adapter(
        dlt.resource(receipts(count), name="receipts"),
        action="send_email",
        identifier="email",
        identifier_type="email",
        transactional_message_id=3,
        to="email",
        event_id="receipt_id",
    )


def send_settings(url: str) -> dict[str, Any]:
    """The destination's keys for the emulator at `url`, both APIs."""
    return {
        "site_id": "test-site",
        "api_key": "test-key",
        "app_api_key": "test-app-key",
        "track_url": url,
        "app_url": url,
        "app_requests_per_second": 4_000,  # the kills follow progress, not time: no need to wait
    }


def main() -> int:
    pipelines_dir, url, count, marker = sys.argv[1:5]
    in_flight = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    resource = receipts_resource(int(count))
    destination = customerio(**send_settings(url), max_concurrent_requests=in_flight)
    pipeline = dlt.pipeline("killed_sends", destination=destination, pipelines_dir=pipelines_dir)
    if pipeline.list_extracted_load_packages() or pipeline.list_normalized_load_packages():
        pipeline.run()  # finish what a killed run left pending
    pipeline.run(resource)
    if not pipeline.list_normalized_load_packages():
        Path(marker).write_text("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
