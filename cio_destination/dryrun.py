"""Dry runs: a pipeline's run to Customer.io mapped, validated and batched, with nothing sent.

`dry_run(pipeline, data)` runs a copy of the pipeline, configured as the pipeline's own
destination is, with `dry_run = True`, and returns its sync report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import dlt

from cio_destination.configuration import CUSTOMERIO_KEYS
from cio_destination.destination import customerio
from cio_destination.report import SyncReport, sync_report
from cio_destination.state import release_state

__all__ = ["dry_run"]

# The keys of the user's destination, carried over to the dry run's copy
_CARRIED_KEYS = frozenset({"destination_name", *CUSTOMERIO_KEYS} - {"dry_run"})


def dry_run(pipeline: dlt.Pipeline, data: Any = None, **run_kwargs: Any) -> SyncReport:
    """Run `data` through `pipeline` to Customer.io without sending anything or spending state.

    The pipeline's working directory (incremental cursors, pending packages, the send ledger) is
    copied into a scratch directory and the run happens there with `dry_run=True`: every row is
    mapped, validated and batched, nothing is sent, and the real pipeline's state is untouched,
    so a later real run sends exactly what it would have sent anyway.

    Returns the report: per table and action, what would be sent and rejected (with reasons) and
    a few sample payloads with every value masked.
    """
    params: dict[str, Any] = {}
    if pipeline.destination is not None:
        configured = getattr(pipeline.destination, "config_params", {}) or {}
        params = {k: v for k, v in configured.items() if k in _CARRIED_KEYS}
    with tempfile.TemporaryDirectory(prefix="cio-dry-run-") as scratch:
        if os.path.isdir(pipeline.working_dir):
            shutil.copytree(pipeline.working_dir, os.path.join(scratch, pipeline.pipeline_name))
        clone = dlt.pipeline(
            pipeline.pipeline_name,
            destination=customerio(**params, dry_run=True),
            pipelines_dir=scratch,
            dataset_name=pipeline.dataset_name,
        )
        try:
            info = clone.run(data, **run_kwargs)
            load_id = info.loads_ids[-1] if info.loads_ids else None
            report = sync_report(clone, load_id)
        finally:
            release_state(clone.working_dir)
            pipeline.activate()
    return report
