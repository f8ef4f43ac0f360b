"""The dlt glue: the `customerio` destination callable.

dlt calls it with up to `BATCH_ROWS` rows of one table at a time, on several loader threads. Each call
maps the rows, sends them, records what was rejected, and returns only when every row is delivered
or recorded, so dlt's progress marker never runs ahead of Customer.io. Anything shared (HTTP client,
rate limit, request pool, state store) is created once per destination config, never per call.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

import dlt
import orjson
import pyarrow as pa
from dlt.common.configuration.container import Container
from dlt.common.schema import TTableSchema
from dlt.common.schema.utils import is_dlt_table_or_column
from dlt.common.storages.load_package import LoadPackageStateInjectableContext
from dlt.common.typing import TDataItems

from cio_destination.actions.identify import source_row_hashes
from cio_destination.changes import Changes, only_changes, sql_fingerprints
from cio_destination.client import (
    APP_HOSTS,
    TRACK_HOSTS,
    AppClient,
    RetryPolicy,
    Sender,
    SendResult,
    TrackClient,
)
from cio_destination.configuration import CustomerioConfiguration
from cio_destination.entries import Entry, EntryBlock, Rejection, entry_sizes
from cio_destination.exceptions import CustomerioError, CustomerioTerminalError
from cio_destination.failures import shorten_job_error_logs
from cio_destination.framing import frame
from cio_destination.mapper import RowMapper, map_items
from cio_destination.mapping import compile_mapping, resolve_mapping
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.mirror import MirrorPlan, plan_mirror
from cio_destination.ratelimit import RateLimiter
from cio_destination.report import MAX_SAMPLES, mask_payload
from cio_destination.store import StateStore, store_for
from cio_destination.transactional import EmailSender, SendLedgerGuard

logger = logging.getLogger("cio_destination")

# Rows per call. Large enough that bodies fill close to 500 KB; fixed, because dlt's resume offset
# of a pending parquet package must stay a multiple of it.
BATCH_ROWS = 10_000


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class _WorkspaceKey:
    region: str
    track_url: str | None
    app_url: str | None
    site_id: str
    api_key_digest: str
    app_api_key_digest: str
    requests_per_second: float
    app_requests_per_second: float
    max_attempts: int
    timeout: float
    max_request_bytes: int
    max_concurrent_requests: int


class Workspace:
    """Everything shared by the calls that send to one Customer.io workspace with one config.

    The first call of every load checks the credentials (and the region) with one
    `GET /api/v1/accounts/region`, before any data is sent; `region="auto"` takes the host from
    its answer.
    """

    def __init__(self, key: _WorkspaceKey, api_key: str, app_api_key: str) -> None:
        self._key = key
        self._api_key = api_key
        self._app_api_key = app_api_key
        self.limiter = RateLimiter(key.requests_per_second)
        self._options: dict[str, Any] = {
            "retry": RetryPolicy(max_attempts=key.max_attempts),
            "timeout": key.timeout,
            "max_connections": key.max_concurrent_requests,
        }
        self._sender: Sender | None = None
        self.emails: EmailSender | None = None
        self.region: str | None = None
        self._load_id: str | None = None
        self._load_error: CustomerioTerminalError | None = None
        self._lock = threading.Lock()

    @property
    def sender(self) -> Sender:
        assert self._sender is not None, "begin_load() runs the preflight first"
        return self._sender

    def begin_load(self, load_id: str) -> None:
        """Run the load's preflight once; every call of a load whose preflight failed re-raises."""
        with self._lock:
            if load_id == self._load_id:
                if self._load_error is not None:
                    raise self._load_error.again()
                return
            try:
                self._preflight()
            except CustomerioTerminalError as error:
                self._load_id, self._load_error = load_id, error
                raise
            self._load_id, self._load_error = load_id, None

    def _track_client(self, url: str) -> TrackClient:
        key = self._key
        source = "track_url" if key.track_url else "region"
        return TrackClient(
            url,
            key.site_id,
            self._api_key,
            limiter=self.limiter,
            url_source=source,
            **self._options,
        )

    def _preflight(self) -> None:
        key = self._key
        configured = "us" if key.region == "auto" else key.region
        if self._sender is not None:
            client = self._sender.client
        else:
            client = self._track_client(key.track_url or TRACK_HOSTS[configured])
        try:
            found = client.account_region()
            if found and key.region != "auto" and found != configured:
                # compared with track_url set too: a proxy or the emulator can be in either region
                raise CustomerioTerminalError(
                    f"the Customer.io workspace is in the '{found}' region but"
                    f" destination.customerio.region is '{configured}': set region = \"{found}\""
                    ' (or "auto")'
                )
        except BaseException:
            if self._sender is None:
                client.close()
            raise
        region = (found or self.region or configured) if key.region == "auto" else configured
        if self._sender is not None and region == self.region:
            self._sender.forget_refusal()
            return
        url = key.track_url or TRACK_HOSTS[region]
        if client.base_url != url.rstrip("/"):  # region="auto" found another region
            if self._sender is not None:
                self._sender.close()
                self._sender = None
            else:
                client.close()
            client = self._track_client(url)
        self.region = region
        if self._sender is None:
            self._sender = Sender(
                client,
                max_in_flight=key.max_concurrent_requests,
                max_request_bytes=key.max_request_bytes,
            )
        else:
            self._sender.forget_refusal()
        if self._app_api_key:
            if self.emails is not None:
                self.emails.close()
            app = AppClient(
                key.app_url or APP_HOSTS[region],
                self._app_api_key,
                limiter=RateLimiter(key.app_requests_per_second),
                url_source="app_url" if key.app_url else "region",
                **self._options,
            )
            self.emails = EmailSender(app, max_in_flight=key.max_concurrent_requests)


_workspaces: dict[_WorkspaceKey, Workspace] = {}
_workspaces_lock = threading.Lock()


def workspace_for(key: _WorkspaceKey, api_key: str, app_api_key: str) -> Workspace:
    """The one shared workspace of a destination config, created on first use."""
    with _workspaces_lock:
        workspace = _workspaces.get(key)
        if workspace is None:
            workspace = _workspaces[key] = Workspace(key, api_key, app_api_key)
        return workspace


class LoadMappings:
    """The compiled mappings of one load, checked for every table of the package up front."""

    def __init__(
        self,
        tables_config: dict[str, Any] | None,
        *,
        can_send_email: bool,
        accept_new_send_ledger: bool = False,
    ) -> None:
        self._config = tables_config or {}
        self._can_send_email = can_send_email
        self._accept_new_send_ledger = accept_new_send_ledger
        self._mappers: dict[str, RowMapper] = {}
        self._error: CustomerioTerminalError | None = None
        self._mirrors: dict[str, MirrorPlan] = {}
        self._ledger: SendLedgerGuard | None = None
        self._lock = threading.Lock()
        self.context: LoadPackageStateInjectableContext | None = None
        """The load package context (one per attempt at the package) this was checked in."""

    def check_package(
        self, context: LoadPackageStateInjectableContext, store: StateStore, pipeline: dlt.Pipeline
    ) -> None:
        """Compile the mapping of every data table with a job in the package; keep the first error.

        Mirror tables also get their removal plan here, and its guard, and a package with
        `send_email` tables its send ledger check, before any request.
        """
        schema = context.storage.load_schema(context.load_id)
        names = sorted(
            {
                job.table_name
                for _, job in context.storage.list_all_jobs_with_states(context.load_id)
            }
        )
        sends_email = False
        for name in names:
            if is_dlt_table_or_column(name, schema._dlt_tables_prefix) or name not in schema.tables:
                continue
            table = schema.tables[name]
            columns = {
                c: s
                for c, s in table.get("columns", {}).items()
                if not is_dlt_table_or_column(c, schema._dlt_tables_prefix)
            }
            try:
                compiled = self._compile(name, table, columns)
                plan = plan_mirror(compiled, context, store, pipeline.pipeline_name)
            except CustomerioTerminalError as error:  # a mapping, a setting, the state file
                self._error = error
                return
            sends_email = sends_email or compiled.action == "send_email"
            if plan is not None:
                self._mirrors[name] = plan
        if sends_email:
            try:
                self.send_ledger(context).check(store, pipeline)
            except CustomerioTerminalError as error:
                self._error = error

    def send_ledger(self, context: LoadPackageStateInjectableContext) -> SendLedgerGuard:
        """The load's send ledger guard, recording into the load package's state."""
        with self._lock:
            if self._ledger is None:
                self._ledger = SendLedgerGuard(
                    context.state, context.commit, accept_new=self._accept_new_send_ledger
                )
            return self._ledger

    def take_mirror(self, table: str) -> MirrorPlan | None:
        """The table's mirror plan, handed out once (given back with `return_mirror` on failure)."""
        with self._lock:
            plan = self._mirrors.get(table)
            if plan is None or plan.taken:
                return None
            plan.taken = True
            return plan

    def return_mirror(self, plan: MirrorPlan) -> None:
        with self._lock:
            plan.taken = False

    def _compile(self, name: str, table: Any, columns: dict[str, Any]) -> CompiledMapping:
        mapping = resolve_mapping(name, table, self._config.get(name))
        if mapping.action == "send_email" and not self._can_send_email:
            # the mapping is right; the setting is missing, so name only the setting
            raise CustomerioTerminalError(
                f"table '{name}' sends emails (action send_email), which needs the App API key:"
                " set destination.customerio.app_api_key"
            )
        compiled = compile_mapping(name, mapping, columns)
        for key, column in compiled.absent_columns:
            logger.warning(
                "customerio: table %s: %s column '%s' is not in the table's schema (dlt leaves"
                " out a column that is NULL in every row; or is the name misspelled?): it is"
                " mapped as NULL",
                name,
                key,
                column,
            )
        self._mappers[name] = RowMapper(compiled)
        return compiled

    def mapper(self, table: TTableSchema) -> RowMapper:
        if self._error is not None:
            raise self._error.again()
        name = table["name"]
        with self._lock:
            mapper = self._mappers.get(name)
            if mapper is None:
                self._compile(name, table, table["columns"])
                mapper = self._mappers[name]
            return mapper


_loads: dict[tuple[str, str], LoadMappings] = {}
_loads_lock = threading.Lock()


def _load_context() -> LoadPackageStateInjectableContext | None:
    try:
        return Container()[LoadPackageStateInjectableContext]
    except Exception:
        return None


def mappings_for_load(
    pipeline: dlt.Pipeline,
    load_id: str,
    tables_config: dict[str, Any] | None,
    *,
    can_send_email: bool,
    accept_new_send_ledger: bool = False,
) -> LoadMappings:
    """The load's mappings, checked against the whole package on first use, before any request.

    Checked again when dlt loads the package anew (a new load package context: a rerun of a
    pending package), so a setting fixed since is seen and an earlier error is not repeated.
    """
    working_dir = pipeline.working_dir
    key = (working_dir, load_id)
    context = _load_context()
    with _loads_lock:
        mappings = _loads.get(key)
        if mappings is None or (context is not None and mappings.context is not context):
            mappings = LoadMappings(
                tables_config,
                can_send_email=can_send_email,
                accept_new_send_ledger=accept_new_send_ledger,
            )
            if context is not None and context.load_id == load_id:
                mappings.context = context
                mappings.check_package(context, store_for(working_dir), pipeline)
            for stale in [k for k in _loads if k[0] == working_dir]:
                del _loads[stale]  # only the current load of a pipeline is needed again
            _loads[key] = mappings
        return mappings


def _secret(value: Any) -> str:
    return "" if value is None else str(value)


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
    site_id: str = dlt.secrets.value,
    api_key: str = dlt.secrets.value,
    app_api_key: str | None = None,
    region: str = "us",
    track_url: str | None = None,
    app_url: str | None = None,
    requests_per_second: float = 100.0,
    app_requests_per_second: float = 10.0,
    max_attempts: int = 5,
    timeout: float = 30.0,
    max_request_bytes: int = 500_000,
    max_concurrent_requests: int = 32,
    resend_uncertain: bool = False,
    accept_new_send_ledger: bool = False,
    dry_run: bool = False,
    fingerprints_url: str | None = None,
    tables: dict[str, Any] | None = None,
) -> None:
    """Deliver rows to Customer.io as the table's mapping says (see `customerio_adapter`).

    Use it as `destination=customerio()` (config from `[destination.customerio]`),
    `customerio(site_id=..., api_key=...)`, or the string `"cio_destination.customerio"`.
    """
    started = time.time()
    shorten_job_error_logs()
    pipeline = dlt.current.pipeline()
    load_id = dlt.current.load_package_state()["load_id"]
    working_dir = pipeline.working_dir
    mappings = mappings_for_load(
        pipeline,
        load_id,
        tables,
        can_send_email=bool(_secret(app_api_key)),
        accept_new_send_ledger=accept_new_send_ledger,
    )
    mapper = mappings.mapper(table)
    action = mapper.compiled.action
    store = store_for(working_dir)
    skipped = 0
    changes: Changes | None = None
    source_hashes: dict[str, int] | None = None
    if mapper.mapping.changes_only:
        fingerprints = sql_fingerprints(_secret(fingerprints_url)) if fingerprints_url else store
        scope = f"{pipeline.pipeline_name}/{table['name']}"
        if not isinstance(items, list):
            items, source_hashes, skipped = _skip_unchanged_rows(mapper, items, fingerprints, scope)
    mapped = map_items(mapper, items, table.get("columns") or {})
    mapped.rows_in += skipped
    parts = mapped.parts()
    if mapper.mapping.changes_only:
        changes = only_changes(
            mapped.all_entries(),
            mapper.compiled.attribute_columns,
            fingerprints,
            scope,
            source_hashes,
        )
        parts = [changes.entries]
        skipped += changes.unchanged
    mirror = mappings.take_mirror(table["name"])
    if mirror is not None:
        parts.append(mirror.removal_entries())
    operations = sum(len(part) for part in parts)
    if dry_run:
        result = SendResult()
    else:
        key = _WorkspaceKey(
            region=region,
            track_url=track_url,
            app_url=app_url,
            site_id=_secret(site_id),
            api_key_digest=_digest(_secret(api_key)),
            app_api_key_digest=_digest(_secret(app_api_key)),
            requests_per_second=requests_per_second,
            app_requests_per_second=app_requests_per_second,
            max_attempts=max_attempts,
            timeout=timeout,
            max_request_bytes=max_request_bytes,
            max_concurrent_requests=max_concurrent_requests,
        )
        workspace = workspace_for(key, _secret(api_key), _secret(app_api_key))
        workspace.begin_load(load_id)
        if action == "send_email":
            assert workspace.emails is not None  # checked with the mappings, before any request
            context = _load_context()
            assert context is not None  # dlt runs the callable inside its load package context
            ledger = mappings.send_ledger(context)
            ledger.check(store, pipeline)  # the file may have gone since the load started
            emails = workspace.emails.send(
                [entry for part in parts for entry in part],
                store=store,
                table=table["name"],
                load_id=load_id,
                resend_uncertain=resend_uncertain,
            )
            ledger.record(store)
            result = emails
            skipped = emails.skipped
        else:
            result = workspace.sender.send_parts(parts)
        if changes is not None:
            fingerprints.save(scope, changes.accepted(result.delivered_entries()))
        if mirror is not None:
            if result.error is None:
                store.record_mirror_snapshot(mirror.scope, mirror.current)
                if changes is not None:
                    fingerprints.forget(scope, mirror.removed)  # a comeback is sent in full
            else:
                mappings.return_mirror(mirror)
    rejections = mapped.rejections + result.rejections
    # rows sent without an oversized attribute: recorded with the rejections, counted apart
    records = rejections + mapped.dropped
    if not dry_run:
        store.record_rejections(load_id, table["name"], action, records)
    store.record_batch(
        {
            "load_id": load_id,
            "table_name": table["name"],
            "action": action,
            "batch_id": _batch_id(mapped.parts(), rejections, source_hashes),
            "dry_run": int(dry_run),
            "rows_in": mapped.rows_in,
            "operations": operations,
            "accepted": result.stats.accepted,
            "rejected": len(rejections),
            "skipped": skipped,
            "requests": result.stats.requests,
            "retries": result.stats.retries,
            "throttled": result.stats.throttled,
            "throttled_seconds": result.stats.throttled_seconds,
            "started_at": started,
            "finished_at": time.time(),
            "reasons": orjson.dumps(Counter(r.reason for r in records)).decode(),
            "samples": orjson.dumps(
                [
                    mask_payload(orjson.loads(e.data))
                    for e in islice(chain.from_iterable(parts), MAX_SAMPLES)
                ]
                if dry_run
                else []
            ).decode(),
        }
    )
    logger.info(
        "customerio: table %s (%s)%s: %d rows in, %d operations, %d accepted, %d rows rejected,"
        " %d skipped (already sent or unchanged), %d requests, %d retries",
        table["name"],
        action,
        " [dry run]" if dry_run else "",
        mapped.rows_in,
        operations,
        result.stats.accepted,
        len(rejections),
        skipped,
        result.stats.requests,
        result.stats.retries,
    )
    if result.error is not None:
        # the error may be shared with other calls (a refusal stops them all): raise a twin
        raise result.error.again() if isinstance(result.error, CustomerioError) else result.error


def _skip_unchanged_rows(
    mapper: RowMapper, batch: Any, fingerprints: Any, scope: str
) -> tuple[Any, dict[str, int] | None, int]:
    """Drop the rows of an Arrow batch whose source values hash as when last accepted.

    Returns the rows left, the source hashes to keep with their fingerprints, and how many rows
    were dropped. Batches this cannot hash (see `source_row_hashes`) are kept whole.
    """
    hashed = source_row_hashes(mapper, batch)
    if hashed is None:
        return batch, None, 0
    identifiers, hashes = hashed
    known = fingerprints.load_source_hashes(scope, [i for i in identifiers if i is not None])
    keep = [
        index
        for index, (identifier, row_hash) in enumerate(zip(identifiers, hashes, strict=True))
        if identifier is None or known.get(identifier) != row_hash
    ]
    sources = {i: h for i, h in zip(identifiers, hashes, strict=True) if i is not None}
    if len(keep) == batch.num_rows:
        return batch, sources, 0
    return batch.take(pa.array(keep, pa.int64())), sources, batch.num_rows - len(keep)


def _batch_id(
    parts: list[Sequence[Entry]],
    rejections: list[Rejection],
    source_hashes: dict[str, int] | None,
) -> str:
    """The same rows give the same id, so a replayed batch replaces its record in the report.

    Every piece is framed by its length (`cio_destination.framing`), and the number of parts
    leads, so two different batches never read alike, whatever bytes their row keys hold.
    """
    pieces: list[bytes | None] = [
        # rows skipped before mapping are part of the batch too
        array("q", source_hashes.values()).tobytes() if source_hashes else None,
        b"%d" % len(parts),
    ]
    for part in parts:
        # the row keys and sizes of the entries tell a batch apart, without hashing every payload
        if isinstance(part, EntryBlock):
            pieces.append(part.row_key_frame())
        else:
            pieces.append(frame(entry.row_key for entry in part))
        pieces.append(array("q", entry_sizes(part)).tobytes())
    for rejection in rejections:
        pieces += [rejection.row_key.encode(), rejection.reason.encode()]
    return hashlib.blake2b(frame(pieces), digest_size=16, person=b"cio-batch-id-2").hexdigest()
