"""The diff stage: what of a call's rows goes to Customer.io, given what it already has.

* `changes_only` (`.changes`): an identify table sends only the attributes that changed since
  Customer.io last accepted the person, and nobody unchanged; Arrow rows whose source values did
  not change are not even mapped, and the people of an Arrow block who have no fingerprint yet
  get theirs a column at a time (`.columnar`).
* `mirror` (`.mirror`): an identify table read in full every run also deletes (or suppresses)
  the people who left it.

Both remember what they saw only once Customer.io accepted it (`Diff.delivered`), so a rejected
or failed send is tried again in full.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import chain

import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.typing import TDataItems

from cio_destination.diff.changes import Changes, only_changes
from cio_destination.diff.columnar import accepted_rows, block_fingerprints, split_block
from cio_destination.diff.mirror import MirrorPlan, MirrorPlans
from cio_destination.diff.source_rows import source_row_hashes, unit_digest
from cio_destination.entries import Entry, EntryBlock, Mapped
from cio_destination.mapper import RowMapper
from cio_destination.state.fingerprints import Fingerprint, Fingerprints, KeptSources
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
        kept: KeptSources | None = None,
    ) -> None:
        """`fingerprints`: where the table's are kept, None unless it is `changes_only`;
        `mirrors`: the load's mirror plans, one of which may be the table's; `kept`: what the
        load compares source-row hashes with, None when no fingerprint of the table was kept
        when the load started (a first sync: none is looked up, and a person in two batches
        of the load is sent in full twice, as without `changes_only`)."""
        self._mapper = mapper
        self._scope = scope
        self._fingerprints = fingerprints
        self._mirrors = mirrors
        self._kept = kept
        self._changes: Changes | None = None
        self._pending: pa.Table | None = None
        """The fingerprints of the block of people sent in full (`_split`), kept once
        delivered."""
        self._mirror: MirrorPlan | None = None
        self._hashed: tuple[tuple[pa.Array, pa.Array] | None] | None = None
        """The batch's identifiers and source-row hashes, once hashed (`hash_rows`)."""
        self._sources: tuple[pa.Array, pa.Array] | None = None
        self._rows = 0
        self._settles_ahead = False
        self.source_hashes: array[int] | None = None
        """The source-row hashes of an Arrow batch (of its rows with an identifier), kept with
        its fingerprints (None: none, or the batch was settled whole by its `unit` digest)."""
        self.unit: bytes | None = None
        """The digest of an Arrow batch's values (`unit_digest`): a batch settled whole by it
        is neither hashed nor looked up (None: none)."""
        self.skipped = 0
        """Rows not sent because nothing of them changed."""

    def read_kept_ahead(self, rows: int) -> None:
        """Start reading the kept hashes (`KeptSources.prefetch`) for a first unit of `rows`,
        before its rows are read: the read and the first rows' reading overlap."""
        if self._kept is not None:
            self._kept.prefetch(rows)

    def hash_rows(self, items: TDataItems) -> None:
        """Hash the source rows of an Arrow batch for `drop_unchanged_rows`, which then only
        compares them. The hashes depend on no earlier unit's answers, so a unit whose diff
        waits for those has its rows hashed ahead, while the units before it are sent; the
        kept hashes start being read here too (`KeptSources.prefetch`)."""
        if self._hashed is not None or self._fingerprints is None or isinstance(items, list):
            return
        kept = self._kept
        if kept is not None:
            kept.prefetch(items.num_rows)  # the database reads while the rows are hashed
        self.unit = unit_digest(self._mapper, items)
        if kept is not None and self.unit is not None and kept.may_settle(self.unit):
            self._hashed, self._settles_ahead = (None,), True  # hashed later if it is not
            return
        self._hashed = (source_row_hashes(self._mapper, items),)

    def drop_unchanged_rows(self, items: TDataItems) -> TDataItems:
        """`items` without the rows of an Arrow batch whose source values hash as when last
        accepted. Dicts, and batches this cannot hash (see `source_row_hashes`), stay whole."""
        if self._fingerprints is None or not isinstance(items, (pa.RecordBatch, pa.Table)):
            return items
        self.hash_rows(items)  # unless it was, ahead
        assert self._hashed is not None
        self._rows = items.num_rows
        if self._settled(items):
            self.skipped = items.num_rows
            return []
        hashed = self._hashed[0]
        if hashed is None:
            return items
        identifiers, hashes = hashed
        named = pc.is_valid(identifiers) if identifiers.null_count else None
        # rows that will be rejected (no identifier) have no source hash to keep
        self._sources = (
            (identifiers, hashes)
            if named is None
            else (identifiers.filter(named), hashes.filter(named))
        )
        self.source_hashes = _int64s(self._sources[1])
        if self._kept is None:
            return items
        keep = self._kept.changed(identifiers, hashes, self.unit)
        if len(keep) == items.num_rows:
            return items
        self.skipped = items.num_rows - len(keep)
        if not keep:
            return []  # nothing to map (and a batch of no rows is not mapped)
        return items.take(pa.array(keep, pa.int64()))

    def _settled(self, items: pa.RecordBatch | pa.Table) -> bool:
        """Whether the batch is kept as it is, every row, by its digest (`KeptSources.settles`);
        if it was thought so ahead but is not (a person of it was written since), its rows are
        hashed here."""
        kept, unit = self._kept, self.unit
        if kept is None or unit is None:
            return False
        if kept.settles(unit, items.num_rows, lambda: _identifier_texts(self._mapper, items)):
            return True
        if self._settles_ahead:
            self._hashed, self._settles_ahead = (source_row_hashes(self._mapper, items),), False
        return False

    def to_send(self, mapped: Mapped) -> list[Sequence[Entry]]:
        """The operations to send: the mapped ones, as far as they changed, then the removals
        of a mirror table (with one call of the table)."""
        mapped.rows_in += self.skipped  # rows dropped before mapping came in all the same
        parts = mapped.parts()
        if self._fingerprints is not None:
            block, entries, previous = self._split(mapped)
            sources = self._sources
            self._changes = only_changes(
                entries,
                self._mapper.compiled.attribute_columns,
                self._fingerprints,
                self._scope,
                (
                    dict(zip(sources[0].to_pylist(), sources[1].to_pylist(), strict=True))
                    if sources and entries
                    else None
                ),
                first_sync=self._kept is None,
                previous=previous,
            )
            parts = [part for part in (block, self._changes.entries) if part]
            self.skipped += self._changes.unchanged
        self._mirror = self._mirrors.take(self._mapper.compiled.table)
        if self._mirror is not None:
            parts.append(self._mirror.removal_entries())
        return parts

    def _split(
        self, mapped: Mapped
    ) -> tuple[EntryBlock | None, list[Entry], dict[str, Fingerprint] | None]:
        """The columnar diff where it applies (see `cio_destination.diff.columnar`): the block
        of people with no fingerprint, sent in full, their fingerprints computed a column at
        a time (`_pending`, kept by `delivered`); the entries for `only_changes`, and their
        fingerprints."""
        block = mapped.block
        if not block or block.row_keys is None:
            return None, mapped.all_entries(), None
        assert self._fingerprints is not None
        previous: dict[str, Fingerprint] = {}
        if self._kept is not None:
            asked = block.row_keys.cast(pa.string()).to_pylist()
            asked += [entry.row_key for entry in mapped.entries]
            previous = self._fingerprints.fingerprints_of(self._scope, asked)
        new, known = split_block(block, set(previous))
        if new:
            sources = self._sources
            arrays = (sources[0].cast(pa.string()), sources[1]) if sources else None
            # hashed here, on the mapping's thread: on a helper thread (as they were), each of
            # numpy's many short calls gave up Python's lock and then waited for it while the
            # mapping held it, which cost a first sync more than the hashing itself
            texts, mapped.attribute_texts = mapped.attribute_texts, None  # let go once hashed
            self._pending = block_fingerprints(new, self._mapper.compiled, arrays, texts)
            if self._pending is None:  # a column the column forms do not cover
                return None, [*new, *known, *mapped.entries], previous
        return new or None, [*known, *mapped.entries], previous

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
            groups = [group for group in result.delivered if not isinstance(group, EntryBlock)]
            accepted = self._changes.accepted(chain.from_iterable(groups))
            self._fingerprints.remember(self._scope, accepted)
            if self._pending is not None:  # the block's, delivered whole or in part
                rows = accepted_rows(self._pending, result.delivered)
                whole = len(rows) == self._rows and not rows.column("source_hash").null_count
                unit = self.unit if whole else None  # every row of it written, with its hash
                self._fingerprints.remember_table(self._scope, rows, unit=unit)
        mirror = self._mirror
        if mirror is None:
            return
        if result.error is None:
            snapshots.record(mirror.scope, mirror.current)
            if self._fingerprints is not None:
                self._fingerprints.forget(self._scope, mirror.removed)  # a comeback is sent in full
        else:
            self._mirrors.give_back(mirror)


def _identifier_texts(mapper: RowMapper, items: pa.RecordBatch | pa.Table) -> pa.Array:
    """The identifier column of a batch `unit_digest` took, as text."""
    column = items.column(mapper.mapping.identifier)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pc.cast(column, pa.string()) if pa.types.is_integer(column.type) else column


def _int64s(values: pa.Array) -> array[int]:
    """An int64 Arrow array with no nulls as an `array` (its buffer's bytes, no Python int)."""
    numbers = array("q")
    numbers.frombytes(memoryview(values.buffers()[1])[values.offset * 8 :][: len(values) * 8])
    return numbers
