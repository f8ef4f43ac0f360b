"""zlib's crc32 and adler32 of every value of an Arrow text or binary column at once.

`changes_only` keeps a hash of each attribute value made of these two checksums
(`cio_destination.diff.changes.value_hash`), numbers stored for good: here they are the same
numbers, computed with numpy over the column's buffers instead of by one zlib call per value
(which costs about twice as much for the short values attributes hold, and holds the GIL).

Both are sums over a value's bytes, each byte weighted by its distance `d` from the value's
end (1 for the last byte, the value's length `n` for the first):

- adler32: A = 1 + the sum of the bytes and B = n + the sum of `d * byte`, each mod 65521
  (the exact integer sums, then the modulo, are what zlib's running sums come to);
- crc32 is linear over GF(2) but for its start and end constants: it is the crc32 of `n`
  zero bytes XORed with each byte's own part, which depends only on the byte and `d` (a
  table of 256 numbers per distance, `_crc_parts`).

So all bytes of many values are looked up and summed by a few array operations. Bytes around
every value (a JSON string's quotes) depend only on their distance, which the value's length
sets: their parts are looked up by that length (`_affixed`), with the values read where they
lie, never copied to put the quotes around them. A text
longer than `LONGEST` bytes (the table's reach) is given to zlib on its own. The values are taken
`BYTES_AT_ONCE` bytes at a time: the arrays made per byte then stay in the CPU's cache, which
makes the whole twice as fast as one round per column.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["BYTES_AT_ONCE", "LONGEST", "crc32_adler32"]

LONGEST = 1_024
"""The longest value (in bytes) summed here; a longer one goes to zlib."""
BYTES_AT_ONCE = 1 << 16
"""The bytes of values summed at a time (at least one value's)."""
_ADLER_BASE = 65_521
_CRC_POLYNOMIAL = 0xEDB88320  # zlib's, reflected
_OFFSET_LAYOUT = {
    pa.string().id: np.int32,
    pa.binary().id: np.int32,
    pa.large_string().id: np.int64,
    pa.large_binary().id: np.int64,
}
"""The types laid out as offsets and data, by the width of their offsets."""


def crc32_adler32(
    values: pa.Array,
    *,
    around: tuple[bytes, bytes] = (b"", b""),
    at_once: int = BYTES_AT_ONCE,
) -> tuple[np.ndarray, np.ndarray]:
    """`zlib.crc32` and `zlib.adler32` of each value of `values` (a string or binary array,
    large or not, sliced or not) between the bytes `around` (a JSON string's quotes: no copy
    of the values is made to put them there), as two uint32 arrays; `at_once`: the bytes of
    values summed at a time. A null's numbers are those of the bytes its offsets span (none,
    as Arrow writes nulls): the caller masks them."""
    offsets, data = _buffers(values)
    rows = len(values)
    crc = np.zeros(rows, np.uint32)
    adler = np.ones(rows, np.uint32)
    if not rows:
        return crc, adler
    lengths = np.diff(offsets)
    longer = np.flatnonzero(lengths > LONGEST - len(around[0]) - len(around[1]))
    lengths[longer] = 0  # none of their bytes here: zlib's, below
    summed = np.concatenate([[0], np.cumsum(lengths)])
    start = 0
    while start < rows:
        stop = int(np.searchsorted(summed, summed[start] + at_once, side="right")) - 1
        stop = min(rows, max(stop, start + 1))
        counts = lengths[start:stop].astype(np.int32)
        first_longer = int(np.searchsorted(longer, start))  # a long value in this round?
        gaps = first_longer < len(longer) and int(longer[first_longer]) < stop
        found = _sums(counts, offsets[start:], data, around, gaps)
        crc[start:stop], adler[start:stop] = found
        start = stop
    for row in longer.tolist():
        text = data[offsets[row] : offsets[row + 1]]
        crc[row], adler[row] = _by_zlib([around[0], text, around[1]])
    return crc, adler


def _by_zlib(texts: list[Any]) -> tuple[int, int]:
    """zlib's crc32 and adler32 of `texts` one after the other."""
    crc, adler = 0, 1
    for text in texts:
        crc, adler = zlib.crc32(text, crc), zlib.adler32(text, adler)
    return crc, adler


def _buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (int64) and data (uint8) of a string or binary column (another, as a
    string view, first cast to one)."""
    if not _OFFSET_LAYOUT.get(values.type.id):  # e.g. a string view: no offsets
        values = values.cast(pa.large_binary())
    width = np.dtype(_OFFSET_LAYOUT[values.type.id])
    buffers = values.buffers()
    at = values.offset * width.itemsize
    offsets = np.frombuffer(buffers[1], width, len(values) + 1, at).astype(np.int64)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] else np.zeros(0, np.uint8)
    return offsets, data


def _sums(
    counts: np.ndarray,
    offsets: np.ndarray,
    data: np.ndarray,
    around: tuple[bytes, bytes],
    gaps: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The crc32 and adler32 of values of `counts` bytes (the first row's at `offsets[0]` in
    `data`), between the bytes `around`; `gaps`: some values' bytes are left out (too long),
    so the others are not one run of the data."""
    head, tail = around
    rows = len(counts)
    ends = np.cumsum(counts, dtype=np.int32)
    total = int(ends[-1])
    linear = np.zeros(rows, np.uint32)  # the crc's XOR of the values' bytes' parts
    weighted = np.zeros(rows, np.int64)  # B's sum of them
    sums = np.zeros(rows, np.int64)  # A's
    if total:
        # each byte's distance from the end of its row's text (1 for the last)
        distance = np.repeat(ends + len(tail), counts)
        distance -= _counting(total)
        if gaps:
            byte = data[np.repeat(offsets[1 : rows + 1] + len(tail), counts) - distance]
        else:
            byte = data[offsets[0] : offsets[0] + total]
        filled: Any = np.flatnonzero(counts)
        if len(filled) == rows:
            filled = slice(None)  # (no value of none: no rows to pick)
        heads = (ends - counts)[filled]
        # exact in 32 bits: at most 255 * (1 + 2 + ... + LONGEST) a value
        weighted[filled] = np.add.reduceat(distance * byte, heads, dtype=np.int32)
        sums[filled] = np.add.reduceat(byte, heads, dtype=np.int32)
        distance <<= 8
        distance |= byte
        linear[filled] = np.bitwise_xor.reduceat(np.take(_crc_parts(), distance), heads)
    # all else a row's sums hold depends only on its value's length: looked up by it
    crc_rest, weighted_rest, sum_rest = _affixed(head, tail)
    crc = linear ^ crc_rest[counts]
    weighted += weighted_rest[counts]
    sums += sum_rest
    a = sums % _ADLER_BASE
    b = weighted % _ADLER_BASE
    return crc, (b.astype(np.uint32) << 16) | a.astype(np.uint32)


@functools.cache
def _affixed(head: bytes, tail: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """What a row's sums add to its value's bytes' parts, by the value's length `n` (at `n`,
    up to the longest summed): the crc's XOR of the bytes `head` before it and `tail` after
    it, and of the crc32 of as many zero bytes as the row's text; B's weighted sum of those
    bytes, plus the text's length; and A's (the same for every row): 1 and their bytes."""
    n = np.arange(LONGEST + 1 - len(head) - len(tail), dtype=np.int64)
    total = n + len(head) + len(tail)  # the row's text: head, value, tail
    parts = _crc_parts()
    crc = _crc_of_zeros()[total]
    weighted = total.copy()
    for at, byte in enumerate(head):  # its distance from the end: as the value's length sets
        distance = total - at
        crc ^= parts[(distance << 8) | byte]
        weighted += distance * byte
    for at, byte in enumerate(tail):
        crc ^= parts[(len(tail) - at) << 8 | byte]
        weighted += (len(tail) - at) * byte
    return crc, weighted, 1 + sum(head) + sum(tail)


def _counting(most: int) -> np.ndarray:
    """0, 1, 2, ... `most - 1` (int32): a slice of one kept array for a round's bytes."""
    if most > len(_COUNTED):
        return np.arange(most, dtype=np.int32)
    return _COUNTED[:most]


_COUNTED = np.arange(BYTES_AT_ONCE + LONGEST, dtype=np.int32)


@functools.cache
def _crc_parts() -> np.ndarray:
    """A byte's part of a crc32 at distance `d` from the end, at `d * 256 + byte` (`d` = 0:
    none)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_CRC_POLYNOMIAL), table >> 1)
    parts = np.zeros((LONGEST + 1, 256), np.uint32)
    parts[1] = table
    for d in range(2, LONGEST + 1):
        before = parts[d - 1]
        parts[d] = table[before & 0xFF] ^ (before >> 8)
    return parts.reshape(-1)


@functools.cache
def _crc_of_zeros() -> np.ndarray:
    """The crc32 of `n` zero bytes, at `n`, for `n` up to `LONGEST`."""
    return np.array([zlib.crc32(bytes(n)) for n in range(LONGEST + 1)], np.uint32)
