"""Transactional sends in their own process, for a test that SIGKILLs it and runs it again.

python -m tests.send_child PIPELINES_DIR EMULATOR_URL ROWS DONE_MARKER [IN_FLIGHT]

IN_FLIGHT is `max_concurrent_requests`: at most that many sends are in flight when it is killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dlt

from cio_destination import customerio, customerio_adapter


def main() -> int:
    pipelines_dir, url, count, marker = sys.argv[1:5]
    in_flight = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    rows = [
        {"receipt_id": i, "email": f"buyer{i}@example.com", "amount": i % 50 + 0.25}
        for i in range(int(count))
    ]
    resource = customerio_adapter(
        dlt.resource(rows, name="receipts"),
        action="send_email",
        identifier="email",
        identifier_type="email",
        transactional_message_id=3,
        to="email",
        event_id="receipt_id",
    )
    destination = customerio(
        site_id="test-site",
        api_key="test-key",
        app_api_key="test-app-key",
        track_url=url,
        app_url=url,
        app_requests_per_second=4_000,  # the kills follow progress, not time: no need to wait
        max_concurrent_requests=in_flight,
    )
    pipeline = dlt.pipeline("killed_sends", destination=destination, pipelines_dir=pipelines_dir)
    if pipeline.list_extracted_load_packages() or pipeline.list_normalized_load_packages():
        pipeline.run()  # finish what a killed run left pending
    pipeline.run(resource)
    if not pipeline.list_normalized_load_packages():
        Path(marker).write_text("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
