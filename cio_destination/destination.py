"""The dlt glue: the `customerio` destination callable, read as map -> diff -> deliver -> record.

dlt calls it with up to `BATCH_ROWS` rows of one table at a time, on several loader threads. Each
call maps the rows (`map_items`), keeps what Customer.io does not have yet (`cio_destination.diff`),
sends it (`deliver`, through the workspace of `cio_destination.transport`) and records what was
rejected and counted (`cio_destination.report`). It returns only when every row is delivered or
recorded, so dlt's progress marker never runs ahead of Customer.io. Anything shared (HTTP
clients, rate limits, request pools, state) is created once per destination config or pipeline,
never per call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dlt
from dlt.common.schema import TTableSchema
from dlt.common.typing import TDataItems

from cio_destination.configuration import CustomerioConfiguration, keyword_signature
from cio_destination.entries import Entry
from cio_destination.exceptions import CustomerioError
from cio_destination.failures import shorten_job_error_logs
from cio_destination.loads import Load, current_load
from cio_destination.mapper import RowMapper, map_items
from cio_destination.report import record_batch
from cio_destination.restore import install_tracking
from cio_destination.transport.results import SendResult
from cio_destination.transport.workspace import workspace_for

# Rows per call. Large enough that bodies fill close to 500 KB; fixed, because dlt's resume offset
# of a pending parquet package must stay a multiple of it.
BATCH_ROWS = 10_000


@dlt.destination(
    name="customerio",
    batch_size=BATCH_ROWS,
    loader_file_format="typed-jsonl",
    naming_convention="direct",
    skip_dlt_columns_and_tables=True,
    max_table_nesting=0,
    spec=CustomerioConfiguration,
)
def customerio(
    items: TDataItems,
    table: TTableSchema,
    config: CustomerioConfiguration = dlt.config.value,
) -> None:
    """Deliver rows to Customer.io as the table's mapping says (see `customerio_adapter`).

    Use it as `destination="customerio"` (the dlt plugin's short name) or `customerio()`
    (config from `[destination.customerio]`), `customerio(api_key=...)`, or the string
    `"cio_destination.customerio"`. Its
    keyword arguments are the keys of `CustomerioConfiguration`, as its signature shows.
    """
    started = time.time()
    shorten_job_error_logs()
    load = current_load(config)
    mapper = load.mappings.mapper(table)
    diff = load.diff(mapper)
    mapped = map_items(mapper, diff.drop_unchanged_rows(items), table.get("columns") or {})
    parts = diff.to_send(mapped)
    if config.dry_run:
        result = SendResult()
    else:
        result = deliver(load, mapper, parts)
        diff.delivered(result, load.state.snapshots)
        load.state.erase(diff.erased(result))  # an erasure leaves no copies in the state
    record_batch(
        load.state,
        load_id=load.load_id,
        mapping=mapper.compiled,
        dry_run=config.dry_run,
        keys_only=config.rejected_row_payload == "keys_only",
        mapped=mapped,
        parts=parts,
        result=result,
        skipped=diff.skipped + result.skipped,
        source_hashes=diff.source_hashes,
        started=started,
    )
    if result.error is not None:
        # the error may be shared with other calls (a refusal stops them all): raise a twin
        raise result.error.again() if isinstance(result.error, CustomerioError) else result.error


install_tracking()  # the dlt state of completed loads and the run lease, with state_url

# dlt's wrapper shows the callable's parameters (items, table, config); a user passes the keys
customerio.__signature__ = keyword_signature()  # type: ignore[attr-defined]


def deliver(load: Load, mapper: RowMapper, parts: list[Sequence[Entry]]) -> SendResult:
    """Send `parts` through the workspace of the load's config, once the load's preflight
    passed; a `send_email` table's through the send ledger, one request per row."""
    workspace = workspace_for(load.config)
    workspace.begin_load(load.load_id)
    if mapper.compiled.action != "send_email":
        return workspace.sender.send_parts(parts)
    assert workspace.emails is not None  # checked with the mappings, before any request
    guard = load.send_ledger_guard()
    guard.check(load.state.ledger, load.pipeline)  # the file may have gone since the load started
    result = workspace.emails.send(
        [entry for part in parts for entry in part],
        ledger=load.state.ledger,
        table=mapper.compiled.table,
        load_id=load.load_id,
        resend_uncertain=load.config.resend_uncertain,
    )
    guard.record(load.state.ledger)
    return result
