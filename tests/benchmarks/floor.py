"""The kernel floor: the benchmark's rows written as the destination's operations, as fast as
we know how to write them by hand, with no dlt and nothing this project ships.

It is what the destination is measured against (`target = "floor"` in `tests.benchmarks.runs`):
the same Arrow chunks in, the same operations out (byte for byte: `tests/test_benchmark_floor.py`
holds it to that), the same `<= max_request_bytes` bodies to the same sink, within the same
`requests_per_second`. It knows its table (the columns of `data.ARROW_SCHEMA`, no NULLs), as a
hand-written job would; that is all it may assume, and it checks it. Why each step is the
fastest known:

* JSON: one `take` per chunk writes every operation, from constants and whole columns already
  in text form: every piece's values lie one after another in one array (a constant's once),
  and the take puts each row's pieces side by side, which is the operations' text as it is
  (Arrow's `binary_join_element_wise` writes the same but visits every piece of every row, a
  constant too: twice the CPU). Arrow's C++ casts write integers and floats (`cast` to
  string: a digit table and Ryu-style shortest doubles), so no Python object is made per row. Strings are checked once for bytes JSON would escape (one `bytes.translate`
  over each column's data buffer, a C loop at memory speed) instead of being escaped.
* Event ids: the id is a keyed BLAKE2b of the row's key, which no Arrow kernel computes. The
  per-row loop is the only one here: `hashlib`'s C code over bytes from one `to_pylist`, with
  `copy()` of a pre-keyed hash (cheaper than a new keyed hash per row), the digests joined and
  reversed once (each row's number as little-endian words, no slice per row). The base32 text
  is made by kernels: shifts over all the words, a 1,024-entry lookup of each 10-bit field as
  one uint16 (its two chars), and one `take` that puts each row's 13 codes side by side, which
  is the string array's data buffer as it is (no string join, no offsets per piece); the
  takes skip their bounds checks, the indices being in bounds by construction.
* Packing: each operation is written with its trailing comma, so the operations of a chunk lie
  back to back in one buffer, a body is one slice of it, and the body boundaries come from the
  cumulative sizes (one `cumulative_sum` kernel) by `bisect` on a memoryview of them: one C
  binary search per body, not a Python step per operation. A body is written with one copy
  (`b"".join` of the envelope and a memoryview), and operations left over at the end of a
  chunk start the next chunk's first body.
* Sending: keep-alive httpx connections, up to 8 requests in flight on a thread pool (64 for the
  latency runs, `paced_floor`), started no faster than `requests_per_second` (the destination's
  rate limit is the same budget).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

_HEAD = b'{"batch":['
_TAIL = b"]}"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIR_CODES = pa.array(  # each pair of chars as its two ASCII bytes, read as one uint16
    [int.from_bytes((a + b).encode(), "little") for a in _CROCKFORD for b in _CROCKFORD],
    pa.uint16(),
)
_ULID_PERSON = b"cio-dest-ulid-v1"
_ESCAPED = bytes(range(0x20)) + b'"\\'
_ATTRIBUTES = ("email", "name", "plan", "ltv", "logins", "active")


def _u64(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.uint64())


def _plain(column: pa.Array) -> pa.Array:
    """A string column whose bytes JSON writes as they are (checked: the floor knows its data)."""
    data = column.buffers()[2]
    raw = b"" if data is None else data.to_pybytes()
    if len(raw.translate(None, _ESCAPED)) != len(raw):  # one copy, one C pass over it
        raise ValueError("the floor's data needs no JSON escapes; this column would")
    return column


def _attributes(table: pa.Table) -> list[Any]:
    ltv = table.column("ltv").combine_chunks()
    whole = pc.if_else(pc.equal(pc.floor(ltv), ltv), ".0", "")  # orjson writes 1.0, Arrow 1
    return [
        '"attributes":{"email":"',
        _plain(table.column("email").combine_chunks()),
        '","name":"',
        _plain(table.column("name").combine_chunks()),
        '","plan":"',
        _plain(table.column("plan").combine_chunks()),
        '","ltv":',
        pc.cast(ltv, pa.string()),
        whole,
        ',"logins":',
        pc.cast(table.column("logins").combine_chunks(), pa.string()),
        ',"active":',
        pc.if_else(table.column("active").combine_chunks(), "true", "false"),
        "}",
    ]


def _seconds(table: pa.Table) -> pa.Array:
    micros = pc.cast(table.column("updated_at").combine_chunks(), pa.int64())
    return pc.divide(micros, 1_000_000)  # after 1970: truncation is the floor


def _joined(*pieces: str | pa.Array) -> pa.Array:
    """Each row's pieces (constants, string columns without nulls) back to back: the pieces'
    values in one array, taken in row order; row r starts at the (r x pieces)th value."""
    rows = next(len(piece) for piece in pieces if not isinstance(piece, str))
    values = pa.concat_arrays(
        [pa.array([piece]) if isinstance(piece, str) else piece for piece in pieces]
    )
    kinds = tuple(isinstance(piece, str) for piece in pieces)
    text = pc.take(values, _row_order(kinds, rows), boundscheck=False)
    ends = pa.Array.from_buffers(pa.int32(), len(text) + 1, [None, text.buffers()[1]])
    starts = pc.take(ends, pc.multiply(_counting(rows + 1), len(pieces)), boundscheck=False)
    return pa.Array.from_buffers(pa.string(), rows, [None, starts.buffers()[1], text.buffers()[2]])


@functools.lru_cache(maxsize=4)
def _row_order(constants: tuple[bool, ...], rows: int) -> pa.Array:
    """The index of each row's every piece in the pieces' values, row after row."""
    starts, at = [], 0
    for constant in constants:
        starts.append(at)
        at += 1 if constant else rows
    width = len(constants)
    position = _counting(width * rows)
    row = pc.divide(position, width)
    piece = pc.subtract(position, pc.multiply(row, width))
    moves = pa.array([0 if constant else 1 for constant in constants], pa.int32())
    return pc.add(
        pc.take(pa.array(starts, pa.int32()), piece), pc.multiply(pc.take(moves, piece), row)
    )


def identify_operations(table: pa.Table) -> pa.Array:
    """Each row's identify operation followed by a comma, as one string array."""
    uid = _plain(table.column("uid").combine_chunks())
    return _joined(
        '{"type":"person","action":"identify","identifiers":{"id":"',
        uid,
        '"},',
        *_attributes(table),
        ',"timestamp":',
        pc.cast(_seconds(table), pa.string()),
        "},",
    )


def _ulids(namespace: str, keys: pa.Array) -> pa.Array:
    """The event id of each key: BLAKE2b-128 (keyed by the namespace) in Crockford base32."""
    base = hashlib.blake2b(digest_size=16, person=_ULID_PERSON)
    base.update(namespace.encode() + b"\x00")
    fresh = base.copy
    digests: list[bytes] = []
    keep = digests.append
    for key in keys.view(pa.binary()).to_pylist():
        digest = fresh()
        digest.update(key)
        keep(digest.digest())
    count = len(keys)
    # every digest reversed at once: the 128-bit numbers as little-endian words, rows last first
    words = pa.Array.from_buffers(
        pa.uint64(), 2 * count, [None, pa.py_buffer(b"".join(digests)[::-1])]
    )
    fields = []
    for shift in range(120, -1, -10):
        if shift >= 64:
            bits = pc.shift_right(words, _u64(shift - 64))  # right at the odd (high) words
        elif shift + 10 <= 64:
            bits = pc.shift_right(words, _u64(shift))  # right at the even (low) words
        else:
            below = 64 - shift
            bits = pc.bit_wise_or(
                pc.shift_left(
                    pc.bit_wise_and(words.slice(1), _u64((1 << (10 - below)) - 1)), _u64(below)
                ),
                pc.shift_right(words.slice(0, 2 * count - 1), _u64(shift)),
            )
        fields.append(pc.take(_PAIR_CODES, pc.bit_wise_and(bits, _u64(1023)), boundscheck=False))
    text = pc.take(pa.concat_arrays(fields), _interleaving(count), boundscheck=False)
    offsets = pc.multiply(_counting(count + 1), pa.scalar(26, pa.int32()))
    return pa.Array.from_buffers(
        pa.string(), count, [None, offsets.buffers()[1], text.buffers()[1]]
    )


def _counting(count: int) -> pa.Array:
    return pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int32()), count), start=-1)


@functools.lru_cache(maxsize=4)
def _interleaving(count: int) -> pa.Array:
    """Indices that take the 13 field arrays' codes into rows of 13, rows in their order."""
    starts, at = [], 0
    for shift in range(120, -1, -10):
        starts.append(at + int(shift >= 64))
        at += 2 * count - int(shift < 64 < shift + 10)
    position = _counting(13 * count)
    row = pc.divide(position, 13)
    pair = pc.subtract(position, pc.multiply(row, 13))
    word = pc.multiply(pc.subtract(count - 1, row), 2)
    return pc.cast(pc.add(pc.take(pa.array(starts, pa.int32()), pair), word), pa.int32())


def event_operations(table: pa.Table, namespace: str = "people") -> pa.Array:
    """Each row's event operation (`purchase`, keyed by uid and time) and a comma."""
    uid = _plain(table.column("uid").combine_chunks())
    seconds = _seconds(table)
    micros = pc.cast(table.column("updated_at").combine_chunks(), pa.int64())
    fraction = pc.subtract(micros, pc.multiply(seconds, 1_000_000))
    if pc.any(pc.not_equal(fraction, 0)).as_py():
        raise ValueError("the floor's timestamps are whole seconds; these are not")
    clock = pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.string())  # "YYYY-MM-DD HH:MM:SS"
    keys = _joined(
        '["', uid, '","', pc.replace_substring(clock, " ", "T", max_replacements=1), '+00:00"]'
    )
    return _joined(
        '{"type":"person","action":"event","identifiers":{"id":"',
        uid,
        '"},"name":"purchase","id":"',
        _ulids(namespace, keys),
        '","timestamp":',
        pc.cast(seconds, pa.string()),
        ",",
        *_attributes(table),
        "},",
    )


class Packer:
    """Bodies of at most `max_bytes` from comma-terminated operations, across chunks."""

    def __init__(self, max_bytes: int) -> None:
        self.room = max_bytes - len(_HEAD) - len(_TAIL) + 1  # +1: the last comma is dropped
        self.left = b""  # operations (with their commas) carried into the next body

    def bodies(self, operations: pa.Array) -> Iterator[bytes]:
        """The full bodies these operations complete; the rest waits for the next chunk."""
        offsets = memoryview(operations.buffers()[1]).cast("i")[
            operations.offset : operations.offset + len(operations) + 1
        ]
        data = memoryview(operations.buffers()[2])
        first, end = offsets[0], offsets[-1]
        start = first
        room = self.room - len(self.left)
        while True:
            # the last operation ending within `room` bytes of `start`: one binary search
            stop = offsets[bisect.bisect_right(offsets, start + room) - 1]
            if stop == end and end - start <= room:
                break  # everything left fits: it waits for more
            if stop == start:
                if self.left:  # not even one more operation fits after the carried ones
                    yield _HEAD + self.left[:-1] + _TAIL
                    self.left, room = b"", self.room
                    continue
                raise ValueError("an operation larger than a body")
            yield b"".join((_HEAD, self.left, data[start : stop - 1], _TAIL))
            self.left, room, start = b"", self.room, stop
        self.left += data[start:end].tobytes()

    def flush(self) -> bytes | None:
        if not self.left:
            return None
        body = _HEAD + self.left[:-1] + _TAIL
        self.left = b""
        return body


class Poster:
    """Up to `threads` requests in flight (and `queued` more bodies waiting for a thread), started
    no faster than `requests_per_second`."""

    def __init__(
        self, client: httpx.Client, requests_per_second: float, threads: int = 8, queued: int = 0
    ) -> None:
        self.client = client
        self.interval = 1.0 / requests_per_second
        self.next_start = time.monotonic()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(threads)
        self.most_pending = threads + queued
        self.pending: deque[Future[httpx.Response]] = deque()

    def _post(self, body: bytes) -> httpx.Response:
        with self.lock:
            start, self.next_start = (
                max(self.next_start, time.monotonic()),
                max(self.next_start, time.monotonic()) + self.interval,
            )
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return self.client.post("/api/v2/batch", content=body)

    def post(self, body: bytes) -> None:
        self.pending.append(self.pool.submit(self._post, body))
        while len(self.pending) > self.most_pending:
            self.pending.popleft().result().raise_for_status()

    def finish(self) -> None:
        while self.pending:
            self.pending.popleft().result().raise_for_status()
        self.pool.shutdown()


def run(
    spec: dict[str, Any],
    tables: list[Callable[[], Iterable[pa.Table]]],
    operations: Callable[[pa.Table], pa.Array],
    threads: int = 8,
    queued: int = 0,
) -> None:
    """Write and send every chunk's operations, as the destination would: each table's chunks
    packed on their own, one after the other, through one client and one pace."""
    with httpx.Client(
        base_url=spec["sink"],
        auth=(spec["site_id"], spec["api_key"]),
        headers={"content-type": "application/json"},
        limits=httpx.Limits(max_connections=threads, max_keepalive_connections=threads),
        timeout=60,
    ) as client:
        poster = Poster(client, spec["requests_per_second"], threads, queued)
        for chunks in tables:
            packer = Packer(spec["max_request_bytes"])
            for table in chunks():
                for body in packer.bodies(operations(table)):
                    poster.post(body)
            last = packer.flush()
            if last is not None:
                poster.post(last)
        poster.finish()
