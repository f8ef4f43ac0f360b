"""Runners that start empty: the dlt state of the last completed load, and one run at a time.

With `state_url`, a run of a pipeline holds a lease in the state database (taken by
`restore_state`, or by the destination when a load starts; beaten every quarter of
`lease_timeout`; given back when `pipeline.run()` ends, or when a `run_lease(pipeline)` block
that spans several runs ends), and when a load completes the
pipeline's dlt state (the incremental cursors) and schemas are saved there. `restore_state`
brings them back on a runner whose working directory is empty or older. dlt reports the end of
each step to its tracking modules (`dlt.pipeline.trace.TRACKING_MODULES`); this module is one of
them. A load that did not complete leaves the saved state as it was: the next runner reads its
rows again, and they are delivered idempotently (event ids, identifies, the send ledger).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dlt
import orjson
from dlt.common.schema import Schema
from dlt.common.versioned_state import decompress_state
from dlt.pipeline import trace
from dlt.pipeline.state_sync import mark_state_extracted, migrate_state_to_current, state_doc

from cio_destination.configuration import CustomerioConfiguration, pipeline_configuration
from cio_destination.exceptions import LeaseLostError, PipelineLeaseError, StateFileError
from cio_destination.state import PipelineState, state_for
from cio_destination.state.runs import SavedDltState
from cio_destination.version import __version__

__all__ = ["check_lease", "restore_state", "run_lease"]

logger = logging.getLogger("cio_destination")


@dataclass
class _Lease:
    """A lease this process holds, and the thread that beats it."""

    state: PipelineState
    holder: str
    timeout: float
    stop: threading.Event = field(default_factory=threading.Event)
    beaten_at: float = field(default_factory=lambda: time.monotonic())
    """When a beat last found the lease this run's own (`time.monotonic`)."""
    taken_over: bool = False

    def beat_until_stopped(self) -> None:
        while not self.stop.wait(self.timeout / 4):
            try:
                if not self.beat():
                    logger.error(
                        "customerio: pipeline %s: its lease was taken over by another run",
                        self.state.pipeline_name,
                    )
                    return
            except Exception as error:  # the database may be back at the next beat
                logger.warning("customerio: lease heartbeat failed (%s)", type(error).__name__)

    def beat(self) -> bool:
        """Beat once; False once another run holds the lease."""
        if self.taken_over or not self.state.runs.beat(self.holder):
            self.taken_over = True
            return False
        self.beaten_at = time.monotonic()
        return True

    def kept(self, *, confirm: bool) -> bool:
        """Whether this run may go on sending: the lease is its own, as a beat within half the
        timeout found (or, with `confirm` or none so recent, as a beat now finds). A beat that
        fails leaves it kept only while the last good one is within the timeout: after that,
        another run may take the lease over."""
        if self.taken_over:
            return False
        if not confirm and time.monotonic() - self.beaten_at < self.timeout / 2:
            return True
        try:
            return self.beat()
        except Exception as error:
            logger.warning("customerio: lease heartbeat failed (%s)", type(error).__name__)
            return time.monotonic() - self.beaten_at < self.timeout


_leases: dict[tuple[int, str], _Lease] = {}
"""The leases this process holds, by state store and pipeline working directory: two runs of
one pipeline name from two working directories are two runs, and only one gets the lease."""
_spanning: Counter[str] = Counter()
"""Working directories of pipelines inside a `run_lease` block: the end of one of their runs
keeps the lease."""
_leases_lock = threading.Lock()


def hold_lease(state: PipelineState, config: CustomerioConfiguration, working_dir: str) -> None:
    """Hold the pipeline's lease in a shared store for the run of the pipeline in `working_dir`
    until `pipeline.run()` ends; raise `PipelineLeaseError` when a live run of the pipeline
    holds it (another process's, or this process's from another working directory)."""
    if not state.store.shared or config.dry_run:
        return
    key = (id(state.store), working_dir)
    with _leases_lock:
        if key in _leases:
            return
        holder = uuid.uuid4().hex
        found = state.runs.take_lease(
            holder, socket.gethostname(), os.getpid(), config.lease_timeout
        )
        if found.holder != holder:
            raise PipelineLeaseError(
                state.pipeline_name,
                found.host,
                found.pid,
                datetime.datetime.fromtimestamp(found.started_at, datetime.timezone.utc),
                config.lease_timeout,
            )
        lease = _leases[key] = _Lease(state, holder, config.lease_timeout)
    threading.Thread(target=lease.beat_until_stopped, daemon=True, name="cio-lease").start()


def check_lease(state: PipelineState, working_dir: str, *, confirm: bool = False) -> None:
    """Raise `LeaseLostError` when this process held the pipeline's lease in a shared store and
    may hold it no more (see `_Lease.kept`); with `confirm`, ask the database now (a load job's
    start). Without a lease (local state, a dry run) there is nothing to check."""
    with _leases_lock:
        lease = _leases.get((id(state.store), working_dir))
    if lease is not None and not lease.kept(confirm=confirm):
        raise LeaseLostError(state.pipeline_name, lease.timeout)


def release_leases(working_dir: str, *, run_ended: bool = False) -> None:
    """Give back the leases this process holds for the pipeline in `working_dir` (at the end of
    a run: unless a `run_lease` block spans the run)."""
    with _leases_lock:
        if run_ended and _spanning[working_dir]:
            return
        held = [k for k in _leases if k[1] == working_dir]
        leases = [_leases.pop(k) for k in held]
    for lease in leases:
        lease.stop.set()
        try:
            lease.state.runs.release(lease.holder)
        except Exception as error:  # it runs out by itself after lease_timeout
            logger.warning(
                "customerio: the lease could not be given back (%s)", type(error).__name__
            )


@contextlib.contextmanager
def run_lease(pipeline: dlt.Pipeline) -> Iterator[None]:
    """Hold the pipeline's lease (with `state_url`) from here to the end of the block, across
    every `pipeline.run()` inside it, and give it back then, also on an error.

    Without it the lease is given back when each `pipeline.run()` ends: a sync that runs twice
    (pending packages first, then what changed) would leave a gap between the two in which
    another run could start. Raises `PipelineLeaseError` when a live run holds it.
    """
    with _leases_lock:
        _spanning[pipeline.working_dir] += 1
    try:
        found = _shared_state(pipeline)
        if found is not None:
            hold_lease(*found, pipeline.working_dir)
        yield
    finally:
        with _leases_lock:
            _spanning[pipeline.working_dir] -= 1
        release_leases(pipeline.working_dir, run_ended=True)


def _shared_state(pipeline: Any) -> tuple[PipelineState, CustomerioConfiguration] | None:
    config = pipeline_configuration(pipeline)
    location = config.state_location() if config is not None else None
    if config is None or location is None:
        return None
    return state_for(pipeline.working_dir, pipeline.pipeline_name, location), config


def restore_state(pipeline: dlt.Pipeline) -> bool:
    """Bring back the pipeline's dlt state (incremental cursors) of its last completed load
    from `state_url`, when the local copy is missing or older; call it before `pipeline.run()`.

    It also takes the pipeline's lease for this run: a live run of the same pipeline elsewhere
    stops it with `PipelineLeaseError`, before anything is read or sent. Returns whether the
    local state was replaced. Without `state_url` it does nothing and returns False.
    """
    found = _shared_state(pipeline)
    if found is None:
        return False
    state, config = found
    hold_lease(state, config, pipeline.working_dir)
    return _restore(pipeline, state)


def _restore(pipeline: dlt.Pipeline, state: PipelineState) -> bool:
    saved = state.runs.dlt_state()
    if saved is None:
        return False
    local = pipeline.state
    if saved.version < local["_state_version"] or saved.version_hash == local.get("_version_hash"):
        return False
    remote = migrate_state_to_current(
        pipeline.pipeline_name,
        decompress_state(saved.state),  # type: ignore[arg-type]
    )
    remote["_local"] = local["_local"]
    mark_state_extracted(remote, remote["_version_hash"])
    schemas = [Schema.from_dict(stored) for stored in orjson.loads(saved.schemas)]
    _install(pipeline, remote, schemas, state.path)
    logger.info(
        "customerio: pipeline %s: restored its dlt state (version %d) from %s",
        pipeline.pipeline_name,
        saved.version,
        state.path,
    )
    return True


def _install(pipeline: dlt.Pipeline, state: Any, schemas: list[Schema], where: str) -> None:
    """Commit a restored state and its schemas to the pipeline's working directory, as dlt's
    own `sync_destination` does. dlt has no public call for it (dlt issue 1233): a dlt release
    without this one stops the run with a line naming the versions, rather than an
    AttributeError deep in a load."""
    install = getattr(pipeline, "_install_state_and_schemas", None)
    if install is None:
        raise StateFileError(
            where,
            f"dlt {dlt.__version__} has no way to install a restored pipeline state, which"
            f" this release of cio-destination ({__version__}) needs; install the dlt version"
            " its pyproject names (dlt>=1.31,<2) or a newer cio-destination",
            shared=True,
        )
    install(state, schemas, replace=True, update_last_run_context=True)


def save_state(pipeline: Any) -> None:
    """Save the pipeline's dlt state to `state_url` after a load completed with nothing pending."""
    found = _shared_state(pipeline)
    if found is None or found[1].dry_run or pipeline.has_pending_data:
        return
    check_lease(
        found[0], pipeline.working_dir, confirm=True
    )  # a run that lost its lease leaves the state to its holder
    doc = state_doc(pipeline.state)
    schemas = [schema.to_dict() for schema in pipeline.schemas.values()]
    found[0].runs.save_dlt_state(
        SavedDltState(
            version=int(doc["version"]),
            version_hash=str(doc["version_hash"]),
            state=str(doc["state"]),
            schemas=orjson.dumps(schemas, default=str).decode(),
        )
    )


class _Tracking:
    """dlt's tracking hooks: restore the state before an extract, save it after a completed
    load, give the lease back at the end of a run (dlt logs a hook's error as a warning)."""

    def on_start_trace(self, trace: Any, step: str, pipeline: Any) -> None:
        pass

    def on_start_trace_step(self, trace: Any, step: str, pipeline: Any) -> None:
        """Before an extract: the saved state, if the local one is missing or older (a run
        that did not call `restore_state`, such as a task of dlt's Airflow helper)."""
        if step != "extract":
            return
        found = _shared_state(pipeline)
        if found is not None:  # a dry run's scratch copy too: it only reads the state
            _restore(pipeline, found[0])

    def on_end_trace_step(
        self, trace: Any, step: Any, pipeline: Any, step_info: Any, send_state: bool
    ) -> None:
        if step.step == "load" and step.step_exception is None:
            save_state(pipeline)
            for hook in _completed_load_hooks:
                hook(pipeline.working_dir)

    def on_end_trace(self, trace: Any, pipeline: Any, send_state: bool) -> None:
        release_leases(pipeline.working_dir, run_ended=True)


_TRACKING = _Tracking()
_completed_load_hooks: list[Callable[[str], None]] = []


def on_completed_load(hook: Callable[[str], None]) -> None:
    """Call `hook` with the pipeline's working directory when its load step completes (after
    its dlt state is saved), once however often this is asked."""
    if hook not in _completed_load_hooks:
        _completed_load_hooks.append(hook)


def install_tracking() -> None:
    """Register the hooks with dlt, once."""
    if _TRACKING not in trace.TRACKING_MODULES:
        trace.TRACKING_MODULES.append(_TRACKING)
