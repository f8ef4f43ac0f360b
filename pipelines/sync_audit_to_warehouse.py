"""Load a sync's reports and rejected rows into your warehouse, to chart and fix your syncs there.

    python pipelines/sync_audit_to_warehouse.py                           # warehouse_to_customerio
    python pipelines/sync_audit_to_warehouse.py --pipeline-name NAME --destination-url URL

(`rejected_rows_to_warehouse.py`, its earlier name, still runs it.) It reads
`sync_reports(pipeline)` and `rejected_rows(pipeline)` of a sync pipeline (default:
`warehouse_to_customerio`) and loads them with dlt's `sqlalchemy` destination into the tables
`customerio_sync_reports` (one row per load and table: rows in, sent, accepted, rejected by
reason, skipped, requests, retries, 429s, seconds) and `customerio_rejected_rows` of the
dataset (schema) `customerio_audit`. The warehouse URL defaults to the sync's own source,
`[sources.warehouse] credentials`. With `state_url`, it reads the history there, so it runs on
a runner that starts empty too. Both merge (reports on `load_id` + `table`, rejections on
`reject_id`): run it after every sync, it never duplicates a row.

Each rejected row says which load, table and row (`row_key`) was rejected, the `reason`, the
`field` and a `message`, and carries the row as it was sent (`row`, JSON). Fix the source rows in
the warehouse, then replay them: rows of an incremental table are read again once their cursor
column moves (e.g. `UPDATE users SET updated_at = now() WHERE ...`); or re-send a whole table
with `python pipelines/warehouse_to_customerio.py --table NAME --full-refresh`, which is safe
because identifies are idempotent, events keep their ids and sends keep their ledger.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from typing import NamedTuple

import dlt
import sqlalchemy
from dlt.pipeline.exceptions import CannotRestorePipelineException

from cio_destination import customerio, rejected_rows, run_command, sync_reports
from cio_destination.state import release_state, stored_state

SYNC_PIPELINE = "warehouse_to_customerio"
DATASET = "customerio_audit"


class Loaded(NamedTuple):
    """What the sync's audit tables hold after a run."""

    reports: int
    """Rows of `customerio_sync_reports`: one per load and table."""
    rejections: int
    """Rows of `customerio_rejected_rows`."""


def load_audit(
    sync_pipeline_name: str = SYNC_PIPELINE,
    destination_url: str | None = None,
    *,
    dataset_name: str = DATASET,
    pipelines_dir: str | None = None,
) -> Loaded:
    """Load the sync reports and rejected rows of `sync_pipeline_name` into the warehouse."""
    sync_pipeline = attach_sync(sync_pipeline_name, pipelines_dir)
    url = destination_url or dlt.secrets["sources.warehouse.credentials"]
    # an engine of its own, closed once loaded: no connection to the warehouse stays open in
    # the process (DuckDB refuses a second configuration of a file a connection holds open)
    engine = sqlalchemy.create_engine(url)
    try:
        audit = dlt.pipeline(
            f"{sync_pipeline_name}_rejections",  # the earlier name: its state carries on
            destination=dlt.destinations.sqlalchemy(credentials=engine),
            dataset_name=dataset_name,
            pipelines_dir=pipelines_dir,
        )
        audit.run([sync_reports(sync_pipeline), rejected_rows(sync_pipeline)])
    finally:
        engine.dispose()
    return Loaded(
        reports=sum(1 for _ in sync_reports(sync_pipeline)),
        rejections=sum(1 for _ in rejected_rows(sync_pipeline)),
    )


def attach_sync(name: str, pipelines_dir: str | None = None) -> dlt.Pipeline:
    """The sync pipeline: its local working directory, else (a runner that starts empty) the
    pipeline as its `state_url` knows it; `CannotRestorePipelineException` when neither has it.

    It takes no lease and restores no cursors: it only reads the reports and rejected rows,
    so it runs beside a sync of the pipeline.
    """
    try:
        return dlt.attach(name, pipelines_dir=pipelines_dir)
    except CannotRestorePipelineException:
        pipeline = dlt.pipeline(name, destination=customerio(), pipelines_dir=pipelines_dir)
        state = stored_state(pipeline)
        if state is not None and (
            state.runs.dlt_state() is not None or state.reports.latest_load_id() is not None
        ):
            return pipeline
        pipeline.deactivate()
        release_state(pipeline.working_dir)
        shutil.rmtree(pipeline.working_dir, ignore_errors=True)  # no trace of an unknown name
        raise


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
        loaded = load_audit(args.pipeline_name, args.destination_url, dataset_name=args.dataset)
        print(
            f"{args.pipeline_name}: {loaded.reports} sync report rows in"
            f" {args.dataset}.customerio_sync_reports, {loaded.rejections} rejected rows in"
            f" {args.dataset}.customerio_rejected_rows"
        )
        return 0

    # 0 done, 1 failed (run again), 2 a setting to fix (an unknown pipeline, a missing URL)
    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
