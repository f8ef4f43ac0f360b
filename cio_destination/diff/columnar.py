"""The columnar `changes_only` diff: fingerprints of a whole Arrow block of people at once.

The columnar identify builder keeps a batch's operations in an `EntryBlock`. For the people of
a block with no fingerprint yet (all of them on a first sync) nothing is compared: each is sent
in full and their fingerprints are what `only_changes` would keep for the same entries, computed
a column at a time with the column forms of its hashes (`cio_destination.diff.changes`): no
`Entry`, no JSON parse per row. People of the block who have a fingerprint go through
`only_changes` one by one, as dict rows do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import Member, json_key
from cio_destination.diff.changes import operation_hashes, value_hashes
from cio_destination.entries import Entry, EntryBlock
from cio_destination.limits import attribute_texts
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.state.fingerprints import FINGERPRINT_SCHEMA

__all__ = ["accepted_rows", "block_fingerprints", "split_block"]


def block_fingerprints(
    block: EntryBlock,
    compiled: CompiledMapping,
    sources: tuple[pa.Array, pa.Array] | None,
    texts: list[Member] | None = None,
) -> pa.Table | None:
    """The fingerprints (`FINGERPRINT_SCHEMA`, the attribute hashes as a struct of int64
    fields: no JSON written) `only_changes` keeps for the block's entries sent in full;
    `sources`: the source-row hash of each identifier, if the rows were hashed; `texts`: the
    attributes' JSON members the mapping wrote, of every row of the block's batch
    (`Mapped.attribute_texts`; else they are written here, now). None when an attribute's JSON
    may not be the text its value hash is of (a JSON column or a decimal: the row diff reads
    those back from the operation)."""
    batch = block.batch
    names = set(batch.schema.names)
    columns = [
        c
        for c in compiled.attribute_columns
        if c in names and not pa.types.is_null(batch.schema.field(c).type)
    ]
    if any(
        c in compiled.json_columns or pa.types.is_decimal(batch.schema.field(c).type)
        for c in columns
    ):
        return None
    handed = texts is not None and _of_columns(texts, columns)
    if not handed:
        rows = batch if _every_row_in_order(block) else batch.take(block.rows)
        texts = attribute_texts(rows, columns, [], value_limit=False)  # of the block's rows
        if texts is None:
            return None
    assert texts is not None
    operations = operation_hashes(pc.binary_slice(block.data, 0, -1).to_pylist())
    return _fingerprints(block, columns, texts, sources, operations, handed=handed)


def _of_columns(texts: list[Member], columns: list[str]) -> bool:
    """Whether `texts` are the members of `columns` (never expected otherwise)."""
    return len(texts) == len(columns) and all(
        member[0].startswith(json_key(column))
        for member, column in zip(texts, columns, strict=True)
    )


def _fingerprints(
    block: EntryBlock,
    columns: list[str],
    texts: list[Member],
    sources: tuple[pa.Array, pa.Array] | None,
    operations: pa.Array,
    *,
    handed: bool,
) -> pa.Table:
    """The fingerprints of `block_fingerprints`, from the members of `columns`: `texts`, of
    every row of the batch if `handed` (by the mapping), else of the block's rows; and the
    hashes of the block's `operations`."""
    members = _of_block(block, texts) if handed else texts
    hashed = [
        value_hashes(values, around=(prefix[len(json_key(name)) :], suffix))  # a string's quotes
        for name, (prefix, values, suffix, _) in zip(columns, members, strict=True)
    ]
    attributes = (
        pa.StructArray.from_arrays(hashed, fields=[pa.field(c, pa.int64()) for c in columns])
        if columns
        else pa.array([{}] * len(block), pa.struct([]))
    )
    identifiers = block.row_keys.cast(pa.string())
    return pa.table(
        [
            identifiers,
            operations,
            attributes,
            _source_hashes(identifiers, sources),
        ],
        names=FINGERPRINT_SCHEMA.names,
    )


def _of_block(block: EntryBlock, texts: list[Member]) -> list[Member]:
    """The mapping's members (of every row of the block's batch, a float's in two pieces,
    which the hashes read as they are) of the block's rows."""
    if _every_row_in_order(block):
        return texts
    members = []
    for prefix, values, suffix, nullable in texts:
        if isinstance(values, tuple):  # a float's two pieces
            values = tuple(piece.take(block.rows) for piece in values)
        else:
            values = values.take(block.rows)
        members.append((prefix, values, suffix, nullable))
    return members


def _source_hashes(identifiers: pa.Array, sources: tuple[pa.Array, pa.Array] | None) -> pa.Array:
    """The source-row hash of each identifier, from `sources` (null where the rows were not
    hashed)."""
    if sources is None:
        return pa.nulls(len(identifiers), pa.int64())
    keys, values = sources
    if len(keys) == len(identifiers) and pc.all(pc.equal(keys, identifiers)).as_py() is not False:
        return values  # a hash per row of the batch, in the block's order: no lookup
    return pc.take(values, pc.index_in(identifiers, value_set=keys))


def _every_row_in_order(block: EntryBlock) -> bool:
    """Whether the block holds each row of its batch, in order (no rows need taking)."""
    count = len(block.rows)
    if count != block.batch.num_rows:
        return False
    return count == 0 or (block.rows[0].as_py() == 0 and block.rows[count - 1].as_py() == count - 1)


def split_block(block: EntryBlock, known: set[str]) -> tuple[EntryBlock, list[Entry]]:
    """The block's entries of people not in `known` (a block), and of those in it (entries)."""
    if not known:
        return block, []
    identifiers = block.row_keys.cast(pa.string())
    seen = pc.is_in(identifiers, value_set=pa.array(list(known), pa.string()))
    return _filtered(block, pc.invert(seen)), list(_filtered(block, seen))


def _filtered(block: EntryBlock, mask: Any) -> EntryBlock:
    return EntryBlock(
        block.data.filter(mask),
        block.row_keys.filter(mask),
        block.batch,
        block.rows.filter(mask),
        block.source_rows,
        None if block.keys is None else block.keys.filter(mask),
        block.row_key_of,
    )


def accepted_rows(pending: pa.Table, delivered: Sequence[Sequence[Entry]]) -> pa.Table:
    """The rows of `pending` (fingerprints by identifier) whose entries were delivered.

    `pending` are the fingerprints of one block's entries, each in one row, and its slices
    are the only blocks `delivered` holds: if those come to as many entries, the whole block
    was delivered (the usual case), and nothing is looked up."""
    blocks = [group for group in delivered if isinstance(group, EntryBlock)]
    if sum(len(block) for block in blocks) == len(pending):
        return pending
    keys: list[pa.Array] = []
    for group in delivered:
        if isinstance(group, EntryBlock) and group.row_keys is not None:
            keys.append(group.row_keys.cast(pa.string()))
        else:
            keys.append(pa.array([entry.row_key for entry in group], pa.string()))
    if not keys:
        return pending.slice(0, 0)
    taken = pc.is_in(pending.column("identifier"), value_set=pa.concat_arrays(keys))
    return pending.filter(taken)
