"""Serialized operations kept in Arrow from mapping to the request body.

The columnar identify path (`arrow_path`) builds the JSON of a whole RecordBatch with Arrow
kernels. An `EntryBlock` carries those operations to the sender as three Arrow arrays (the
serialized bytes, the row keys, the source row numbers) instead of one Python object per row:
packing reads the sizes as one array and a request body is one join of a slice. It is still a
`Sequence[Entry]`, so a 207 or a 400 that needs single entries gets them, made on demand; the
source row of an entry is read out of the batch only if that entry is rejected (or, for a batch
made of dict rows, is that dict).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.batching import body_of, pack_bounds
from cio_destination.operations import Entry, LazyRow, Row

_HEAD = b'{"batch":['
_TAIL = b"]}"


class EntryBlock(Sequence[Entry]):
    """Identify operations of rows of one RecordBatch, in Arrow until they are sent."""

    __slots__ = ("batch", "data", "json_columns", "row_keys", "rows", "source_rows")

    def __init__(
        self,
        data: pa.Array,
        row_keys: pa.Array,
        batch: Any,
        rows: pa.Array,
        json_columns: frozenset[str],
        source_rows: list[Row] | None = None,
    ) -> None:
        self.data = data  # binary, no nulls: one serialized operation per entry
        self.row_keys = row_keys  # string: the row key of each entry
        self.batch = batch
        self.rows = rows  # int64: each entry's row number in `batch`
        self.json_columns = json_columns
        self.source_rows = source_rows  # the rows the batch was made of, if it was made of rows

    def __len__(self) -> int:
        return len(self.data)

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        size = len(self.data)
        if isinstance(index, slice):
            start, stop, step = index.indices(size)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            length = max(stop - start, 0)
            return EntryBlock(
                self.data.slice(start, length),
                self.row_keys.slice(start, length),
                self.batch,
                self.rows.slice(start, length),
                self.json_columns,
                self.source_rows,
            )
        position = index + size if index < 0 else index
        if not 0 <= position < size:
            raise IndexError("entry index out of range")
        number = self.rows[position].as_py()
        row: Row | LazyRow = (
            self.source_rows[number]
            if self.source_rows is not None
            else LazyRow(self.batch, number, self.json_columns)
        )
        return Entry(self.data[position].as_py(), self.row_keys[position].as_py(), [row])

    def __iter__(self) -> Iterator[Entry]:
        for position in range(len(self.data)):
            yield self[position]

    def sizes(self) -> list[int]:
        """The byte size of each serialized operation."""
        return pc.binary_length(self.data).to_pylist()  # type: ignore[no-any-return]

    def body(self) -> bytes:
        """The `/api/v2/batch` request body of every entry of the block."""
        if not len(self.data):
            return body_of([])
        return _HEAD + _joined(self.data, b",") + _TAIL

    def row_key_text(self) -> str:
        """The row keys joined by the unit separator (what the batch id hashes)."""
        return _joined(self.row_keys, "\x1f").decode() if len(self.row_keys) else ""


def _joined(values: pa.Array, separator: bytes | str) -> bytes:
    """All values of a string or binary array joined by `separator`, in one kernel call."""
    offsets = pa.array([0, len(values)], pa.int32())
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, values), separator)[0]
    return joined.as_buffer().to_pybytes()  # type: ignore[no-any-return]


def entry_sizes(entries: Sequence[Entry]) -> list[int]:
    if isinstance(entries, EntryBlock):
        return entries.sizes()
    return [len(entry.data) for entry in entries]


def request_body(entries: Sequence[Entry]) -> bytes:
    if isinstance(entries, EntryBlock):
        return entries.body()
    return body_of([entry.data for entry in entries])


def pack_entries(entries: Sequence[Entry], max_bytes: int) -> list[Sequence[Entry]]:
    """Consecutive slices of `entries` whose request bodies fit `max_bytes`."""
    return [entries[start:stop] for start, stop in pack_bounds(entry_sizes(entries), max_bytes)]
