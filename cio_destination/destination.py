"""The dlt glue: the `customerio` destination callable, read as map -> diff -> deliver -> record.

dlt calls it once per load job, with the path of one table's file, on several loader threads
(`cio_destination.jobs` reads the file from where dlt's progress marker left it). Each unit of
rows is mapped (`map_items`), kept to what Customer.io does not have yet
(`cio_destination.diff`), sent (`deliver`, through the workspace of
`cio_destination.transport`) and, once every request of it and of the units before it is
answered, recorded (`cio_destination.report`) and marked done in dlt's progress marker. While a
unit's requests wait for their answers, the next unit is mapped and sent. Anything shared (HTTP
clients, rate limits, request pools, state) is created once per destination config or pipeline,
never per call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dlt
from dlt.common.schema import TTableSchema
from dlt.common.schema.typing import TTableSchemaColumns as TTableColumns
from dlt.common.typing import TDataItems

from cio_destination.arrow_memory import load_step_pool
from cio_destination.configuration import CustomerioConfiguration, keyword_signature
from cio_destination.diff import Diff
from cio_destination.entries import Entry, Mapped
from cio_destination.exceptions import CustomerioError
from cio_destination.failures import shorten_job_error_logs
from cio_destination.jobs import (
    HASH_AHEAD_BYTES,
    Answered,
    Answers,
    InOrder,
    JobFile,
    Unit,
    carries_across_units,
    hashes_ahead,
    identities,
    mapped_ahead,
    must_go_alone,
    unit_rows,
    units_ahead,
)
from cio_destination.loads import Load, current_load
from cio_destination.mapper import RowMapper, map_items, reads_dicts_into_arrow
from cio_destination.report import record_batch
from cio_destination.restore import check_lease, install_tracking
from cio_destination.transport.results import SendResult
from cio_destination.transport.sender import Carry
from cio_destination.transport.workspace import workspace_for


@dlt.destination(
    name="customerio",
    batch_size=0,
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
    shorten_job_error_logs()
    with load_step_pool():  # Arrow's buffers from the system allocator: see arrow_memory
        _load_job(items, table, config)


def _load_job(items: TDataItems, table: TTableSchema, config: CustomerioConfiguration) -> None:
    """One load job: the table's file `items`, read, mapped, sent and recorded unit by unit."""
    load = current_load(config)
    # with state_url: this run still holds its lease
    check_lease(load.state, load.pipeline.working_dir, confirm=True)
    mapper = load.mappings.mapper(table)
    if not load.config.dry_run:  # the credentials' round trip overlaps the first unit's mapping
        workspace_for(load.config).begin_load_soon(load.load_id)
    columns = table.get("columns") or {}
    first_sync = load.first_sync(mapper)  # a changes_only table that compares with nothing
    alone = must_go_alone(mapper.compiled, first_sync=first_sync)  # mapped after its diff's wait
    job = JobFile(items, table)
    carry = Carry() if carries_across_units(mapper.compiled) else None
    order = InOrder(job, carry)

    hashed = hashes_ahead(mapper.compiled, job.arrow, first_sync=first_sync)
    rows = unit_rows(alone or first_sync)
    left = job.rows_left() if hashed else None
    if left:  # the kept hashes are read and put in order while the first unit is read
        load.diff(mapper).read_kept_ahead(min(rows, left))

    def map_ahead(unit: Unit) -> Diffed | Diff | None:
        if not alone:
            return map_and_diff(load, mapper, unit, columns)
        if not hashed:
            return None
        diff = load.diff(mapper)
        diff.hash_rows(unit.items)  # the unit's diff waits; its rows' hashes need not
        return diff

    ahead = units_ahead(mapper.compiled, job.arrow, first_sync=first_sync)
    try:
        units = job.units(rows, into_arrow=reads_dicts_into_arrow(mapper, columns))
        most = HASH_AHEAD_BYTES if hashed else None
        for unit, mapped in mapped_ahead(units, map_ahead, ahead, most_bytes=most):
            if order.failed:
                break
            send_unit(load, mapper, columns, unit, mapped, order, carry)
    finally:
        try:
            order.finish_all()
            load.state.fingerprints.flush()  # the last unit's, written behind
        except CustomerioError as error:
            # the error may be shared with other calls (a refusal stops them all): raise a twin
            raise error.again() from None


install_tracking()  # the dlt state of completed loads and the run lease, with state_url

# dlt's wrapper shows the callable's parameters (items, table, config); a user passes the keys
customerio.__signature__ = keyword_signature()  # type: ignore[attr-defined]


Diffed = tuple[Diff, Mapped, list[Sequence[Entry]]]
"""A unit's diff, its mapped rows, and the operations to send of them."""


def map_and_diff(
    load: Load, mapper: RowMapper, unit: Unit, columns: TTableColumns, diff: Diff | None = None
) -> Diffed:
    """Map one unit's rows and keep them to what Customer.io does not have yet: ahead, while
    the units before it wait for their answers (`mapped_ahead`; a first sync's fingerprints
    too), or once those are answered, for a table whose units go alone (`diff`: the unit's,
    its rows hashed ahead, or None)."""
    diff = diff or load.diff(mapper)
    mapped = map_items(mapper, diff.drop_unchanged_rows(unit.items), columns)
    return diff, mapped, diff.to_send(mapped)


def send_unit(
    load: Load,
    mapper: RowMapper,
    columns: TTableColumns,
    unit: Unit,
    ahead: Diffed | Diff | None,
    order: InOrder,
    carry: Carry | None = None,
) -> None:
    """Start delivering one unit of rows (`ahead`: mapped and diffed ahead, or, for a table
    whose units must go alone, mapped and diffed here once every earlier unit is finished:
    None, or its diff with its rows hashed ahead); it is recorded once `order` finishes it. Its requests wait for the earlier units
    that name the same people; with `carry`, its first request body also holds the earlier
    unit's last operations, and its own last ones wait there for the next unit."""
    order.wait_admitted()
    started = time.time()
    if ahead is None or isinstance(ahead, Diff):
        order.make_way(None)
        ahead = map_and_diff(load, mapper, unit, columns, ahead)
    else:
        order.finish_ready()
    diff, mapped, parts = ahead
    names = identities(mapped)
    order.make_way(names)
    dry_run = load.config.dry_run
    answers = Answered(SendResult()) if dry_run else deliver(load, mapper, parts, carry)

    def record(result: SendResult) -> None:
        if not dry_run:
            diff.delivered(result, load.state.snapshots)
            load.state.erase(diff.erased(result))  # an erasure leaves no copies in the state
        record_batch(
            load.state,
            load_id=load.load_id,
            mapping=mapper.compiled,
            dry_run=dry_run,
            keys_only=load.config.rejected_row_payload == "keys_only",
            mapped=mapped,
            parts=parts,
            result=result,
            skipped=diff.skipped + result.skipped,
            source_hashes=diff.unit or diff.source_hashes,  # the rows' digest, where made
            started=started,
        )

    order.add(unit.rows, names, answers, record)


def deliver(
    load: Load, mapper: RowMapper, parts: list[Sequence[Entry]], carry: Carry | None = None
) -> Answers:
    """Start sending `parts` through the workspace of the load's config (with `carry`, bodies
    filled across units), once the load's preflight passed; a `send_email` table's through
    the send ledger, one request per row, answered before this returns."""
    check_lease(load.state, load.pipeline.working_dir)  # a run that lost its lease stops
    workspace = workspace_for(load.config)
    workspace.begin_load(load.load_id)
    if mapper.compiled.action != "send_email":
        return workspace.sender.start(parts, carry)
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
    return Answered(result)
