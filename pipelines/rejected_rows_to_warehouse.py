"""Load the rows Customer.io (or local validation) rejected back into your warehouse.

    python pipelines/rejected_rows_to_warehouse.py                        # warehouse_to_customerio
    python pipelines/rejected_rows_to_warehouse.py --pipeline-name NAME --destination-url URL

It reads `rejected_rows(pipeline)` of a sync pipeline (default: `warehouse_to_customerio`) and
loads it with dlt's `sqlalchemy` destination into the table `customerio_rejected_rows` of the
dataset (schema) `customerio_audit`. The warehouse URL defaults to the sync's own source,
`[sources.warehouse] credentials`. Loading is a merge on `reject_id`: run it after every sync, it
never duplicates a rejection.

Each row says which load, table and row (`row_key`) was rejected, the `reason`, the `field` and a
`message`, and carries the row as it was sent (`row`, JSON). Fix the source rows in the warehouse,
then replay them: rows of an incremental table are read again once their cursor column moves
(e.g. `UPDATE users SET updated_at = now() WHERE ...`); or re-send a whole table with
`python pipelines/warehouse_to_customerio.py --table NAME --full-refresh`, which is safe because
identifies are idempotent, events keep their ids and sends keep their ledger.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import dlt

from cio_destination import rejected_rows, run_command

SYNC_PIPELINE = "warehouse_to_customerio"
DATASET = "customerio_audit"


def load_rejections(
    sync_pipeline_name: str = SYNC_PIPELINE,
    destination_url: str | None = None,
    *,
    dataset_name: str = DATASET,
    pipelines_dir: str | None = None,
) -> int:
    """Load every rejected row of `sync_pipeline_name` into the warehouse; returns how many."""
    sync_pipeline = dlt.attach(sync_pipeline_name, pipelines_dir=pipelines_dir)
    url = destination_url or dlt.secrets["sources.warehouse.credentials"]
    audit = dlt.pipeline(
        f"{sync_pipeline_name}_rejections",
        destination=dlt.destinations.sqlalchemy(credentials=url),
        dataset_name=dataset_name,
        pipelines_dir=pipelines_dir,
    )
    resource = rejected_rows(sync_pipeline)
    audit.run(resource)
    return sum(1 for _ in rejected_rows(sync_pipeline))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-name", default=SYNC_PIPELINE, help="the sync pipeline")
    parser.add_argument(
        "--destination-url",
        help="SQLAlchemy URL of the warehouse (default: [sources.warehouse] credentials)",
    )
    parser.add_argument("--dataset", default=DATASET, help=f"schema to load into ({DATASET})")
    args = parser.parse_args(argv)

    def run() -> int:
        count = load_rejections(args.pipeline_name, args.destination_url, dataset_name=args.dataset)
        print(
            f"{count} rejected rows of {args.pipeline_name} are in"
            f" {args.dataset}.customerio_rejected_rows"
        )
        return 0

    # 0 done, 1 failed (run again), 2 a setting to fix (an unknown pipeline, a missing URL)
    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
