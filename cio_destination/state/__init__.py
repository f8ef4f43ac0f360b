"""The destination's state of each pipeline: one repository per feature over one backend.

`PipelineState` holds, for one pipeline:

* `rejects` (`.rejects.RejectedRows`): every rejected row, with the reason (`rejected_rows`);
* `reports` (`.reports.BatchReports`): every call's counters (`sync_report`);
* `ledger` (`.ledger.SendLedger`): the transactional send keys, pending or sent;
* `fingerprints` (`.fingerprints.LocalFingerprints`): what `changes_only` tables last sent
  (`.fingerprints.SqlFingerprints` keeps them in a database instead, with `fingerprints_url`);
* `snapshots` (`.snapshots.MirrorSnapshots`): the members of each mirror table's last snapshot.

The backend (`.backend.StateFile`) is one SQLite file in the pipeline's working directory.
Losing it loses history, never the correctness of people and events; the send ledger is what
keeps emails at most once, which is why it has an identity that loads record
(`.ledger_guard`). Any failure of the file surfaces as a `StateFileError` naming it, whichever
feature met it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cio_destination.state.backend import StateFile, state_path
from cio_destination.state.fingerprints import LocalFingerprints
from cio_destination.state.ledger import SendLedger
from cio_destination.state.rejects import RejectedRows
from cio_destination.state.reports import BatchReports
from cio_destination.state.snapshots import MirrorSnapshots

__all__ = ["PipelineState", "release_state", "state_for", "state_path"]

_REPOSITORIES = (RejectedRows, BatchReports, LocalFingerprints, MirrorSnapshots, SendLedger)


class PipelineState:
    """The repositories of one pipeline's state, sharing one state file. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.file = StateFile(path, [repository.SCHEMA for repository in _REPOSITORIES])
        try:
            self.rejects = RejectedRows(self.file)
            self.reports = BatchReports(self.file)
            self.fingerprints = LocalFingerprints(self.file)
            self.snapshots = MirrorSnapshots(self.file)
            self.ledger = SendLedger(self.file)
        except BaseException:
            self.file.close()
            raise

    @property
    def path(self) -> Path:
        return self.file.path

    def close(self) -> None:
        self.file.close()


_states: dict[Path, PipelineState] = {}
_states_lock = threading.Lock()


def state_for(working_dir: str | Path) -> PipelineState:
    """The one shared state of a pipeline working directory.

    A file deleted, emptied or replaced since it was opened is opened anew, never written through
    the old handle: its send ledger is then a new one, which `send_email` loads refuse until told.
    """
    path = state_path(working_dir).resolve()
    with _states_lock:
        state = _states.get(path)
        if state is not None and not state.file.still_open():
            state.close()
            state = None
        if state is None:
            state = _states[path] = PipelineState(path)
        return state


def release_state(working_dir: str | Path) -> None:
    """Close and forget the state of a working directory that is about to be removed."""
    path = state_path(working_dir).resolve()
    with _states_lock:
        state = _states.pop(path, None)
    if state is not None:
        state.close()
