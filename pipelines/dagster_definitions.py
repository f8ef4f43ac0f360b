"""The warehouse sync as Dagster assets: one asset per configured table, each its own dlt pipeline.

    pip install -e ".[dagster]"
    cd pipelines && dagster dev -f dagster_definitions.py            # the UI, or:
    dagster job execute -f dagster_definitions.py -j warehouse_sync  # every table, one process each

The configuration is the warehouse sync's (`warehouse_to_customerio.py`, the README's "Sync a
real warehouse"): `[sources.warehouse]` says which tables to read, `[destination.customerio]` and
its `tables` how they map, from `.dlt/` or the environment. Nothing else is configured here.

Every table gets a pipeline of its own (`warehouse_to_customerio_<table>`), so Dagster's
multiprocess executor (the default) runs each in its own process, or its own machine with a run
launcher that spreads them, without two processes sharing a pipeline's working directory. For
that, set in the destination's config:

* `rate_limit_url` (Redis or PostgreSQL): the processes share one budget of
  `requests_per_second` and the cut after a 429;
* `state_url`: the pipelines' state (cursors, fingerprints, mirror snapshots, the send ledger)
  lives in that database: each asset restores it into its working directory before it runs, so
  a process whose disk starts empty resumes where the last run of its table ended, and holds
  its table's lease there for the whole step, so two runs of one table never overlap. Without
  it, the state stays in each pipeline's working directory (dlt's `pipelines_dir`,
  `DLT_DATA_DIR`), which every run of a table must then find again.
"""

# no `from __future__ import annotations`: Dagster reads the asset function's annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
from dagster import AssetExecutionContext, AssetsDefinition, Definitions, define_asset_job
from dagster_dlt import DagsterDltResource, dlt_assets

from cio_destination import customerio, restore_state, run_lease


def _warehouse_sync() -> Any:
    """warehouse_to_customerio.py, beside this file (pipelines/ is not a package)."""
    module = sys.modules.get("warehouse_to_customerio")
    if module is None:
        path = Path(__file__).resolve().parent / "warehouse_to_customerio.py"
        spec = importlib.util.spec_from_file_location("warehouse_to_customerio", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["warehouse_to_customerio"] = module
        spec.loader.exec_module(module)
    return module


wh = _warehouse_sync()
GROUP = "customerio"


@dlt.source(name="warehouse")
def table_names(names: list[str]) -> Any:
    """The warehouse source's shape without its tables: what Dagster needs to name the assets
    when it loads the definitions, without connecting to the warehouse."""
    return [dlt.resource([], name=name) for name in names]


def table_pipeline(name: str) -> dlt.Pipeline:
    """The dlt pipeline of one table. Its local state is never dropped (dagster-dlt would drop
    it to restore it from the destination, which this destination does not keep)."""
    pipeline = dlt.pipeline(f"{wh.PIPELINE_NAME}_{name}", destination=customerio())
    pipeline.config.restore_from_destination = False
    return pipeline


def table_asset(name: str) -> AssetsDefinition:
    """The asset of one configured table: reads what changed, sends it."""
    pipeline = table_pipeline(name)

    @dlt_assets(dlt_source=table_names([name]), dlt_pipeline=pipeline, name=name, group_name=GROUP)
    def sync_table(
        context: AssetExecutionContext, dlt_resource: DagsterDltResource
    ) -> Iterator[Any]:
        # with state_url: the lease (one run of the table at a time) held across both runs
        # below, and the cursors of the last completed load restored into an empty working
        # directory; without it, nothing
        with run_lease(pipeline):
            restore_state(pipeline)
            if pipeline.has_pending_data:
                # dagster-dlt would drop the packages a failed run left pending, rows and all:
                # finish them first (that needs no warehouse)
                pipeline.run()
            source = wh.warehouse().with_resources(name)
            wh.check_mappings([name], dlt.config.get("destination.customerio.tables", dict))
            yield from dlt_resource.run(context=context, dlt_source=source, dlt_pipeline=pipeline)

    return sync_table


def configured_tables() -> list[str]:
    """The tables declared under `[sources.warehouse.tables]`, in config order."""
    return [t.name for t in wh.table_sources(dlt.config.get("sources.warehouse.tables", dict))]


defs = Definitions(
    assets=[table_asset(name) for name in configured_tables()],
    jobs=[define_asset_job("warehouse_sync", selection=f"group:{GROUP}")],
    resources={"dlt_resource": DagsterDltResource()},
)
