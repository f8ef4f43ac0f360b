"""The loads the destination is called in: each one's mappings, checked up front, and state.

dlt calls the destination once per batch of a table, on several threads; the calls of one load
share one `LoadMappings`, which compiles every table's mapping of the load package (and plans
its mirror removals, and checks its send ledger) before the first request, and one `Load`,
which is what a call knows of its load.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import dlt
from dlt.common.configuration.container import Container
from dlt.common.schema import TTableSchema
from dlt.common.schema.utils import is_dlt_table_or_column
from dlt.common.storages.load_package import LoadPackageStateInjectableContext

from cio_destination.configuration import CustomerioConfiguration
from cio_destination.diff import Diff
from cio_destination.diff.mirror import MirrorPlans, plan_mirror
from cio_destination.exceptions import CustomerioError, CustomerioTerminalError
from cio_destination.mapper import RowMapper
from cio_destination.mapping import compile_mapping, resolve_mapping
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.restore import hold_lease, on_completed_load
from cio_destination.state import PipelineState, state_for
from cio_destination.state.backend import now
from cio_destination.state.fingerprints import Fingerprints, KeptSources
from cio_destination.state.ledger_guard import SendLedgerGuard

logger = logging.getLogger("cio_destination")


class LoadMappings:
    """The compiled mappings of one load, checked for every table of the package up front."""

    def __init__(self, config: CustomerioConfiguration) -> None:
        self._tables = config.tables or {}
        self._can_send_email = config.app_credential() is not None
        self._accept_new_send_ledger = config.accept_new_send_ledger
        self._mappers: dict[str, RowMapper] = {}
        self._error: CustomerioTerminalError | None = None
        self.mirrors = MirrorPlans()
        """The removal plans of the load's mirror tables."""
        self._ledger: SendLedgerGuard | None = None
        self._lock = threading.Lock()
        self._kept: dict[str, KeptSources | None] = {}
        self._dry_run = config.dry_run
        self._fingerprints: Fingerprints | None = None
        self.context: LoadPackageStateInjectableContext | None = None
        """The load package context (one per attempt at the package) this was checked in."""

    def check_package(
        self,
        context: LoadPackageStateInjectableContext,
        state: PipelineState,
        pipeline: dlt.Pipeline,
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
                plan = plan_mirror(compiled, context, state.snapshots, pipeline.pipeline_name)
            except CustomerioTerminalError as error:  # a mapping, a setting, the state file
                self._error = error
                return
            sends_email = sends_email or compiled.action == "send_email"
            if plan is not None:
                self.mirrors.add(plan)
        if sends_email:
            try:
                self.send_ledger(context).check(state.ledger, pipeline)
            except CustomerioTerminalError as error:
                self._error = error

    def kept_sources(self, scope: str, fingerprints: Fingerprints) -> KeptSources | None:
        """What the load compares the source-row hashes of `scope` with; None when no
        fingerprint of `scope` was kept when the load first asked (a first sync)."""
        with self._lock:
            if scope not in self._kept:
                self._fingerprints = fingerprints
                first_sync = not fingerprints.holds_any(scope)
                self._kept[scope] = None if first_sync else fingerprints.kept_sources(scope)
            return self._kept[scope]

    def copies_to_make(self) -> list[tuple[Fingerprints, str]]:
        """The `changes_only` tables of the load, whose copies of their source-row hashes a
        completed load step makes (see `make_copies`); none for a dry run, which leaves them
        alone. The load lets go of what it compared hashes with (it is done)."""
        with self._lock:
            scopes, fingerprints, self._kept = list(self._kept), self._fingerprints, {}
        if self._dry_run or fingerprints is None:
            return []
        return [(fingerprints, scope) for scope in scopes]

    def send_ledger(self, context: LoadPackageStateInjectableContext) -> SendLedgerGuard:
        """The load's send ledger guard, recording into the load package's state."""
        with self._lock:
            if self._ledger is None:
                self._ledger = SendLedgerGuard(
                    context.state, context.commit, accept_new=self._accept_new_send_ledger
                )
            return self._ledger

    def _compile(self, name: str, table: Any, columns: dict[str, Any]) -> CompiledMapping:
        mapping = resolve_mapping(name, table, self._tables.get(name))
        if mapping.action == "send_email" and not self._can_send_email:
            # the mapping is right; the setting is missing, so name only the setting
            raise CustomerioTerminalError(
                f"table '{name}' sends emails (action send_email), which needs the App API key:"
                " set destination.customerio.app_api_key (or use a private key, sk_..., as"
                " destination.customerio.api_key alone)"
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
        """The table's row mapper; raises the error the package's check kept, if any."""
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
_ended: dict[str, list[tuple[Fingerprints, str]]] = {}
"""Per working directory, the copies to make for the loads of its load step that are no longer
current, until the step completes."""


def load_context() -> LoadPackageStateInjectableContext | None:
    """The load package context dlt runs the callable in, if any."""
    try:
        return Container()[LoadPackageStateInjectableContext]
    except Exception:
        return None


def mappings_for_load(
    pipeline: dlt.Pipeline, load_id: str, config: CustomerioConfiguration
) -> LoadMappings:
    """The load's mappings, checked against the whole package on first use, before any request.

    Checked again when dlt loads the package anew (a new load package context: a rerun of a
    pending package), so a setting fixed since is seen and an earlier error is not repeated.
    """
    working_dir = pipeline.working_dir
    key = (working_dir, load_id)
    context = load_context()
    with _loads_lock:
        mappings = _loads.get(key)
        if mappings is None or (context is not None and mappings.context is not context):
            mappings = LoadMappings(config)
            if context is not None and context.load_id == load_id:
                mappings.context = context
                state = pipeline_state(pipeline, config)
                hold_lease(state, config, working_dir)  # with state_url: one run at a time
                if not config.dry_run:
                    state.purge_older_than(now() - config.state_retention_days * 86_400)
                mappings.check_package(context, state, pipeline)
            for stale in [k for k in _loads if k[0] == working_dir]:
                ended = _loads.pop(stale).copies_to_make()  # the load is not needed again
                _ended.setdefault(working_dir, []).extend(ended)
            _loads[key] = mappings
        return mappings


@dataclass(frozen=True)
class Load:
    """One load of one pipeline, as a call of the destination sees it."""

    pipeline: dlt.Pipeline
    load_id: str
    config: CustomerioConfiguration
    mappings: LoadMappings
    state: PipelineState

    def diff(self, mapper: RowMapper) -> Diff:
        """The diff stage of one call for the table `mapper` maps."""
        scope = f"{self.pipeline.pipeline_name}/{mapper.compiled.table}"
        if not mapper.mapping.changes_only:
            return Diff(mapper, scope, None, self.mappings.mirrors)
        fingerprints = self.state.fingerprints
        kept = self.mappings.kept_sources(scope, fingerprints)
        return Diff(mapper, scope, fingerprints, self.mappings.mirrors, kept=kept)

    def first_sync(self, mapper: RowMapper) -> bool:
        """Whether the table is `changes_only` and none of its fingerprints was kept when the
        load first asked: its diff then compares with nothing, so no unit of it waits for the
        answers of the units before it (see `cio_destination.jobs.must_go_alone`)."""
        if not mapper.mapping.changes_only:
            return False
        scope = f"{self.pipeline.pipeline_name}/{mapper.compiled.table}"
        return self.mappings.kept_sources(scope, self.state.fingerprints) is None

    def send_ledger_guard(self) -> SendLedgerGuard:
        """The guard of the load's emails (see `SendLedgerGuard`)."""
        context = load_context()
        assert context is not None  # dlt runs the callable inside its load package context
        return self.mappings.send_ledger(context)


# the pipeline of each recent load package context: `dlt.current.pipeline()` on a loader thread
# makes the pipeline anew (its config resolved again), milliseconds a call
_pipelines: dict[int, tuple[LoadPackageStateInjectableContext, dlt.Pipeline]] = {}
_RECENT_CONTEXTS = 16


def current_pipeline() -> dlt.Pipeline:
    """The pipeline dlt runs this call in: found once per load package context (one per attempt
    at a load package), then remembered."""
    context = load_context()
    if context is None:
        return dlt.current.pipeline()
    with _loads_lock:
        known = _pipelines.get(id(context))
    if known is not None and known[0] is context:
        return known[1]
    pipeline = dlt.current.pipeline()
    with _loads_lock:
        _pipelines[id(context)] = (context, pipeline)
        while len(_pipelines) > _RECENT_CONTEXTS:
            del _pipelines[next(iter(_pipelines))]
    return pipeline


def current_load(config: CustomerioConfiguration) -> Load:
    """The load dlt runs this call in, its mappings checked against the whole package."""
    pipeline = current_pipeline()
    load_id = dlt.current.load_package_state()["load_id"]
    mappings = mappings_for_load(pipeline, load_id, config)
    return Load(pipeline, load_id, config, mappings, pipeline_state(pipeline, config))


def pipeline_state(pipeline: dlt.Pipeline, config: CustomerioConfiguration) -> PipelineState:
    """The state of the pipeline: in the database of `state_url`, else its working directory."""
    return state_for(pipeline.working_dir, pipeline.pipeline_name, config.state_location())


def loads_completed(working_dir: str) -> None:
    """The load step of the pipeline in `working_dir` completed: make its loads' copies."""
    with _loads_lock:
        pairs = [p for k, m in _loads.items() if k[0] == working_dir for p in m.copies_to_make()]
        pairs += _ended.pop(working_dir, [])
    make_copies(list(dict.fromkeys(pairs)))


def make_copies(pairs: list[tuple[Fingerprints, str]]) -> None:
    """Make the copy of the source-row hashes of each (fingerprints, scope) whose writes dropped
    it (see `StoredFingerprints.keep_copy`); a copy not made only costs the next load the
    slower read."""
    for fingerprints, scope in pairs:
        try:
            fingerprints.keep_copy(scope)
        except CustomerioError as error:
            logger.warning(
                "customerio: the copy of the source-row hashes of %s was not made (%s):"
                " the next load reads them the slower way",
                scope,
                type(error).__name__,
            )


on_completed_load(loads_completed)  # a completed load makes its copies of hashes
