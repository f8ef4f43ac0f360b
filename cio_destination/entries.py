"""The operations of a batch, as they travel from mapping to the sender, and their rejections.

Mapping turns rows into `Entry`s (one serialized Track API operation each, and the source rows
it carries) and `Rejection`s (a row that will not be sent, and why), gathered in a `Mapped`. The
columnar paths keep their operations in Arrow, an `EntryBlock`, until a request body is joined.
`pack_entries` cuts either kind into request-sized slices and `request_body` writes their body;
`pack_across` packs consecutive sequences as one (a body may then hold `JoinedEntries`, the
last operations of one batch and the first of the next).
`rows_from_arrow` gives a RecordBatch's rows in the shape dlt's typed-jsonl gives them; a
`LazyRow` is such a row, read out of its batch only when a rejection needs it.
"""

from __future__ import annotations

import bisect
import datetime as dt
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import Member, value_span
from cio_destination.batching import (
    ENVELOPE_BYTES,
    body_chunks,
    body_of,
    enveloped,
    enveloped_runs,
    fitting,
    pack_bounds,
    pack_bounds_of_ends,
)
from cio_destination.framing import column_layout, int64_view
from cio_destination.values import UNITS_PER_SECOND, floor_divide, python_values

DATA_KEYS = frozenset({"attributes", "message_data", "relationship_attributes"})
"""Keys of an operation whose objects carry a row's data: their keys are the mapping's column
names or the row's JSON data's own, and anything below them is the row's. Every other key of
an operation is Customer.io's."""

Row = dict[str, Any]
"""A row as dlt's typed-jsonl gives it: column name to value, nulls left out."""


@dataclass(frozen=True)
class Rejection:
    """A row that will not be (or was not) accepted, and why. `message` never holds a value."""

    row: Row
    row_key: str
    reason: str
    field: str | None
    message: str


class LazyRow:
    """A row of a RecordBatch, made into a dict only if a rejection needs it."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: Any, index: int) -> None:
        self.batch = batch
        self.index = index

    def materialize(self) -> Row:
        """The row as a dict, as `rows_from_arrow` gives it."""
        return next(rows_from_arrow(self.batch.slice(self.index, 1)))


@dataclass(slots=True)
class Entry:
    """One serialized operation and the source rows it carries (several for a collapsed identify)."""

    data: bytes
    row_key: str
    rows: list[Row | LazyRow] = field(default_factory=list)
    key: str | None = None
    """The idempotency key (event id, or the send ledger's key), where the action has one."""

    def reject(self, reason: str, field: str | None, message: str) -> list[Rejection]:
        """A rejection of each source row of the entry."""
        return [
            Rejection(
                row.materialize() if isinstance(row, LazyRow) else row,
                self.row_key,
                reason,
                field,
                message,
            )
            for row in self.rows
        ]


@dataclass
class Mapped:
    """What mapping one batch of rows gave: its operations, its rejections, how many rows came."""

    entries: list[Entry]
    rejections: list[Rejection]
    rows_in: int
    block: EntryBlock | None = None
    """Operations still in Arrow (the columnar paths); they come before `entries`."""
    dropped: list[Rejection] = field(default_factory=list)
    """Attributes left out of rows that are sent (`oversized_attribute = "drop_attribute"`),
    one record each (reason `attribute_dropped`): kept with the rejections, counted apart."""
    attribute_texts: list[Member] | None = None
    """The JSON members of the attributes the columnar identify builder wrote, of every row of
    the block's batch (`limits.attribute_texts`, floats in two pieces): `changes_only` hashes
    these values rather than writing them again (`diff.columnar.block_fingerprints`)."""

    def parts(self) -> list[Sequence[Entry]]:
        """The operations, as the sender takes them: the block (if any), then the list."""
        return [part for part in (self.block, self.entries) if part]

    def all_entries(self) -> list[Entry]:
        """Every operation as an `Entry` (makes the block's entries: for the slower paths)."""
        return [*(self.block or ()), *self.entries]


class EntryBlock(Sequence[Entry]):
    """Operations of rows of one RecordBatch (identify, event, page, screen), in Arrow until
    they are sent.

    Three Arrow arrays instead of one Python object per row: the serialized bytes, the row keys
    and the source row numbers (and the event ids, where the action has them). Each operation
    is written with the comma that follows it in a request body, so the operations of a slice
    lie back to back in one buffer: packing searches the array's offsets (one binary search a
    body) and a request body is one copy of a slice of that buffer. It is still a
    `Sequence[Entry]`, so a 207 or a 400 that needs single entries gets them, made on demand;
    the source row of an entry is read out of the batch only if that entry is rejected (or, for
    a batch made of dict rows, is that dict).
    """

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
        self.data = data  # binary, no nulls: one serialized operation and a comma per entry
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
            self.data[position].as_py()[:-1],
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
            yield self._entry(data[:-1], row_key, number, key)

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
        return pc.subtract(pc.binary_length(self.data), 1).to_pylist()  # type: ignore[no-any-return]

    def ends(self) -> Sequence[int]:
        """Where each operation (and its comma) starts in the data buffer, and where the last
        one ends: a view of the array's offsets, no copy."""
        large = pa.types.is_large_binary(self.data.type)
        offsets = memoryview(self.data.buffers()[1]).cast("q" if large else "i")
        return offsets[self.data.offset : self.data.offset + len(self.data) + 1]

    def run(self) -> memoryview:
        """The block's operations as they lie in the data buffer, each with its comma."""
        start, stop = value_span(self.data)
        return memoryview(self.data.buffers()[2])[start:stop]

    def body(self) -> bytes:
        """The `/api/v2/batch` request body of every entry of the block: its operations as they
        lie in the data buffer, less the last comma, in the envelope (one copy)."""
        if not len(self.data):
            return body_of([])
        start, stop = value_span(self.data)
        return enveloped(memoryview(self.data.buffers()[2])[start : stop - 1])

    def key_layout(self) -> tuple[memoryview, memoryview]:
        """What tells the entries apart (for the batch id), as `framing.column_layout`: their
        row keys, or their idempotency keys when the row keys are made only on demand."""
        texts = self.row_keys if self.row_keys is not None else self.keys
        assert texts is not None
        return column_layout(texts)

    def size_bytes(self) -> memoryview:
        """`sizes()` as int64 bytes in the machine's order (no Python int per entry)."""
        return int64_view(pc.cast(pc.subtract(pc.binary_length(self.data), 1), pa.int64()))


_row_numbers = pa.array(np.arange(10_000, dtype=np.int64))


def row_numbers(count: int) -> pa.Array:
    """0, 1, ..., count - 1 as int64 (a slice of one array, made again only when it is short)."""
    global _row_numbers
    numbers = _row_numbers
    if len(numbers) < count:
        numbers = _row_numbers = pa.array(np.arange(max(count, 2 * len(numbers)), dtype=np.int64))
    return numbers.slice(0, count)


class JoinedEntries(Sequence[Entry]):
    """Consecutive pieces of different sequences read as one: the entries of a request that
    holds the last operations of one batch and the first of the next. Indexed, sliced (a 400
    narrows it by halves) and written (`request_body`: one copy of each piece) as one."""

    __slots__ = ("_starts", "pieces")

    def __init__(self, pieces: Sequence[Sequence[Entry]]) -> None:
        self.pieces = tuple(pieces)
        self._starts = list(accumulate((len(piece) for piece in self.pieces), initial=0))

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, index: int) -> Entry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Entry]: ...

    def __getitem__(self, index: int | slice) -> Entry | Sequence[Entry]:
        size = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(size)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return joined(
                [
                    piece[max(start - first, 0) : max(min(stop - first, len(piece)), 0)]
                    for piece, first in zip(self.pieces, self._starts, strict=False)
                ]
            )
        position = index + size if index < 0 else index
        if not 0 <= position < size:
            raise IndexError("entry index out of range")
        piece = bisect.bisect_right(self._starts, position) - 1
        return self.pieces[piece][position - self._starts[piece]]

    def __iter__(self) -> Iterator[Entry]:
        return chain.from_iterable(self.pieces)


def joined(pieces: Sequence[Sequence[Entry]]) -> Sequence[Entry]:
    """The pieces as one sequence: the one piece itself, or `JoinedEntries` of the non-empty
    ones (a piece that is itself joined is taken apart)."""
    flat = [
        inner
        for piece in pieces
        for inner in (piece.pieces if isinstance(piece, JoinedEntries) else (piece,))
        if len(inner)
    ]
    if not flat:
        return []
    return flat[0] if len(flat) == 1 else JoinedEntries(flat)


def entry_sizes(entries: Sequence[Entry]) -> list[int]:
    """The serialized size of each entry (an `EntryBlock`'s read as one array)."""
    if isinstance(entries, EntryBlock):
        return entries.sizes()
    if isinstance(entries, JoinedEntries):
        return [size for piece in entries.pieces for size in entry_sizes(piece)]
    return [len(entry.data) for entry in entries]


def entry_ends(entries: Sequence[Entry]) -> Sequence[int]:
    """Where each entry starts and the last one ends, laid out one after another, each followed
    by a comma (as `pack_bounds_of_ends` takes them; a block's are its offsets)."""
    if isinstance(entries, EntryBlock):
        return entries.ends()
    return list(accumulate((size + 1 for size in entry_sizes(entries)), initial=0))


def _run(entries: Sequence[Entry]) -> bytes | memoryview:
    """The entries back to back, each followed by a comma."""
    if isinstance(entries, EntryBlock):
        return entries.run()
    return b"".join(entry.data + b"," for entry in entries)


def entry_size_bytes(entries: Sequence[Entry]) -> bytes | memoryview:
    """`entry_sizes` as int64 bytes in the machine's order."""
    if isinstance(entries, EntryBlock):
        return entries.size_bytes()
    return array("q", entry_sizes(entries)).tobytes()


def request_body(entries: Sequence[Entry]) -> bytes:
    """The `/api/v2/batch` request body of the entries."""
    if isinstance(entries, EntryBlock):
        return entries.body()
    if isinstance(entries, JoinedEntries):
        return enveloped_runs([_run(piece) for piece in entries.pieces])
    return body_of([entry.data for entry in entries])


def request_chunks(entries: Sequence[Entry]) -> bytes | tuple[bytes | memoryview, ...]:
    """The request body of the entries, as `request_body` writes it; for operations kept in
    Arrow, as views of their buffer (`body_chunks`), joined only while the request is written
    (`transport.api.JoinedBody`)."""
    if isinstance(entries, EntryBlock):
        return body_chunks([entries.run()]) if len(entries) else body_of([])
    if isinstance(entries, JoinedEntries):
        return body_chunks([_run(piece) for piece in entries.pieces])
    return body_of([entry.data for entry in entries])


def pack_across(
    held: Sequence[Entry], parts: Sequence[Sequence[Entry]], max_bytes: int
) -> tuple[list[Sequence[Entry]], Sequence[Entry]]:
    """`held` (the entries of a part-filled body, or none) and then `parts`, packed as one
    sequence would be by `pack_entries`: each body filled as far as it goes, across the parts.
    Returns the full bodies' groups and, apart, the last group, which later entries may fill
    further (empty when there was nothing to pack)."""
    groups: list[Sequence[Entry]] = []
    current: list[Sequence[Entry]] = [held] if len(held) else []
    used = ENVELOPE_BYTES - 1 + sum(_run_bytes(piece) for piece in current)
    for part in parts:
        if not len(part):
            continue
        ends = entry_ends(part)
        start = 0
        if current:  # fill the open body first
            start = fitting(ends, max_bytes - used)
            if start:
                current.append(part[:start])
                used += ends[start] - ends[0]
            if start == len(part):
                continue
            groups.append(joined(current))
        bounds = list(pack_bounds_of_ends(ends, max_bytes, start))
        groups.extend(part[a:b] for a, b in bounds[:-1])
        a, b = bounds[-1]
        current = [part[a:b]]
        used = ENVELOPE_BYTES - 1 + ends[b] - ends[a]
    return groups, joined(current)


def _run_bytes(entries: Sequence[Entry]) -> int:
    ends = entry_ends(entries)
    return ends[-1] - ends[0]


def pack_entries(entries: Sequence[Entry], max_bytes: int) -> list[Sequence[Entry]]:
    """Consecutive slices of `entries` whose request bodies fit `max_bytes` (a block's found
    by a binary search per body over where its operations lie, `pack_bounds_of_ends`)."""
    if isinstance(entries, EntryBlock):
        bounds = pack_bounds_of_ends(entries.ends(), max_bytes)
    else:
        bounds = pack_bounds(entry_sizes(entries), max_bytes)
    return [entries[start:stop] for start, stop in bounds]


# the unix seconds a datetime holds (years 1 to 9999), a day in from each end: local times of
# a zone further out may not be years a datetime holds
_LOCAL_SAFE_SECONDS = (-62_135_596_800 + 86_400, 253_402_300_799 - 86_400)


def _python_ready(batch: Any) -> tuple[Any, dict[str, dt.tzinfo]]:
    """The batch with its timestamps as values pyarrow makes datetimes of, the same instants
    (it raises on others, for the whole batch): nanoseconds rounded down to the microsecond,
    and a zoned column with a local time that may be past the years 1 to 9999 in UTC; for
    those columns, the zone to give back to each value that has a local time."""
    zones: dict[str, dt.tzinfo] = {}
    for index, field_ in enumerate(batch.schema):
        kind = field_.type
        if not pa.types.is_timestamp(kind) or (kind.unit != "ns" and kind.tz in (None, "UTC")):
            continue
        column = batch.column(index)
        if kind.unit == "ns":
            micros = floor_divide(pc.cast(column, pa.int64()), 1_000)
            column = pc.cast(micros, pa.timestamp("us", kind.tz))
        if kind.tz not in (None, "UTC"):
            unit = column.type.unit
            ends = pc.min_max(pc.cast(column, pa.int64()))
            lowest, highest = ends["min"].as_py(), ends["max"].as_py()
            first, last = (s * UNITS_PER_SECOND[unit] for s in _LOCAL_SAFE_SECONDS)
            if lowest is not None and not first <= lowest <= highest <= last:
                zones[field_.name] = pa.scalar(0, pa.timestamp("s", kind.tz)).as_py().tzinfo
                column = pc.cast(column, pa.timestamp(unit, "UTC"))
        batch = batch.set_column(index, field_.with_type(column.type), column)
    return batch, zones


def _in_zone(value: Any, zone: dt.tzinfo) -> Any:
    if not isinstance(value, dt.datetime):
        return value  # an Unreadable
    try:
        return value.astimezone(zone)
    except OverflowError:  # its local time is past year 9999 (or before year 1): UTC it is
        return value


def rows_from_arrow(batch: Any) -> Iterator[Row]:
    """Rows of a pyarrow RecordBatch in the same shape typed-jsonl gives (nulls left out).

    JSON columns keep their text: the row path reads it (`RowReader.decoded`). A timestamp is
    the datetime pyarrow makes of it, rounded down to the microsecond, and in UTC where the
    local time of its zone is not a year a datetime holds. A value Python has no form for (a
    date past the year 9999) is a `values.Unreadable`, which every rule refuses.
    """
    batch, zones = _python_ready(batch)
    try:
        rows = batch.to_pylist()
    except (OverflowError, ValueError, pa.ArrowException):  # for the whole batch
        names = batch.schema.names
        columns = [python_values(column) for column in batch.columns]
        rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    for row in rows:
        yield {
            key: _in_zone(value, zones[key]) if key in zones else value
            for key, value in row.items()
            if value is not None
        }
