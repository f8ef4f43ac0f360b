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

from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.batching import body_of, enveloped, pack_bounds
from cio_destination.framing import frame_texts
from cio_destination.operations import Entry, LazyRow, Row


class EntryBlock(Sequence[Entry]):
    """Identify operations of rows of one RecordBatch, in Arrow until they are sent."""

    __slots__ = (
        "batch",
        "data",
        "keys",
        "row_key_of",
        "row_keys",
        "rows",
        "source_rows",
    )

    def __init__(
        self,
        data: pa.Array,
        row_keys: pa.Array,
        batch: Any,
        rows: pa.Array,
        source_rows: list[Row] | None = None,
        keys: pa.Array | None = None,
        row_key_of: Callable[[Row], str] | None = None,
    ) -> None:
        self.data = data  # binary, no nulls: one serialized operation per entry
        # string: the row key of each entry; None: made from the entry's row by `row_key_of`
        self.row_keys = row_keys
        self.row_key_of = row_key_of
        self.keys = keys  # string: each entry's idempotency key (an event id), if it has one
        self.batch = batch
        self.rows = rows  # int64: each entry's row number in `batch`
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
                None if self.row_keys is None else self.row_keys.slice(start, length),
                self.batch,
                self.rows.slice(start, length),
                self.source_rows,
                None if self.keys is None else self.keys.slice(start, length),
                self.row_key_of,
            )
        position = index + size if index < 0 else index
        if not 0 <= position < size:
            raise IndexError("entry index out of range")
        return self._entry(
            self.data[position].as_py(),
            None if self.row_keys is None else self.row_keys[position].as_py(),
            self.rows[position].as_py(),
            None if self.keys is None else self.keys[position].as_py(),
        )

    def __iter__(self) -> Iterator[Entry]:
        # whole columns out of Arrow at once: an element at a time costs a scalar object each
        size = len(self.data)
        row_keys = [None] * size if self.row_keys is None else self.row_keys.to_pylist()
        keys = [None] * size if self.keys is None else self.keys.to_pylist()
        for data, row_key, number, key in zip(
            self.data.to_pylist(), row_keys, self.rows.to_pylist(), keys, strict=True
        ):
            yield self._entry(data, row_key, number, key)

    def _entry(self, data: bytes, row_key: str | None, number: int, key: str | None) -> Entry:
        row: Row | LazyRow
        if self.source_rows is not None:
            row = self.source_rows[number]
        else:
            row = LazyRow(self.batch, number)
        if row_key is None:
            assert self.row_key_of is not None
            row_key = self.row_key_of(row.materialize() if isinstance(row, LazyRow) else row)
        return Entry(data, row_key, [row], key)

    def sizes(self) -> list[int]:
        """The byte size of each serialized operation."""
        return pc.binary_length(self.data).to_pylist()  # type: ignore[no-any-return]

    def body(self) -> bytes:
        """The `/api/v2/batch` request body of every entry of the block."""
        if not len(self.data):
            return body_of([])
        return enveloped(_joined(self.data, b","))

    def row_key_frame(self) -> bytes:
        """What tells the entries apart, each framed by its length (for the batch id): their
        row keys, or their idempotency keys when the row keys are made only on demand."""
        texts = self.row_keys if self.row_keys is not None else self.keys
        assert texts is not None
        return frame_texts(texts)


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
