"""A run of a pipeline whose state lives in `state_url`, in its own process, for the tests that
SIGKILL runs and start others on empty runners (tests/test_state_url.py).

    python -m tests.state_child PIPELINES_DIR EMULATOR_URL STATE_URL SCHEMA ROWS LEASE_TIMEOUT
        [HOLD_FILE RELEASE_FILE]

It calls `restore_state` and runs `ROWS` transactional sends. With HOLD_FILE, it writes that
file once it holds the lease and waits for RELEASE_FILE before running. Exit codes are the
shipped pipelines' (`run_command`): a run of the pipeline that is alive elsewhere gives 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dlt

from cio_destination import customerio, restore_state, run_command
from tests.send_child import receipts_resource, send_settings

PIPELINE = "stateless_sends"


def main() -> int:
    pipelines_dir, url, state_url, schema, rows, lease_timeout = sys.argv[1:7]
    hold = sys.argv[7:9]
    resource = receipts_resource(int(rows))
    destination = customerio(
        **send_settings(url),
        max_concurrent_requests=4,
        state_url=state_url,
        state_schema=schema,
        lease_timeout=float(lease_timeout),
    )
    pipeline = dlt.pipeline(PIPELINE, destination=destination, pipelines_dir=pipelines_dir)
    restore_state(pipeline)
    if hold:
        Path(hold[0]).write_text("holding")
        while not Path(hold[1]).exists():  # the test says when; it kills this process first
            time.sleep(0.01)
    pipeline.run(resource)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
