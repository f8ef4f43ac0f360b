"""Pack serialized entries into `/api/v2/batch` bodies no bigger than a byte limit. Pure.

The size is checked before an entry is added, on the exact bytes that will be sent, so no body is
ever one entry over the limit.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import TypeVar

_HEAD = b'{"batch":['
_TAIL = b"]}"
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL)

T = TypeVar("T")


def body_of(entries: Sequence[bytes]) -> bytes:
    """The request body for serialized entries."""
    return enveloped(b",".join(entries))


def enveloped(joined: bytes | memoryview) -> bytes:
    """The request body around entries already joined by commas (copied once)."""
    return b"".join((_HEAD, joined, _TAIL))


def enveloped_runs(runs: Sequence[bytes | memoryview]) -> bytes:
    """The request body of runs of entries, each entry of a run followed by a comma (the last
    comma of the last run is left out; copied once)."""
    if not runs:
        return body_of([])
    last = memoryview(runs[-1])[:-1]
    return b"".join((_HEAD, *runs[:-1], last, _TAIL))


def body_chunks(runs: Sequence[bytes | memoryview]) -> tuple[bytes | memoryview, ...]:
    """The request body of runs (as `enveloped_runs`) as pieces, views of the runs, not
    copies: the body is made whole only as its request is written, and let go once it is."""
    if not runs:
        return (body_of([]),)
    views = [memoryview(run) for run in runs]
    views[-1] = views[-1][:-1]
    return (_HEAD, *views, _TAIL)


def body_size(entry_sizes: Sequence[int]) -> int:
    return ENVELOPE_BYTES + sum(entry_sizes) + max(len(entry_sizes) - 1, 0)


def pack_bounds(sizes: Sequence[int], max_bytes: int) -> Iterator[tuple[int, int]]:
    """Split entries (given by their serialized sizes) into consecutive `(start, stop)` ranges
    whose bodies fit `max_bytes`, filling each body as far as it goes.

    An entry that cannot fit even alone still forms a range of its own; callers reject such
    entries before packing (Customer.io's per-entry limit is far below any body limit).
    """
    start = 0
    used = ENVELOPE_BYTES
    for index, size in enumerate(sizes):
        extra = size + (1 if index > start else 0)
        if index > start and used + extra > max_bytes:
            yield start, index
            start = index
            used = ENVELOPE_BYTES
            extra = size
        used += extra
    if start < len(sizes):
        yield start, len(sizes)


def pack_bounds_of_ends(
    ends: Sequence[int], max_bytes: int, start: int = 0
) -> Iterator[tuple[int, int]]:
    """`pack_bounds` of entries laid out one after another, each followed by a comma, given
    where each one starts and the last one ends (`ends[i + 1] - ends[i]` is entry i's size
    plus one; `len(ends)` is one more than the entries), from entry `start` on: one binary
    search per body instead of a step per entry, the same ranges."""
    room = max_bytes - ENVELOPE_BYTES + 1  # the last entry of a body has no comma
    count = len(ends) - 1
    while start < count:
        stop = bisect.bisect_right(ends, ends[start] + room, start + 1) - 1
        stop = max(stop, start + 1)  # an entry that cannot fit alone is a range of its own
        yield start, stop
        start = stop


def fitting(ends: Sequence[int], room: int) -> int:
    """How many leading entries (laid out as for `pack_bounds_of_ends`) fit in `room` bytes
    of a body that already holds an entry: each of them costs its size and a comma."""
    return bisect.bisect_right(ends, ends[0] + room, 1) - 1


def pack(items: Sequence[T], sizes: Sequence[int], max_bytes: int) -> Iterator[list[T]]:
    """`items` (with serialized sizes) in consecutive groups whose body fits `max_bytes`."""
    if len(items) != len(sizes):
        raise ValueError(f"{len(items)} items but {len(sizes)} sizes")
    for start, stop in pack_bounds(sizes, max_bytes):
        yield list(items[start:stop])
