"""The guard that keeps a load's emails on the send ledger earlier loads sent through.

The ledger (`cio_destination.state.ledger`) keeps each email at most once only if it is the
same ledger every load of the pipeline used; its identity is recorded in dlt's load package
state, which outlives the state file (see `SendLedgerGuard`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import dlt
from dlt.common.storages.exceptions import LoadPackageNotFound

from cio_destination.exceptions import SendLedgerLostError
from cio_destination.state.ledger import SendLedger

logger = logging.getLogger("cio_destination")

LEDGER_MARK = "customerio_send_ledger"
"""The load package state key under which a load with `send_email` tables records its ledger."""


class SendLedgerGuard:
    """Keeps one load's emails on the send ledger that earlier loads of the pipeline sent through.

    A load with `send_email` tables records, in its load package state, the identity of the ledger
    it sends through: the ledger's id (new with every new file) and its generation (a count of its
    commits). dlt keeps that state with the package, and keeps completed packages under the
    pipeline's `load/loaded/` folder, apart from the state file, so the record survives the file's
    loss. Before any email, the ledger found is compared with the newest record (this package's
    own, if the load is resumed, else the newest completed package's): another id (the file was
    deleted, emptied or replaced) or an older generation (restored from an older copy) stops the
    load with `SendLedgerLostError`, unless `accept_new_send_ledger` is set. A pipeline with no
    such record (a new one, a `dev_mode` one, one that never sent) has nothing to lose. The
    record is written (and the ledger's generation advanced to at least 1, see
    `SendLedger.stamp`) before the load's first claim, so it holds from the first email on, also
    for a load killed inside its first batch.
    """

    def __init__(
        self,
        package_state: dict[str, Any],
        commit: Callable[[], None],
        *,
        accept_new: bool,
    ) -> None:
        self._state = package_state
        self._commit = commit
        self._accept_new = accept_new
        self._lock = threading.Lock()

    def check(self, ledger: SendLedger, pipeline: dlt.Pipeline) -> None:
        """Raise `SendLedgerLostError` unless `ledger` is the ledger of the newest record;
        then record it for this load, on disk before any email of the load."""
        with self._lock:
            mark = self._state.get(LEDGER_MARK) or _newest_completed_mark(pipeline)
            ledger_id, generation = ledger.identity()
            if not _holds(mark, ledger_id, generation):
                if not self._accept_new:
                    raise SendLedgerLostError(ledger.path, shared=ledger.shared)
                logger.warning(
                    "accept_new_send_ledger: sending through a new send ledger in %s; emails"
                    " of earlier loads may go out again",
                    ledger.path,
                )
            if self._state.get(LEDGER_MARK) != mark or mark is None or mark["id"] != ledger_id:
                # a generation of at least 1, on disk before any claim: a load killed inside
                # its first batch (whose progress dlt never saved) is protected too
                ledger_id, generation = ledger.stamp()
                self._state[LEDGER_MARK] = {"id": ledger_id, "generation": generation}
                self._commit()

    def record(self, ledger: SendLedger) -> None:
        """Note how far this load took the ledger (dlt saves it with the load's progress)."""
        ledger_id, generation = ledger.identity()
        with self._lock:
            mark = self._state.get(LEDGER_MARK)
            if mark is not None and mark["id"] == ledger_id:
                mark["generation"] = max(int(mark["generation"]), generation)


def _holds(mark: dict[str, Any] | None, ledger_id: str, generation: int) -> bool:
    """Whether the ledger found is the one `mark` recorded, at least as far as it went. Any
    record counts, whatever its generation: a load records the ledger before its first claim,
    and dlt saves how far it went only with its progress, so a record may name fewer writes
    than were made."""
    if mark is None:
        return True  # no load of the pipeline sent through a ledger: nothing to lose
    return mark.get("id") == ledger_id and int(mark.get("generation") or 0) <= generation


def _newest_completed_mark(pipeline: dlt.Pipeline) -> dict[str, Any] | None:
    for load_id in sorted(pipeline.list_completed_load_packages(), key=_load_order, reverse=True):
        try:
            mark = pipeline.get_load_package_state(load_id).get(LEDGER_MARK)
        except LoadPackageNotFound:
            continue
        if mark:
            return dict(mark)
    return None


def _load_order(load_id: str) -> tuple[float, str]:
    try:
        return float(load_id), load_id
    except ValueError:
        return 0.0, load_id
