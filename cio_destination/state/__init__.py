"""The destination's state of each pipeline: one repository per feature over one store.

`PipelineState` holds, for one pipeline:

* `rejects` (`.rejects.RejectedRows`): every rejected row, with the reason (`rejected_rows`);
* `reports` (`.reports.BatchReports`): every call's counters (`sync_report`);
* `ledger` (`.ledger.SendLedger`): the transactional send keys, pending or sent;
* `fingerprints` (`.fingerprints.StoredFingerprints`): what `changes_only` tables last sent;
* `snapshots` (`.snapshots.MirrorSnapshots`): the members of each mirror table's last snapshot;
* `runs` (`.runs.PipelineRuns`): the run lease and the dlt state of the last completed load
  (used with `state_url` only).

The store (`.backend`) is one SQLite file in the pipeline's working directory (`StateFile`), or
the database of `state_url` (`SqlStore`), shared by every pipeline and runner that names it.
Losing the state loses history, never the correctness of people and events; the send ledger is
what keeps emails at most once, which is why it has an identity that loads record
(`.ledger_guard`). Any failure of the file surfaces as a `StateFileError` naming it, whichever
feature met it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cio_destination.state.backend import StateFile, StateStore, sql_store, state_path
from cio_destination.state.fingerprints import StoredFingerprints
from cio_destination.state.ledger import SendLedger
from cio_destination.state.rejects import RejectedRows
from cio_destination.state.reports import BatchReports
from cio_destination.state.runs import PipelineRuns
from cio_destination.state.snapshots import MirrorSnapshots

__all__ = [
    "PipelineState",
    "StateLocation",
    "release_state",
    "state_for",
    "state_path",
    "stored_state",
]

_REPOSITORIES = (
    RejectedRows,
    BatchReports,
    StoredFingerprints,
    MirrorSnapshots,
    SendLedger,
    PipelineRuns,
)
TABLES = tuple(ddl for repository in _REPOSITORIES for ddl in repository.TABLES)
"""Every table of the state, as the repositories declare them."""

StateLocation = tuple[str, "str | None", str]
"""A state database: (SQLAlchemy URL, schema, the config key that set it)."""


class PipelineState:
    """The repositories of one pipeline's state, sharing one store. Thread-safe."""

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self.store = store
        self.pipeline_name = pipeline_name
        self.rejects = RejectedRows(store, pipeline_name)
        self.reports = BatchReports(store, pipeline_name)
        self.fingerprints = StoredFingerprints(store, pipeline_name)
        self.snapshots = MirrorSnapshots(store, pipeline_name)
        self.ledger = SendLedger(store, pipeline_name)
        self.runs = PipelineRuns(store, pipeline_name)

    @classmethod
    def in_file(cls, path: str | Path, pipeline_name: str = "pipeline") -> PipelineState:
        """The state of a pipeline in the SQLite file at `path` (not shared with `state_for`)."""
        store = StateFile(path, TABLES, pipeline_name)
        try:
            return cls(store, pipeline_name)
        except BaseException:
            store.close()
            raise

    @property
    def path(self) -> str:
        """What errors about the state name: its file, or the key of its URL."""
        return self.store.location

    def erase(self, identifiers: Sequence[str]) -> None:
        """Purge every record of these people (deleted or suppressed in Customer.io): their
        rejected rows, fingerprints and snapshot entries. The send ledger keeps its keys."""
        if identifiers:
            self.rejects.erase(identifiers)
            self.fingerprints.erase(identifiers)
            self.snapshots.erase(identifiers)

    def purge_older_than(self, cutoff: float) -> None:
        """Purge rejected rows and reports recorded before `cutoff` (`state_retention_days`)."""
        self.rejects.purge_older_than(cutoff)
        self.reports.purge_older_than(cutoff)

    def close(self) -> None:
        try:
            self.fingerprints.flush()
        finally:
            self.store.close()


_states: dict[Any, PipelineState] = {}
_states_lock = threading.Lock()


def state_for(
    working_dir: str | Path, pipeline_name: str, location: StateLocation | None = None
) -> PipelineState:
    """The one shared state of a pipeline: in the database of `location`, else in the
    pipeline's working directory.

    A local file deleted, emptied or replaced since it was opened is opened anew, never written
    through the old handle: its send ledger is then a new one, which `send_email` loads refuse
    until told.
    """
    if location is not None:
        url, schema, key = location
        with _states_lock:
            state = _states.get((url, schema, pipeline_name))
            if state is None:
                store = sql_store(url, schema, TABLES, key)
                state = _states[(url, schema, pipeline_name)] = PipelineState(store, pipeline_name)
            return state
    path = state_path(working_dir).resolve()
    with _states_lock:
        state = _states.get(path)
        if state is not None and not _still_open(state):
            state.close()
            state = None
        if state is None:
            state = _states[path] = PipelineState.in_file(path, pipeline_name)
        return state


def stored_state(pipeline: Any) -> PipelineState | None:
    """The state of a pipeline object (where its destination's settings keep it), None when it
    has none yet: for reading it back (`rejected_rows`, `sync_report`) on any runner."""
    from cio_destination.configuration import pipeline_configuration

    config = pipeline_configuration(pipeline)
    location = config.state_location() if config is not None else None
    if location is None and not state_path(pipeline.working_dir).exists():
        return None
    return state_for(pipeline.working_dir, pipeline.pipeline_name, location)


def _still_open(state: PipelineState) -> bool:
    return not isinstance(state.store, StateFile) or state.store.still_open()


def release_state(working_dir: str | Path) -> None:
    """Close and forget the local state of a working directory that is about to be removed."""
    path = state_path(working_dir).resolve()
    with _states_lock:
        state = _states.pop(path, None)
    if state is not None:
        state.close()
