"""What the columnar builders share: the pieces of an operation they all write, and `finish`,
which joins a batch's pieces into operations and sends the rows any check flagged through the
row path, so what is sent and rejected is the row path's, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import as_binary, join_pieces
from cio_destination.entries import EntryBlock, Mapped, Row, row_numbers, rows_from_arrow
from cio_destination.limits import entries_too_large
from cio_destination.values import timestamp_column

RowPath = Callable[[Iterable[Row]], Mapped]
"""The row path of the batch's action: the rows' operations, one row at a time."""


def by_row_path(row_path: RowPath, batch: Any, source_rows: list[Row] | None) -> Mapped:
    """The whole batch through the row path (its dict rows, when it was made of them)."""
    if source_rows is not None:
        return row_path(source_rows)
    return row_path(rows_from_arrow(batch))


def timestamp_pieces(batch: Any, name: str | None, flags: list[Any]) -> list[Any]:
    """The `,"timestamp":N` pieces (left out of rows without one) for the mapped column; rows
    whose value `values.to_unix_seconds` refuses are added to `flags`."""
    if name is None:
        return []
    seconds, refused = timestamp_column(batch.column(name))
    flags.append(refused)
    text = pc.cast(seconds, pa.string())
    if text.null_count:
        return [pc.binary_join_element_wise(',"timestamp":', text, "")]
    return [',"timestamp":', text]


def finish(
    batch: Any,
    source_rows: list[Row] | None,
    row_path: RowPath,
    pieces: list[Any],
    flags: list[Any],
    row_keys: Any | None,
    keys: Any | None = None,
    row_key_of: Callable[[Row], str] | None = None,
) -> Mapped:
    """Join the operations; rows any flag marks (or over the entry size limit) go through the
    row path, the rest become an `EntryBlock`."""
    rows = batch.num_rows
    operations = join_pieces([*pieces, ","])  # each with the comma after it (see `EntryBlock`)
    if len(operations) != rows:  # never expected; the row path is always right
        return by_row_path(row_path, batch, source_rows)
    flags.append(entries_too_large(operations, trailing=1))
    slow = flags[0]
    for flag in flags[1:]:
        slow = pc.or_kleene(slow, flag)
    slow = slow.fill_null(False)

    mapped = Mapped([], [], rows)
    if not pc.any(slow).as_py():
        mapped.block = EntryBlock(
            as_binary(operations), row_keys, batch, row_numbers(rows), source_rows, keys, row_key_of
        )
        return mapped
    fast = pc.invert(slow)
    if pc.any(fast).as_py():
        mapped.block = EntryBlock(
            as_binary(operations.filter(fast)),
            None if row_keys is None else row_keys.filter(fast),
            batch,
            pc.indices_nonzero(fast),
            source_rows,
            None if keys is None else keys.filter(fast),
            row_key_of,
        )
    if source_rows is not None:
        rest = row_path([source_rows[i] for i in pc.indices_nonzero(slow).to_pylist()])
    else:
        rest = row_path(rows_from_arrow(batch.filter(slow)))
    mapped.entries = rest.entries
    mapped.rejections = rest.rejections
    mapped.dropped = rest.dropped
    return mapped
