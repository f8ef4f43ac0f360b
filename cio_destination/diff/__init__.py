"""The diff stage: what of a call's rows goes to Customer.io, given what it already has.

* `changes_only` (`.changes`): an identify table sends only the attributes that changed since
  Customer.io last accepted the person, and nobody unchanged; Arrow rows whose source values did
  not change are not even mapped.
* `mirror` (`.mirror`): an identify table read in full every run also deletes (or suppresses)
  the people who left it.

Both remember what they saw only once Customer.io accepted it (`Diff.delivered`), so a rejected
or failed send is tried again in full.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from dlt.common.typing import TDataItems

from cio_destination.actions.identify import source_row_hashes
from cio_destination.diff.changes import Changes, only_changes
from cio_destination.diff.mirror import MirrorPlan, MirrorPlans
from cio_destination.entries import Entry, Mapped
from cio_destination.mapper import RowMapper
from cio_destination.state.fingerprints import Fingerprints
from cio_destination.state.snapshots import MirrorSnapshots
from cio_destination.transport.results import SendResult

__all__ = ["Diff"]


class Diff:
    """The diff of one call of the destination: one batch of one table."""

    def __init__(
        self,
        mapper: RowMapper,
        scope: str,
        fingerprints: Fingerprints | None,
        mirrors: MirrorPlans,
        *,
        first_sync: bool = False,
    ) -> None:
        """`fingerprints`: where the table's are kept, None unless it is `changes_only`;
        `mirrors`: the load's mirror plans, one of which may be the table's; `first_sync`: no
        fingerprint of the table was kept when the load started, so none is looked up (a
        person in two batches of the load is sent in full twice, as without `changes_only`)."""
        self._mapper = mapper
        self._scope = scope
        self._fingerprints = fingerprints
        self._mirrors = mirrors
        self._first_sync = first_sync
        self._changes: Changes | None = None
        self._mirror: MirrorPlan | None = None
        self.source_hashes: dict[str, int] | None = None
        """The source-row hashes of an Arrow batch, kept with its fingerprints (None: none)."""
        self.skipped = 0
        """Rows not sent because nothing of them changed."""

    def drop_unchanged_rows(self, items: TDataItems) -> TDataItems:
        """`items` without the rows of an Arrow batch whose source values hash as when last
        accepted. Dicts, and batches this cannot hash (see `source_row_hashes`), stay whole."""
        if self._fingerprints is None or isinstance(items, list):
            return items
        hashed = source_row_hashes(self._mapper, items)
        if hashed is None:
            return items
        identifiers, hashes = hashed
        pairs = [(i, h) for i, h in zip(identifiers, hashes, strict=True) if i is not None]
        changed = (
            set(pairs)
            if self._first_sync
            else self._fingerprints.changed_sources(self._scope, pairs)
        )
        keep = [
            index
            for index, pair in enumerate(zip(identifiers, hashes, strict=True))
            if pair[0] is None or pair in changed
        ]
        self.source_hashes = {
            i: h for i, h in zip(identifiers, hashes, strict=True) if i is not None
        }
        if len(keep) == items.num_rows:
            return items
        self.skipped = items.num_rows - len(keep)
        return items.take(pa.array(keep, pa.int64()))

    def to_send(self, mapped: Mapped) -> list[Sequence[Entry]]:
        """The operations to send: the mapped ones, as far as they changed, then the removals
        of a mirror table (with one call of the table)."""
        mapped.rows_in += self.skipped  # rows dropped before mapping came in all the same
        parts = mapped.parts()
        if self._fingerprints is not None:
            self._changes = only_changes(
                mapped.all_entries(),
                self._mapper.compiled.attribute_columns,
                self._fingerprints,
                self._scope,
                self.source_hashes,
                first_sync=self._first_sync,
            )
            parts = [self._changes.entries]
            self.skipped += self._changes.unchanged
        self._mirror = self._mirrors.take(self._mapper.compiled.table)
        if self._mirror is not None:
            parts.append(self._mirror.removal_entries())
        return parts

    def erased(self, result: SendResult) -> list[str]:
        """The people this call deleted or suppressed in Customer.io (the rows of a `delete` or
        `suppress` table, or a mirror table's removals), whose records the state purges."""
        if self._mapper.compiled.action in ("delete", "suppress"):
            return [entry.row_key for entry in result.delivered_entries()]
        if self._mirror is not None and self._mirror.taken and result.error is None:
            return list(self._mirror.removed)
        return []

    def delivered(self, result: SendResult, snapshots: MirrorSnapshots) -> None:
        """Remember what Customer.io accepted: the fingerprints of the people it took, and a
        mirror table's new snapshot once every removal went out (else the plan goes back)."""
        if self._changes is not None:
            assert self._fingerprints is not None
            accepted = self._changes.accepted(result.delivered_entries())
            self._fingerprints.remember(self._scope, accepted)
        mirror = self._mirror
        if mirror is None:
            return
        if result.error is None:
            snapshots.record(mirror.scope, mirror.current)
            if self._fingerprints is not None:
                self._fingerprints.forget(self._scope, mirror.removed)  # a comeback is sent in full
        else:
            self._mirrors.give_back(mirror)
