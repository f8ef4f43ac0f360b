"""A `changes_only` sync of Arrow rows in its own process, in units of 100 rows, for the test
that SIGKILLs it mid-load (tests/test_source_copy.py).

    python -m tests.copy_child PIPELINES_DIR EMULATOR_URL STATE_URL ROWS PLAN

Every person of `ROWS` gets the plan `PLAN`; the state lives in `STATE_URL`.
"""

from __future__ import annotations

import sys

import dlt
import pyarrow as pa

from cio_destination import customerio, customerio_adapter, jobs

PIPELINE = "copied_hashes"


def main() -> None:
    pipelines_dir, url, state_url, rows, plan = sys.argv[1:6]
    jobs.BATCH_ROWS = jobs.ALONE_UNIT_ROWS = 100  # many units: a kill lands between two
    schema = pa.schema([("uid", pa.int64()), ("plan", pa.string())])
    people = [
        pa.table({"uid": list(range(start, start + 100)), "plan": [plan] * 100}, schema=schema)
        for start in range(0, int(rows), 100)
    ]
    resource = customerio_adapter(
        dlt.resource(people, name="people"),
        action="identify",
        identifier="uid",
        changes_only=True,
    )
    destination = customerio(
        site_id="test-site", api_key="test-key", track_url=url, state_url=state_url
    )
    dlt.pipeline(PIPELINE, destination=destination, pipelines_dir=pipelines_dir).run(resource)


if __name__ == "__main__":
    main()
