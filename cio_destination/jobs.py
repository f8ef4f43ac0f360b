"""One dlt load job: a table's file, read by the destination, with several batches in flight.

dlt hands the destination one file per load job (`batch_size=0`) instead of calling it once per
batch: a call per batch waits for that batch's answers before dlt reads the next one, so one
table never had more than its last few requests in flight, and at Customer.io's latency that,
not the rate limit, set the pace. Here the file is read in dlt's own batches of `BATCH_ROWS`,
from the offset dlt keeps for the file in the load package's state, and mapped `UNIT_ROWS` at a
time. While one unit's requests wait for their answers the next unit is mapped and sent, as far
as the workspace's window lets requests be in flight.

Progress stays dlt's: a unit is recorded (rejections, report, fingerprints) and the file's
offset advanced past it, in the package state dlt reads on a rerun, only once every request of
it and of every unit before it is answered. A crash therefore replays the units whose requests
had not all been answered, no row that was recorded as done, and each replay is as idempotent
as any (event ids, identifies). Two units that name the same person (or object) are never in
flight together, so Customer.io applies a person's rows in the table's order.

A unit's last, part-filled request body is held back and filled with the next unit's first
operations (`carries_across_units`), so a table takes no more requests than its operations
packed as one sequence: that request then holds rows of both units, and the earlier unit counts
as answered only once it is (a failure of it replays both).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from dlt.common.schema import TTableSchema
from dlt.common.storages.load_package import commit_load_package_state, destination_state
from dlt.common.storages.load_storage import ParsedLoadJobFileName
from dlt.destinations.file_batching import ParquetFileBatchIterator

from cio_destination.arrow_memory import unit_done, unit_held
from cio_destination.entries import EntryBlock, Mapped
from cio_destination.jsonl_arrow import typed_jsonl_units
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.transport.results import SendResult
from cio_destination.transport.sender import Carry

BATCH_ROWS = 10_000
"""dlt's batch: a file's offset in the package state is a multiple of it (packages left pending
by earlier versions, which were called per batch, resume at such an offset)."""
UNIT_ROWS = 10_000
"""Rows mapped and recorded together: one dlt batch. Bodies are filled across units (see
`carries_across_units`), so the unit's size does not change the requests; smaller units hold
less memory beyond the requests in flight (50,000 held 1.8x the do-nothing destination's peak
at 0 ms, 2.35x at 500 ms) and a crash replays fewer rows."""
ALONE_UNIT_ROWS = 50_000
"""Rows of a unit of a table whose units go alone (`must_go_alone`): each waits for every
earlier unit's answers and diffs against the state, so it pays a round trip and a state read per
unit; 50,000 rows make those 5x rarer (a 1M-row changes_only re-sync with nothing changed spent
2.4x a plain sync's load step in units of 10,000), and such a table packs within a unit anyway.
A `changes_only` first sync, whose units do not wait, has them too: it packs within a unit.
A parquet file's first unit is only `UNIT_ROWS`: the units after it are read and their work
(hashing, mapping, sending, writing fingerprints) starts only once it is mapped, so a first unit
of 50,000 rows kept the load's other threads waiting for it (a tenth of a second of a 1M-row
first sync, at whose end the last unit's fingerprints came that much later too). The units
after it start at the same rows in every load of the file's rows, so the unit digests one load
keeps (see `cio_destination.diff.Diff.hash_rows`) are found by the next."""
MAP_AHEAD = 2
"""Units of an Arrow (parquet) table read and mapped ahead while the job sends the one before
(a table whose units must go alone maps each in turn): one helper thread reads them from the
file, another maps them, each in the units' order, so the next unit is already read when its
mapping can start and the job's thread only sends. With one unit ahead the mapping thread stood
idle while the job read the next unit (a fifth of a 1M-row Arrow sync's load step on 2 cores);
a unit of 10,000 Arrow rows ahead holds a few MB. Dict rows (typed-jsonl, read into Arrow by
`jsonl_arrow`) go one ahead: two ahead took the same load step (1.08-1.21 s against 1.04-1.39 s
of wall time for 200,000 rows, three runs each) for another unit held."""
HASH_AHEAD = 6
"""Units of a `changes_only` table of Arrow rows read and hashed ahead (`hashes_ahead`) while
the job diffs and sends the one before. Its first unit's diff waits for the kept hashes to be
read and put in order (about 0.1 s at 1M people); with `MAP_AHEAD` units ahead the hashing
stood idle for most of that wait, while six hash on through it (300,000 Arrow rows of 50,000:
each unit held ahead is a few MB, and a unit with nothing to send is let go at once)."""
HASH_AHEAD_BYTES = 64 << 20
"""At most this much Arrow data in units hashed ahead (`mapped_ahead`'s `most_bytes`): six
units of 50,000 rows of 2 KB would hold 600 MB, so a wide table hashes fewer ahead."""

QUEUED_REQUESTS = 8
"""Requests of a job that may wait for room in the window (their operations mapped, their
bodies not written): 80 ms of Customer.io's default budget, so recording a unit (a state
write) does not leave the window without a request to start. Waiting only for the last unit
of 10,000 rows (about 5 requests) to be admitted gave 58 requests/s at 500 ms; 8 gave 81 in
the same conditions, 16 no more, with 5 MB more memory."""

T = TypeVar("T")


class Answers(Protocol):
    """The requests of one unit: answered or not yet, and what they came to."""

    def wait_admitted(self) -> None: ...

    def waiting(self) -> int: ...

    def done(self) -> bool: ...

    def result(self) -> SendResult: ...


class Answered:
    """A unit that needed no request in flight (a dry run, transactional sends)."""

    def __init__(self, result: SendResult) -> None:
        self._result = result

    def wait_admitted(self) -> None:
        pass

    def waiting(self) -> int:
        return 0

    def done(self) -> bool:
        return True

    def result(self) -> SendResult:
        return self._result


@dataclass
class Unit:
    """Consecutive rows of the file: one Arrow RecordBatch, or dict rows (`JsonlRows`)."""

    items: Any
    rows: int


class JobFile:
    """The file of one load job, read in units from the offset dlt keeps for it."""

    def __init__(self, path: str, table: TTableSchema) -> None:
        parsed = ParsedLoadJobFileName.parse(path)
        self._path = path
        self._parquet = parsed.file_format == "parquet"
        self._schemas = table["columns"]
        self._columns = list(self._schemas.keys())
        self._state = destination_state()
        self._key = f"{parsed.table_name}.{parsed.file_id}"

    @property
    def arrow(self) -> bool:
        """Whether the file's rows come as Arrow batches (parquet) rather than dicts."""
        return self._parquet

    @property
    def offset(self) -> int:
        """Rows of the file already delivered and recorded."""
        return int(self._state.get(self._key, 0))

    def rows_left(self) -> int | None:
        """Rows after `offset`, from a parquet file's footer (None for dict rows: unknown until
        read)."""
        if not self._parquet:
            return None
        import pyarrow.parquet as pq  # as dlt's reader does: only where a parquet file is read

        return max(0, pq.read_metadata(self._path).num_rows - self.offset)

    def units(self, unit_rows: int = UNIT_ROWS, *, into_arrow: bool = True) -> Iterator[Unit]:
        """The rows after `offset`, `unit_rows` (whole dlt batches) at a time, a parquet file's
        first unit at most `UNIT_ROWS` (read when called); dict rows read into Arrow too where
        `into_arrow` (see `jsonl_arrow.typed_jsonl_units`)."""
        if not self._parquet:
            whole = -(-unit_rows // BATCH_ROWS) * BATCH_ROWS
            read = typed_jsonl_units(
                self._path, whole, self.offset, self._schemas, into_arrow=into_arrow
            )
            for rows in read:
                yield Unit(rows, len(rows))
            return
        read = ParquetFileBatchIterator(self._path, BATCH_ROWS, self.offset, self._columns)
        batches: list[Any] = []
        rows = 0
        wanted = min(unit_rows, UNIT_ROWS)  # the first unit (see `ALONE_UNIT_ROWS`)
        for batch in read:
            batches.append(batch)
            rows += len(batch)
            if rows >= wanted:
                yield self._unit(batches, rows)
                batches, rows, wanted = [], 0, unit_rows
        if rows:
            yield self._unit(batches, rows)

    def _unit(self, batches: list[Any], rows: int) -> Unit:
        return Unit(batches[0] if len(batches) == 1 else pa.concat_batches(batches), rows)

    def advance(self, rows: int) -> None:
        """Record `rows` more rows as done, where dlt reads the file's offset on a rerun."""
        self._state[self._key] = self.offset + rows
        commit_load_package_state()


def unit_rows(alone: bool) -> int:
    """Rows per unit: `ALONE_UNIT_ROWS` for a table whose units go alone, else `UNIT_ROWS`
    (read when called, so a test may set either)."""
    return ALONE_UNIT_ROWS if alone else UNIT_ROWS


def mapped_ahead(
    units: Iterator[Unit],
    map_unit: Callable[[Unit], T],
    depth: int,
    *,
    most_bytes: int | None = None,
) -> Iterator[tuple[Unit, T]]:
    """`(unit, map_unit(unit))` in the units' order, up to `depth` units read and mapped ahead
    while the caller sends the one before: one helper thread reads the units, another maps
    them, so reading (Arrow decodes on its own threads), mapping (Arrow's kernels let the
    caller's thread run meanwhile) and sending overlap. With `most_bytes`, it starts one ahead
    and goes as deep as units the size of the last one fit in it (at least one)."""
    if depth < 1:
        for unit in units:
            yield unit, map_unit(unit)
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="customerio-read") as reading,
        ThreadPoolExecutor(1, thread_name_prefix="customerio-map") as mapping,
    ):

        def read_and_map(read: Future[Unit | None]) -> tuple[Unit, T] | None:
            unit = read.result()  # the reader's error, in the units' order
            return None if unit is None else (unit, map_unit(unit))

        def ahead_one() -> tuple[Future[Unit | None], Future[tuple[Unit, T] | None]]:
            # each helper has one thread: units are read, and mapped, one after the other
            read = reading.submit(next, units, None)
            return read, mapping.submit(read_and_map, read)

        ahead = deque(ahead_one() for _ in range(depth if most_bytes is None else 1))
        try:
            while ahead:
                mapped = ahead.popleft()[1].result()
                if mapped is None:
                    return
                deep = depth if most_bytes is None else _fitting(mapped[0], depth, most_bytes)
                while len(ahead) < deep:
                    ahead.append(ahead_one())
                yield mapped
        finally:
            for read, mapped_later in ahead:
                mapped_later.cancel()
                read.cancel()


def _fitting(unit: Unit, depth: int, most_bytes: int) -> int:
    """Units like `unit` to hold ahead: at most `depth`, within `most_bytes`, at least one."""
    size = unit.items.nbytes if hasattr(unit.items, "nbytes") else 0
    return max(1, min(depth, most_bytes // size)) if size else depth


def units_ahead(mapping: CompiledMapping, arrow: bool, *, first_sync: bool = False) -> int:
    """How many units of a table `mapped_ahead` reads and maps ahead (`MAP_AHEAD`): none for a
    table whose units go alone (but `HASH_AHEAD` read and hashed, see `hashes_ahead`), one for
    dict rows, `MAP_AHEAD` for Arrow rows."""
    if must_go_alone(mapping, first_sync=first_sync):
        return HASH_AHEAD if hashes_ahead(mapping, arrow, first_sync=first_sync) else 0
    return MAP_AHEAD if arrow else 1


def hashes_ahead(mapping: CompiledMapping, arrow: bool, *, first_sync: bool = False) -> bool:
    """Whether a table whose units go alone has its units read, and their rows' source hashes
    made (`cio_destination.diff.Diff.hash_rows`), ahead while it sends the one before: a
    `changes_only` table of Arrow rows. A unit's hashes depend on no earlier unit's answers;
    comparing them with the kept ones does, and waits. At 1M unchanged rows, hashing was a
    third of the load step, on the job's thread, with the second core idle."""
    return must_go_alone(mapping, first_sync=first_sync) and mapping.mapping.changes_only and arrow


def must_go_alone(mapping: CompiledMapping, *, first_sync: bool = False) -> bool:
    """Whether a unit of this table waits for every earlier unit's answers before its diff:
    `changes_only` compares with what earlier units had accepted (but on a `first_sync`, with
    nothing: no fingerprint was kept when the load started), a mirror records its snapshot
    once, a merge names two people, and transactional sends keep their own ledger."""
    action = mapping.action
    return (
        (mapping.mapping.changes_only and not first_sync)
        or mapping.mapping.mirror is not None
        or action in ("merge", "send_email")
    )


def carries_across_units(mapping: CompiledMapping) -> bool:
    """Whether a unit's last, part-filled body is held back for the next unit's first
    operations (`transport.sender.Carry`). Not for a table whose units go alone, nor for a
    `changes_only` one even on a first sync (a unit keeps the fingerprints of the operations
    its own requests delivered), nor for `delete` and `suppress`, whose unit, once recorded, purges the people its own delivered
    requests removed: it must see every one of them."""
    return not must_go_alone(mapping) and mapping.action not in ("delete", "suppress")


def identities(mapped: Mapped) -> pa.Array:
    """Who the unit's operations are about (their row keys, as an Arrow string array), where
    their order matters: an operation with an idempotency key (an event) commutes with any
    other and names no one."""
    arrays: list[pa.Array] = []
    for part in mapped.parts():
        if isinstance(part, EntryBlock) and part.keys is not None:
            continue
        if isinstance(part, EntryBlock) and part.row_keys is not None:
            arrays.append(part.row_keys.cast(pa.string()))
        else:
            keys = [entry.row_key for entry in part if entry.key is None]
            if keys:
                arrays.append(pa.array(keys, pa.string()))
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def span(names: pa.Array) -> tuple[str, str] | None:
    """The lowest and the highest of `names` (None: no name): a unit whose span does not
    overlap another's names no one the other does, whatever the order of the table.

    Names in order (a table read in its key's order) span from the first to the last: one
    comparison of each name with the next, a quarter of the time Arrow's min_max takes over
    strings (it copies each new extreme, and in order every name is one)."""
    if len(names) > 1 and names.null_count == 0:
        before, after = names.slice(0, len(names) - 1), names.slice(1)
        if pc.all(pc.less_equal(before, after)).as_py():
            return names[0].as_py(), names[-1].as_py()
    ends = pc.min_max(names)
    low, high = ends["min"].as_py(), ends["max"].as_py()
    return None if low is None else (low, high)


def _last_naming(names: pa.Array, units: list[pa.Array]) -> int | None:
    """The index of the last of `units` (name arrays) holding any of `names`, or None.

    One lookup of every unit's names in a hash of `names` (Arrow's): the hash is built over the
    new unit's names alone, not over all the units in flight (at 500 ms, fourteen units of
    10,000: 5 ms a unit instead of 75)."""
    found = pc.is_in(pa.chunked_array(units, pa.string()), value_set=names)
    stop = len(found)
    for chunk in reversed(found.chunks):
        stop -= len(chunk)
        if pc.any(chunk).as_py():
            position = stop + len(chunk) - 1 - pc.index(chunk[::-1], True).as_py()
            return bisect.bisect_right(list(accumulate(len(unit) for unit in units)), position)
    return None


@dataclass
class _Pending:
    rows: int
    names: pa.Array
    answers: Answers
    finish: Callable[[SendResult], None]
    span: tuple[str, str] | None


class InOrder:
    """The units of one job whose requests are in flight, finished in the order they were read.

    Finishing a unit records it (`finish`, with its result) and then, if nothing failed,
    advances the file's offset past it. After a failure the units behind it are only waited
    for (their rows are replayed), and `finish_all` raises the failure. `carry`: the job's
    bodies filled across units, whose last one `finish_all` sends before it waits.
    """

    def __init__(self, job: JobFile, carry: Carry | None = None) -> None:
        self._job = job
        self._carry = carry
        self._pending: list[_Pending] = []
        self._error: BaseException | None = None

    def add(
        self, rows: int, names: pa.Array, answers: Answers, finish: Callable[[SendResult], None]
    ) -> None:
        self._pending.append(_Pending(rows, names, answers, finish, span(names)))
        unit_held()

    def wait_admitted(self) -> None:
        """Block until at most `QUEUED_REQUESTS` requests of the job's units wait for room in
        the window: the job maps its next unit meanwhile, and the window always finds a
        request ready while the job records a unit."""
        for pending in self._pending:
            if sum(p.answers.waiting() for p in self._pending) <= QUEUED_REQUESTS:
                return
            pending.answers.wait_admitted()  # the pool admits requests in the order they came

    def make_way(self, names: pa.Array | None) -> None:
        """Finish every unit up to the last one naming any of `names` (None: every unit)."""
        if names is None:
            last = len(self._pending) - 1
        else:
            bounds = span(names)
            if bounds is None:
                return
            low, high = bounds
            named = [  # the units whose names could be among these: a cheap test first
                i
                for i, p in enumerate(self._pending)
                if p.span is not None and p.span[0] <= high and low <= p.span[1]
            ]
            if not named:
                return  # the usual case for a table read in its key's order
            last = _last_naming(names, [self._pending[i].names for i in named])
            if last is None:
                return  # spans overlap, names do not: one lookup over the overlapping units
            last = named[last]
        for _ in range(last + 1):
            self._finish_first()

    def finish_ready(self) -> None:
        """Finish the leading units whose answers are all in, without waiting."""
        while self._pending and self._pending[0].answers.done():
            self._finish_first()

    def finish_all(self) -> None:
        """Finish every unit, in order; raise the first failure. The job's last, part-filled
        body goes first: held until the last unit is waited for, it would start only once every
        earlier unit is answered, a round trip after the rest (at 500 ms, 454 requests took
        5.5 s instead of 5.0)."""
        if self._carry is not None:
            self._carry.flush()
        while self._pending:
            self._finish_first()
        if self._error is not None:
            raise self._error

    def _finish_first(self) -> None:
        try:
            self._finish(self._pending.pop(0))
        finally:
            unit_done()  # the unit's buffers are gone now, and with them their pages

    def _finish(self, pending: _Pending) -> None:
        rows = pending.rows
        result = pending.answers.result()
        if self._error is not None:
            return  # after a failure: its rows are replayed, nothing of it is recorded
        pending.finish(result)
        if result.error is not None:
            self._error = result.error
            return
        self._job.advance(rows)

    @property
    def failed(self) -> bool:
        return self._error is not None
