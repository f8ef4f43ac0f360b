"""Fingerprints of the people `changes_only` tables sent, to send next time only what changed.

A fingerprint is `{"r": hash of the whole operation, "a": {attribute: hash of its value},
"s": hash of the source row or None}` (see `cio_destination.diff.changes`). They live in the
state store (`StoredFingerprints`): the pipeline's state file, or the database of `state_url`,
so runners with no persistent disk keep them.

A load that compares many rows reads the scope's source-row hashes once, in bulk
(`StoredFingerprints.kept_sources`; the read starts on a helper thread while the load's first
rows are hashed, `KeptSources.prefetch`), instead of looking its rows up a unit at a time; the
columnar diff writes a unit's fingerprints as one Arrow table (`remember_table`).

The bulk read is one round trip where the scope's **copy of its source-row hashes** is kept
(`cio_source_hashes`: the scope's source-row hashes, and nothing else, as one blob of 64-bit
numbers, or, where a first sync's writes made it, the mark of its parts in
`cio_source_hash_parts`, read with it in one statement). The per-person table stays the truth,
and the copy holds exactly its hashes or is not kept: every write or forget in the scope drops
it in the write's own transaction (`_drop_copy`), an erasure drops the copies of every scope of
the pipeline in its own transaction, and a load that completed makes it again from the per-person table (`keep_copy`,
at the end of the load), or, on PostgreSQL, from the hashes its own writes wrote where those
were the scope's only writes since it had no fingerprint (a first sync: `_Chain`): each such
write writes its hashes too, as a part of the copy (`cio_source_hash_parts`), and the load's end
only marks the parts as the copy. No copy (a first sync, a load that died, an older store) only
means the slower read.

On PostgreSQL, such a chain of a first sync writes each unit as one **segment**, not a row per
person (`cio_destination.state.segments`): a person's fingerprint is their row in
`cio_fingerprints` if there is one, else their entry in a segment, and every read here (and the
copy) honours that; a forget or an erasure takes them out of both.
"""

from __future__ import annotations

import logging
import secrets
import sys
import threading
import weakref
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from cio_destination.pools import SharedPool
from cio_destination.state.backend import StateStore, pipeline_scopes
from cio_destination.state.segments import (
    CHAIN_MOST,
    KEYS,
    TABLE,
    InTransaction,
    Segments,
    attributes_json,
    encoded,
    overlaps,
)

Fingerprint = dict[str, Any]

FINGERPRINT_SCHEMA = pa.schema(
    [
        ("identifier", pa.string()),
        ("row_hash", pa.int64()),
        ("attributes", pa.binary()),
        ("source_hash", pa.int64()),
    ]
)
"""The columns of the fingerprints `remember_table` keeps, as a row per person holds them
(`attributes`: the JSON `remember` writes of `Fingerprint["a"]`). The columnar diff gives
`attributes` as a struct of int64 fields instead, one per attribute (null: no value): a
segment keeps them so, and the JSON is written from them only for a row per person
(`cio_destination.state.segments.attributes_json`)."""
logger = logging.getLogger("cio_destination")

BULK_READ_FACTOR = 20
"""A load reads a scope's source-row hashes in bulk once its rows come to 1/20 of the hashes
kept: below that, looking its rows up in the database costs less than reading them all."""
_FIRST_BULK_READ = 1_000
"""The most hashes a load's first try reads, however few its rows (a small scope at once)."""
_U64 = pa.uint64()
_SIGN = pa.scalar(1 << 63, _U64)
_DIGIT = pa.scalar(0xFFF, _U64)
_KEY_SHIFT = pa.scalar(40, _U64)


class Fingerprints(Protocol):
    """Where fingerprints are kept, per scope (`<pipeline>/<table>`) and identifier."""

    def fingerprints_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, Fingerprint]:
        """The fingerprints of those `identifiers` that have one."""
        ...

    def holds_any(self, scope: str) -> bool:
        """Whether any fingerprint of `scope` is kept (none: a first sync, nothing to look up)."""
        ...

    def source_hashes_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        """The source-row hashes kept with the fingerprints of `identifiers`, where known."""
        ...

    def changed_sources(self, scope: str, pairs: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those (identifier, source-row hash) `pairs` whose hash is not the one kept with the
        identifier's fingerprint (or that have none)."""
        ...

    def remember(self, scope: str, fingerprints: Mapping[str, Fingerprint]) -> None:
        """Keep these fingerprints (of people Customer.io accepted), replacing earlier ones."""
        ...

    def remember_table(
        self, scope: str, fingerprints: pa.Table, *, unit: bytes | None = None
    ) -> None:
        """`remember` for fingerprints in Arrow (`FINGERPRINT_SCHEMA`, distinct identifiers);
        `unit`: the digest of the unit of rows they are, every one of its rows with its
        source-row hash (see `KeptCopy.units`)."""
        ...

    def kept_sources(self, scope: str) -> KeptSources:
        """What a load compares its source-row hashes with (see `KeptSources`)."""
        ...

    def read_source_hashes(self, scope: str, most: int) -> pa.Array | None:
        """Every source-row hash kept for `scope`, in one read; None if there are over `most`."""
        ...

    def read_copy(self, scope: str, most: int) -> KeptCopy | None:
        """The scope's copy of its source-row hashes (see `StoredFingerprints`), in one
        round trip; None if none is kept, or it holds over `most`."""
        ...

    def units_held(self, scope: str, copy: bytes, units: Iterable[bytes]) -> None:
        """The digests of units whose every row's hash the copy whose digest is `copy` holds
        (see `KeptCopy.units`): kept by `keep_copy`, with that copy's digest."""
        ...

    def keep_copy(self, scope: str) -> None:
        """Make the scope's copy of its source-row hashes, unless it is known current."""
        ...

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        """Drop fingerprints (the people were removed from Customer.io)."""
        ...

    def flush(self) -> None:
        """Wait until the fingerprints given so far are written; raise if that failed."""
        ...


@dataclass(frozen=True)
class KeptCopy:
    """A scope's copy of its source-row hashes, as `read_copy` read it."""

    hashes: array[int]
    digest: bytes
    """XXH3-128 of the copy as it is stored: the copy's content, which `units` are of."""
    units: frozenset[bytes] = frozenset()
    """Digests of units of rows (`cio_destination.diff.source_rows.unit_digest`) whose every
    row's source-row hash this copy holds. A fact about the content, kept with its digest
    (`cio_unit_digests`, written by `keep_copy`), so never stale: a load that reads a copy of
    this content settles a unit of one of these digests whole (every row kept as it is),
    with no row hashed or looked up; a copy of any other content (a write changed a hash)
    finds none of them."""


def copy_digest(stored: bytes | memoryview) -> bytes:
    """The digest a copy of source-row hashes is known by (`KeptCopy.digest`)."""
    return xxhash.xxh3_128_digest(stored)


class KeptSources:
    """The source-row hashes kept for one scope, as one load sees them: looked up in the
    database a unit at a time, until the load's rows come to `1 / BULK_READ_FACTOR` of the
    hashes kept; then read once, in bulk, into a `SortedHashes`, which each unit's hashes are
    looked up in at a cost that grows with the unit, not with the hashes kept (no Python
    object per hash kept, nor per row of a unit that did not change).

    What was read stays true to the database: a person whose fingerprint this process writes or
    drops after it was read counts as changed (their rows are mapped, and the stored
    fingerprint has the last word). A hash covers the row's identifier (see
    `cio_destination.diff.source_rows`), so a row whose hash is among those kept
    is a row kept as it is, but for a 64-bit collision.

    Read from the scope's copy, a unit whose digest is one of the copy's `KeptCopy.units` is
    settled whole (`settles`); a unit whose every row it finds kept as it is adds its digest
    to those kept with the copy (`Fingerprints.units_held`).
    """

    def __init__(self, fingerprints: Fingerprints, scope: str) -> None:
        self._fingerprints = fingerprints
        self._scope = scope
        self._lock = threading.Lock()
        self._seen = 0
        self._next_read = 0
        self._hashes: _Known | None = None
        self._reading: Future[_Known | None] | None = None
        self._touched: set[str] = set()
        self.bulk = False
        """Whether the hashes were read in bulk."""
        self.from_copy = False
        """Whether that read was of the scope's copy of its hashes (one round trip)."""
        self.looked_up = 0
        """Rows looked up in the hashes read in bulk."""
        self.settled = 0
        """Units settled whole by their digest."""

    def prefetch(self, rows: int) -> None:
        """Start, on a helper thread, the read that `changed` would make for `rows` more rows,
        so the database reads while the caller hashes them (`changed` waits for it)."""
        with self._lock:
            if self._hashes is not None or self._reading is not None:
                return
            seen = self._seen + rows
            self._reading = _reader().submit(self._read, seen)

    def may_settle(self, unit: bytes) -> bool:
        """Whether a unit of this digest may be settled whole (`settles`), as far as the read
        begun (`prefetch`) tells, never waiting for it (a unit hashed while the read is on
        costs no time the load waits for): its rows need no hashing unless `settles` finds
        one of them written since."""
        with self._lock:
            known, reading = self._hashes, self._reading
        if known is None and reading is not None and reading.done() and not reading.exception():
            known = reading.result()
        if known is None:
            return False
        if unit in known.units:
            return True
        known.sort_ahead()  # `changed` will look this unit up: its hashes go in order meanwhile
        return False

    def settles(self, unit: bytes, rows: int, identifiers: Callable[[], pa.Array]) -> bool:
        """Whether a unit of `rows` rows with this digest is kept as it is, every row (none
        to map): its digest is one of those kept with the copy read, and none of its people
        (`identifiers`, text, asked for only if any was) had their fingerprint written or
        dropped since. A unit it does not settle goes to `changed`."""
        with self._lock:
            known = self._known(self._seen + rows)
            if known is None or unit not in known.units:
                return False
            if self._touched:
                names = identifiers()
                written = pa.array(list(self._touched), names.type)
                if pc.any(pc.is_in(names, value_set=written)).as_py():
                    return False
            self._seen += rows
            self.settled += 1
            copy = known.copy
        assert copy is not None
        self._fingerprints.units_held(self._scope, copy, [unit])  # held by the copy still
        return True

    def changed(
        self,
        identifiers: Sequence[str | None] | pa.Array,
        hashes: Sequence[int] | pa.Array,
        unit: bytes | None = None,
    ) -> list[int]:
        """The positions of the rows to map: an identifier of None, or a hash that is not the
        one kept with the identifier's fingerprint (or none is kept). `unit`: the digest of
        the unit the rows are, kept with the copy read if it holds every row's hash."""
        with self._lock:
            self._seen += len(identifiers)
            known, touched = self._known(self._seen), self._touched
            if known is not None:
                self.looked_up += len(identifiers)
                to_map, held = _changed_rows(known.sorted(), identifiers, hashes, touched)
                copy = known.copy
        if known is not None:
            if held and unit is not None and copy is not None:
                self._fingerprints.units_held(self._scope, copy, [unit])
            return to_map
        listed = _listed(identifiers)
        # as Python ints: an Arrow scalar never equals the int a store answers with
        numbers = hashes.to_pylist() if isinstance(hashes, pa.Array) else list(hashes)
        pairs = [(i, h) for i, h in zip(listed, numbers, strict=True) if i is not None]
        found = self._fingerprints.changed_sources(self._scope, pairs)
        return [
            at
            for at, pair in enumerate(zip(listed, numbers, strict=True))
            if pair[0] is None or pair in found
        ]

    def _known(self, seen: int) -> _Known | None:
        """The hashes read in bulk (`_read`): read now, or waited for, unless they were."""
        if self._hashes is None:
            reading, self._reading = self._reading, None
            self._hashes = self._read(seen) if reading is None else reading.result()
        return self._hashes

    def touch(self, identifiers: Iterable[str]) -> None:
        """These people's fingerprints were written or dropped: count them as changed."""
        with self._lock:
            if self._hashes is not None or self._reading is not None:  # read, or being read
                self._touched.update(identifiers)

    def _read(self, seen: int) -> _Known | None:
        """The hashes, read in bulk if they come to at most `BULK_READ_FACTOR` times the
        load's rows so far (`seen`); None (looked up by unit) while they are more. A read that
        finds more doubles the size of the next, so the reads that fail cost at most the one
        that does not."""
        most = max(BULK_READ_FACTOR * seen, _FIRST_BULK_READ)
        if most < self._next_read:
            return None
        copy = self._fingerprints.read_copy(self._scope, most)
        if copy is not None:
            self.bulk = self.from_copy = True
            hashes = copy.hashes
            buffer = pa.py_buffer(hashes)  # the array's own bytes, no copy
            column = pa.Array.from_buffers(pa.int64(), len(hashes), [None, buffer])
            return _Known(column, copy.digest, copy.units)
        column = self._fingerprints.read_source_hashes(self._scope, most)
        if column is None:
            self._next_read = 2 * most
            return None
        self.bulk = True
        return _Known(column, None, frozenset())


class _Known:
    """Hashes read in bulk: `copy`, the digest of the copy they were read from (None: read
    from the per-person rows), `units`, the digests of units it holds whole, and the hashes
    put in order for lookups (`sorted`). Where units may be settled whole, they are put in
    order only once a unit is not (a re-sync in which nothing changed never does; a unit
    found not settled ahead starts it on a helper thread, `sort_ahead`); else at once, on the
    thread that read them."""

    def __init__(self, column: pa.Array, copy: bytes | None, units: frozenset[bytes]) -> None:
        self.copy = copy
        self.units = units
        self._column: pa.Array | None = column  # until it is put in order
        self._sorting: Future[SortedHashes] | None = None
        self._lock = threading.Lock()
        if not units:
            self.sorted()

    def sort_ahead(self) -> None:
        """Start putting the hashes in order on a helper thread, unless that was started."""
        with self._lock:
            if self._sorting is None:
                self._sorting = _reader().submit(SortedHashes, self._column)
                self._column = None

    def sorted(self) -> SortedHashes:
        """The hashes, in order: put so here, or waited for (`sort_ahead`)."""
        with self._lock:
            if self._sorting is None:
                done: Future[SortedHashes] = Future()
                done.set_result(SortedHashes(self._column))
                self._sorting, self._column = done, None
            sorting = self._sorting
        return sorting.result()


def _changed_rows(
    known: SortedHashes,
    identifiers: Sequence[str | None] | pa.Array,
    hashes: Sequence[int] | pa.Array,
    touched: set[str],
) -> tuple[list[int], bool]:
    """`KeptSources.changed` against hashes read in bulk, in Arrow: the positions of the rows
    with no identifier, a hash not kept, or an identifier this process wrote since; and
    whether every row had an identifier and a hash kept (whatever was written since)."""
    given = hashes if isinstance(hashes, pa.Array) else pa.array(hashes, pa.int64())
    names = identifiers
    if not isinstance(names, pa.Array):
        names = pa.array(names, pa.string())
    to_map = pc.invert(known.holds(given))
    held = not pc.any(to_map).as_py() and not names.null_count
    if names.null_count:
        to_map = pc.or_(to_map, pc.is_null(names))
    if touched:
        written = pa.array(list(touched), names.type)
        to_map = pc.or_(to_map, pc.is_in(names, value_set=written))
    if (held and not touched) or not pc.any(to_map).as_py():
        return [], held
    return pc.indices_nonzero(to_map).to_pylist(), held


class SortedHashes:
    """A set of 64-bit hashes (int64) that Arrow arrays of hashes are looked up in.

    Put in order once by their top 24 bits (their key), by a radix sort of two passes of 12
    bits (Arrow sorts a range of 4,096 values by counting: about 5x faster than it sorts 64-bit
    numbers), and cut into buckets by their top bits. A hash is looked for by a binary search
    for its key in its bucket, made for a whole array at a time by Arrow kernels in a fixed
    number of steps (as many as the widest bucket's size has bits), then compared with the
    hashes from there on that may share its key (as many as most share one). A lookup costs the
    same however many hashes are kept: no hash table built per lookup, and no Python object
    per hash (12 bytes each, and 8 per bucket: a sixteenth as many buckets)."""

    _MOST_BITS = 16
    """At most 65,536 buckets (512 kB of starts), about 16 hashes each at 1M hashes."""

    def __init__(self, hashes: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(hashes, pa.ChunkedArray):
            hashes = hashes.combine_chunks()
        size = self._size = len(hashes)
        values = pc.bit_wise_xor(hashes.view(_U64), _SIGN)  # unsigned, in the order of int64
        for shift in (40, 52):  # least significant digit first, each sort stable
            digit = pc.bit_wise_and(pc.shift_right(values, pa.scalar(shift, _U64)), _DIGIT)
            values = pc.take(values, pc.sort_indices(pc.cast(digit, pa.int32())))
        keys = self._keys(values)
        bits = max(1, min(self._MOST_BITS, (size >> 4).bit_length()))
        self._shift = pa.scalar(24 - bits, pa.uint32())
        self._starts, widest = _bucket_starts(pc.shift_right(keys, self._shift), size, 1 << bits)
        self._steps = [pa.scalar(1 << step, pa.int64()) for step in reversed(range(widest))]
        # ahead of the keys a filler, behind them one above any key as many times as a search
        # can step past the last bucket; behind the hashes the largest, as many times as the
        # most that share a key: every position looked at is in range, and a hash found
        # behind is in the set
        self._keys_padded = pa.concat_arrays(
            [pa.array([0], pa.uint32()), keys, pa.array([1 << 24] * (1 << widest), pa.uint32())]
        )
        sharing = _most_alike(keys) if size else 0
        self._offsets = [pa.scalar(at, pa.int64()) for at in range(1, sharing)]
        tail = pa.repeat(values[size - 1], sharing) if size else pa.array([], _U64)
        self._values = pa.concat_arrays([values, tail])

    def __len__(self) -> int:
        return self._size

    @staticmethod
    def _keys(values: pa.Array) -> pa.Array:
        return pc.cast(pc.shift_right(values, _KEY_SHIFT), pa.uint32())

    def holds(self, hashes: pa.Array) -> pa.Array:
        """Whether each of `hashes` (int64, no nulls) is one of the set (a boolean array)."""
        if not self._size:
            return pc.is_null(hashes)  # all false
        values = pc.bit_wise_xor(hashes.view(_U64), _SIGN)
        keys = self._keys(values)
        low = pc.take(self._starts, pc.shift_right(keys, self._shift))
        for step in self._steps:  # the first position in the bucket whose key is not less
            ahead = pc.add(low, step)
            low = pc.if_else(pc.less(pc.take(self._keys_padded, ahead), keys), ahead, low)
        found = pc.equal(pc.take(self._values, low), values)
        if not self._offsets or pc.all(found).as_py():
            return found
        missed = pc.invert(found)  # the others that may share the key, for those not found
        low, values = low.filter(missed), values.filter(missed)
        later = pc.equal(pc.take(self._values, pc.add(low, self._offsets[0])), values)
        for offset in self._offsets[1:]:
            later = pc.or_(later, pc.equal(pc.take(self._values, pc.add(low, offset)), values))
        return pc.replace_with_mask(found, missed, later)


def _most_alike(keys: pa.Array) -> int:
    """How many of the sorted `keys` are the same key, at most."""
    ends = pc.run_end_encode(keys).run_ends.cast(pa.int64())
    begins = pa.concat_arrays([pa.array([0], pa.int64()), ends[:-1]])
    return pc.max(pc.subtract(ends, begins)).as_py()  # type: ignore[no-any-return]


def _bucket_starts(buckets: pa.Array, size: int, count: int) -> tuple[pa.Array, int]:
    """Per bucket (of `count`), the position of its first hash among the sorted `buckets` of
    `size` hashes; and how many bits the widest bucket's size takes."""
    if not size:
        return pa.array([0] * count, pa.int64()), 0
    runs = pc.run_end_encode(buckets)
    ends = runs.run_ends.cast(pa.int64())
    begins = pa.concat_arrays([pa.array([0], pa.int64()), ends[:-1]])
    widest_bits = pc.max(pc.subtract(ends, begins)).as_py().bit_length()
    if len(ends) == count:  # every bucket holds a hash (the usual case: 16 a bucket)
        return begins, widest_bits
    starts = [0] * count
    at, start = 0, 0
    for bucket, end in zip(runs.values.to_pylist(), ends.to_pylist(), strict=True):
        starts[at : bucket + 1] = [start] * (bucket + 1 - at)
        at, start = bucket + 1, end
    starts[at:] = [size] * (count - at)
    return pa.array(starts, pa.int64()), widest_bits


COPY_MOST_BYTES = 1_000_000_000
"""The largest copy of source-row hashes kept (125M hashes): SQLite's longest blob by default,
just under PostgreSQL's 1 GB `bytea`. A scope with more has none; its loads read the hashes
the slower way."""


def _set_copy(tx: Any, scope: str, hashes: bytes) -> None:
    """Keep `hashes` (big-endian, 8 bytes each) as the scope's copy, in the row `keep_copy`
    made and holds: as a blob, so PostgreSQL gets it in a binary COPY, not as a parameter
    (escaped as hex text, which cost three times as long: 0.23 s at 1M hashes). Over
    `COPY_MOST_BYTES` the copy stays dropped."""
    if len(hashes) > COPY_MOST_BYTES:
        _no_copy(scope, len(hashes))
        return
    copy = pa.table({"size": pa.array([len(hashes) // 8]), "hashes": pa.array([hashes])})
    tx.upsert_table("cio_source_hashes", [], copy, {"scope": scope}, blobs=True)


PARTS_MARK = b"cio-copy-parts/"
"""How the mark of a copy kept in parts begins (`_parts_mark`)."""


def _parts_mark(token: int) -> bytes:
    """What a copy's row holds in place of its hashes where they are kept in parts: the mark
    of the chain (`_Chain.token`) whose writes wrote the parts. 23 bytes, never a whole number
    of 8-byte hashes, so never taken for a copy's hashes."""
    return PARTS_MARK + token.to_bytes(8, "big")


def _mark_parts(tx: Any, scope: str, token: int, size: int) -> None:
    """Keep, as the scope's copy, the parts the writes of the chain `token` wrote (`size` bytes
    in all), in the row `keep_copy` made and holds: one short statement at the end of the
    load, where the copy's bytes were written by the writes themselves, behind the load.
    Over `COPY_MOST_BYTES` the copy stays dropped, as `_set_copy`'s, and its parts go."""
    if size > COPY_MOST_BYTES:
        _no_copy(scope, size)
        _drop_parts(tx, "scope = ?", [scope])
        return
    tx.execute(
        "UPDATE {cio_source_hashes} SET size = ?, hashes = ? WHERE scope = ?",
        [size // 8, _parts_mark(token), scope],
    )


def _copy_found(rows: list[tuple[Any, ...]]) -> bytes | memoryview | None:
    """The hashes of a copy `read_copy` found: its blob, or its parts joined; None where none
    was found, or its parts are not all there (read as no copy)."""
    if not rows:
        return None
    size, stored = rows[0][:2]
    if len(stored) % 8 == 0:  # the hashes themselves (a mark never is 8-byte words)
        return stored  # type: ignore[no-any-return]
    if bytes(stored[: len(PARTS_MARK)]) != PARTS_MARK:
        return None
    joined = b"".join(row[4] for row in rows if row[4] is not None)
    return joined if len(joined) == size * 8 else None


def _drop_copies(tx: Any, where: str, params: Sequence[Any]) -> None:
    """Drop the copies of the scopes matching `where` (with `params`) where they have a row,
    their parts with them."""
    tx.execute(f"UPDATE {{cio_source_hashes}} SET size = NULL, hashes = NULL WHERE {where}", params)
    _drop_parts(tx, where, params)


def _drop_parts(tx: Any, where: str, params: Sequence[Any]) -> None:
    """Delete the parts of the copies of the scopes matching `where` (with `params`): where a
    copy's row no longer names them, they are nobody's."""
    tx.execute(f"DELETE FROM {{cio_source_hash_parts}} WHERE {where}", params)


def _no_copy(scope: str, size: int) -> None:
    logger.info(
        "customerio: no copy of the source-row hashes of %s is kept (%d hashes, more than"
        " a blob holds): its loads read them the slower way",
        scope,
        size // 8,
    )


def _as_copy(hashes: pa.Array) -> bytes:
    """Source-row hashes (int64, no nulls) as the copy holds them: big-endian 64-bit numbers."""
    numbers = array("q")
    numbers.frombytes(memoryview(hashes.buffers()[1])[hashes.offset * 8 :][: len(hashes) * 8])
    if sys.byteorder == "little":
        numbers.byteswap()
    return numbers.tobytes()


def _split_units(units: bytes | None) -> Iterable[bytes]:
    """The 16-byte digests kept back to back in `units`."""
    return (units[at : at + 16] for at in range(0, len(units), 16)) if units else ()


def _listed(identifiers: Sequence[str | None] | pa.Array) -> Sequence[str | None]:
    return identifiers.to_pylist() if isinstance(identifiers, pa.Array) else identifiers


_writers: weakref.WeakKeyDictionary[StateStore, SharedPool] = weakref.WeakKeyDictionary()
_readers = SharedPool(2, "customerio-kept-sources")


def _reader() -> ThreadPoolExecutor:
    """The threads that read kept source-row hashes ahead (`KeptSources.prefetch`), shared by
    every store and load of the process."""
    return _readers.executor()


def _writer(store: StateStore) -> ThreadPoolExecutor:
    """The one thread that writes fingerprints behind, per store."""
    # one pool per store even when two threads ask at once: dict.setdefault is atomic
    return _writers.setdefault(store, SharedPool(1, "customerio-fingerprints")).executor()


def _per_person(fingerprints: pa.Table) -> pa.Table:
    """Fingerprints (`FINGERPRINT_SCHEMA`) as rows of `cio_fingerprints` hold them: their
    attribute hashes as JSON, written here where the columnar diff gave them as columns."""
    at = fingerprints.schema.get_field_index("attributes")
    if not pa.types.is_struct(fingerprints.schema.field(at).type):
        return fingerprints
    return fingerprints.set_column(at, "attributes", attributes_json(fingerprints.column(at)))


class _LazyFingerprint(dict):  # type: ignore[type-arg]
    """A stored fingerprint whose attribute hashes are parsed only when asked for."""

    def __init__(self, row_hash: int, blob: bytes) -> None:
        super().__init__(r=row_hash)
        self._blob = blob

    def get(self, key: str, default: Any = None) -> Any:
        if key == "a" and "a" not in self:
            self["a"] = orjson.loads(self._blob)
        return super().get(key, default)


@dataclass(frozen=True)
class _Chain:
    """This process's writes of a scope's fingerprints since the scope had none, each of
    people it had none of (a first sync's units, COPYed straight in), with no other write
    between: the source-row hashes they wrote are the scope's, so the copy of them is made
    from these at the end of the load (`keep_copy`: each write wrote its hashes as a part of
    the copy, which the end marks as kept), instead of read back from every fingerprint by the
    database. The chain's writes mark the copy's row with its `token`
    (hashes NULL: no copy, to any reader); any other write or erasure sets it NULL, another
    process's chain marks it with its own, so the end finds the token only where the chain
    holds."""

    token: int
    hashes: tuple[bytes, ...]
    """Each write's source-row hashes, as the copy holds them (big-endian 64-bit numbers)."""
    identifiers: tuple[pa.Array, ...] = ()
    """The identifiers of each segment the chain wrote (sorted), which a unit's must miss."""
    per_person: bool = False
    """Whether the chain wrote a unit a row per person: it writes no segment after it (its
    people's own rows would hide a later segment's entries of them)."""


class StoredFingerprints:
    """Fingerprints in the state store (local, or behind `state_url`)."""

    TABLES = (
        """CREATE TABLE IF NOT EXISTS {cio_fingerprints} (
            scope TEXT NOT NULL,
            identifier TEXT NOT NULL,
            row_hash BIGINT NOT NULL,
            attributes {blob} NOT NULL,
            source_hash BIGINT,
            PRIMARY KEY (scope, identifier)
        )""",
        """CREATE TABLE IF NOT EXISTS {cio_source_hashes} (
            scope TEXT PRIMARY KEY,
            size BIGINT,
            hashes {blob}
        )""",
        """CREATE TABLE IF NOT EXISTS {cio_source_hash_parts} (
            scope TEXT NOT NULL,
            part BIGINT NOT NULL,
            mark {blob} NOT NULL,
            hashes {external_blob} NOT NULL,
            PRIMARY KEY (scope, part)
        )""",
        """CREATE TABLE IF NOT EXISTS {cio_unit_digests} (
            scope TEXT PRIMARY KEY,
            copy_digest {blob} NOT NULL,
            units {blob} NOT NULL
        )""",
        TABLE,
    )
    """The tables it keeps: the fingerprints, per scope the copy of their source-row hashes
    (`hashes`: `size` 64-bit numbers, big-endian, or the mark of the parts that hold them,
    `_parts_mark`; NULL: no copy kept), the parts of copies made of a chain's writes
    (`cio_source_hash_parts`: each write's hashes, in order, under the chain's mark), and per
    scope the
    digests of units a copy holds whole (`KeptCopy.units`: `units`, 16 bytes each, of the
    copy whose `copy_digest` it is; any other copy's reader ignores them), and a first sync's
    fingerprints a unit at a time (`cio_destination.state.segments`): a person's fingerprint
    is their row in `cio_fingerprints` if there is one, else their entry in a segment."""
    _COLUMNS = ("scope", "identifier", "row_hash", "attributes", "source_hash")

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self._store = store
        self._pipeline = pipeline_name
        self._writing: list[Future[None]] = []
        self._lock = threading.Lock()
        self._scopes: weakref.WeakKeyDictionary[KeptSources, str] = weakref.WeakKeyDictionary()
        self._drops: dict[str, int] = {}
        """Per scope, how many times this process dropped its copy (a read that a drop
        overtook does not count the copy it read as current)."""
        self._copied: set[str] = set()
        """Scopes whose copy this process read or made, and has not dropped since."""
        self._copy_lock = threading.Lock()
        self._chains: dict[str, _Chain] = {}
        """Per scope, this process's unbroken chain of writes since the scope had no
        fingerprint (see `_Chain`)."""
        self._units: dict[str, tuple[bytes, set[bytes], frozenset[bytes]]] = {}
        """Per scope, the digest of the copy read, the units found held by it (`units_held`),
        and those kept with it when read: the first, if any and not the same as the second,
        kept by `keep_copy` in their place."""
        self._chain_units: dict[str, tuple[int, list[bytes]]] = {}
        """Per scope, the units written whole by this process's chain of writes (`_Chain`) of
        this token: a copy made of the chain holds them."""
        self._segments = Segments()
        self._chains_lock = threading.Lock()
        """Guards `_chains` and `_chain_units` alone, and is never held across a statement: the
        writer thread takes it inside a transaction that locks the copy's row, where
        `_copy_lock` (held by `erase` and `keep_copy` across statements that wait for that
        row) would deadlock."""

    def kept_sources(self, scope: str) -> KeptSources:
        kept = KeptSources(self, scope)
        with self._lock:
            self._scopes[kept] = scope  # watched before it reads: no write slips between
        return kept

    def read_source_hashes(self, scope: str, most: int) -> pa.Array | None:
        """With segments: the per-person hashes, and the segments' of the people with no row
        of their own (a segment's hash of a person written since is not theirs)."""
        store = self._db
        held = self._segments.held(store, "scope = ?", [scope])
        if not held:
            table = store.read_table(
                "SELECT source_hash FROM {cio_fingerprints} WHERE scope = ?"
                " AND source_hash IS NOT NULL LIMIT ?",
                [scope, most + 1],
                pa.schema([("source_hash", pa.int64())]),
            )
            return None if len(table) > most else table.column(0).combine_chunks()
        own = store.read_table(
            "SELECT identifier, source_hash FROM {cio_fingerprints} WHERE scope = ?",
            [scope],
            KEYS,
        )
        hashes = pa.concat_arrays(
            [
                own.column("source_hash").combine_chunks().drop_null(),
                self._segments.source_hashes(
                    store, scope, own.column("identifier").combine_chunks()
                ),
            ]
        )
        return None if len(hashes) > most else hashes

    def read_copy(self, scope: str, most: int) -> KeptCopy | None:
        with self._copy_lock:
            drops = self._drops.get(scope, 0)
        # one statement (one snapshot): the copy's row, with its parts where it names some
        found = self._db.read(
            "SELECT c.size, c.hashes, d.copy_digest, d.units, p.hashes"
            " FROM {cio_source_hashes} c"
            " LEFT JOIN {cio_unit_digests} d ON d.scope = c.scope"
            " LEFT JOIN {cio_source_hash_parts} p ON p.scope = c.scope AND p.mark = c.hashes"
            " WHERE c.scope = ? AND c.hashes IS NOT NULL AND c.size <= ? ORDER BY p.part",
            [scope, most],
        )
        stored = _copy_found(found)
        if stored is None:
            with self._copy_lock:
                self._copied.discard(scope)
            return None
        units_of, units = found[0][2:4]  # bytes, or memoryviews (PostgreSQL's driver)
        digest = copy_digest(stored)
        units_of, units = bytes(units_of or b""), bytes(units or b"")
        hashes = array("q")
        hashes.frombytes(stored)
        if sys.byteorder == "little":
            hashes.byteswap()
        held = frozenset(_split_units(units) if units_of == digest else ())
        with self._copy_lock:
            if self._drops.get(scope, 0) == drops:
                self._copied.add(scope)
            self._units[scope] = (digest, set(), held)  # this load's own, kept instead
        return KeptCopy(hashes, digest, held)

    def units_held(self, scope: str, copy: bytes, units: Iterable[bytes]) -> None:
        with self._copy_lock:
            known = self._units.get(scope)
            if known is None or known[0] != copy:
                known = self._units[scope] = (copy, set(), frozenset())
            known[1].update(units)

    def _keep_units(self, tx: Any, scope: str, copy: bytes, units: Iterable[bytes]) -> None:
        """Keep the digests of units the copy whose digest is `copy` holds whole, instead of
        any kept before (in a row of their own: the copy's row and its writes are not
        touched)."""
        tx.execute(
            "INSERT INTO {cio_unit_digests} (scope, copy_digest, units) VALUES (?, ?, ?)"
            " ON CONFLICT (scope) DO UPDATE SET copy_digest = excluded.copy_digest,"
            " units = excluded.units",
            [scope, copy, b"".join(sorted(units))],
        )

    def _before_write(self, scope: str) -> None:
        """Count a drop of the scope's copy of its hashes (the write that follows makes it, in
        its own transaction: `_drop_copy`): a read of the copy that a drop overtook does not
        count the copy as current."""
        with self._copy_lock:
            self._drops[scope] = self._drops.get(scope, 0) + 1
            self._copied.discard(scope)

    @staticmethod
    def _drop_copy(tx: Any, scope: str) -> None:
        """Drop the scope's copy of its hashes, as the first statement of the transaction that
        writes the scope's fingerprints: a reader sees the old rows with the old copy or the
        new rows with none. On every write, not once per process: another runner may have made
        a copy since. An upsert, so the copy's row is locked even where no copy is kept: a
        `keep_copy` running meanwhile waits for this write and then reads its rows."""
        tx.execute(
            "INSERT INTO {cio_source_hashes} (scope, size, hashes) VALUES (?, NULL, NULL)"
            " ON CONFLICT (scope) DO UPDATE SET size = NULL, hashes = NULL",
            [scope],
        )
        _drop_parts(tx, "scope = ?", [scope])

    def _write_new(self, tx: Any, scope: str, fingerprints: pa.Table) -> _Chain | None:
        """Write fingerprints of people the scope has none of, most likely (PostgreSQL), and
        drop the scope's copy of its hashes in the same transaction, as every write does; the
        chain of this process's writes (see `_Chain`) that this write starts or goes on with,
        or None (it breaks it: another write came between, or this one replaced fingerprints
        kept). Its first statement locks the copy's row (as `_drop_copy` does) and reads it."""
        found = tx.execute(
            "INSERT INTO {cio_source_hashes} AS c (scope, size, hashes) VALUES (?, NULL, NULL)"
            " ON CONFLICT (scope) DO UPDATE SET size = c.size RETURNING size, hashes IS NULL",
            [scope],
        )
        mark, dropped = found[0]
        with self._chains_lock:
            chain = self._chains.get(scope)
        if chain is None or not dropped or mark != chain.token:
            chain = None
            if not self.holds_any_in(tx, scope):
                chain = _Chain(secrets.randbits(63), ())  # the scope had none
                _drop_parts(tx, "scope = ?", [scope])  # (another chain's, that died)
        written = chain is not None and self._write_segment(tx, scope, fingerprints, chain)
        if written:
            assert chain is not None
            chain = _Chain(chain.token, chain.hashes, (*chain.identifiers, written))
        else:
            rows = _per_person(fingerprints)  # (on the writer thread)
            inserted = tx.upsert_table(
                "cio_fingerprints", ["identifier"], rows, {"scope": scope}, new=True
            )
            if chain is not None and (chain.identifiers or not inserted):
                chain = None  # (a person in a segment of the chain may be among them)
            elif chain is not None:
                chain = _Chain(chain.token, chain.hashes, chain.identifiers, per_person=True)
        if chain is None:
            _drop_copies(tx, "scope = ?", [scope])
            return None
        tx.execute(
            "UPDATE {cio_source_hashes} SET size = ?, hashes = NULL WHERE scope = ?",
            [chain.token, scope],
        )
        column = fingerprints.column("source_hash").combine_chunks().drop_null()
        part = _as_copy(column)
        if part:  # written here, behind the load: its end only marks the copy kept
            row = pa.table(
                {
                    "part": pa.array([len(chain.hashes)], pa.int64()),
                    "mark": pa.array([_parts_mark(chain.token)], pa.binary()),
                    "hashes": pa.array([part], pa.binary()),
                }
            )
            tx.upsert_table(
                "cio_source_hash_parts", ["part"], row, {"scope": scope}, new=True, blobs=True
            )
        return _Chain(chain.token, (*chain.hashes, part), chain.identifiers, chain.per_person)

    @staticmethod
    def holds_any_in(tx: Any, scope: str) -> bool:
        """`holds_any`, in a transaction."""
        return bool(
            tx.execute(
                "SELECT 1 FROM {cio_fingerprints} WHERE scope = ? UNION ALL"
                " SELECT 1 FROM {cio_fingerprint_segments} WHERE scope = ? LIMIT 1",
                [scope, scope],
            )
        )

    def _write_segment(
        self, tx: Any, scope: str, fingerprints: pa.Table, chain: _Chain
    ) -> pa.Array | None:
        """Write a unit of a chain (`_Chain`: the scope held nobody else) as one segment
        (`cio_destination.state.segments`), unless one of its people is in a segment the chain
        wrote, the chain's segments hold `CHAIN_MOST` people, or the chain wrote a unit a row
        per person (`_Chain.per_person`); its identifiers,
        sorted, or None (not written)."""
        if chain.per_person:
            return None
        if sum(len(i) for i in chain.identifiers) + len(fingerprints) > CHAIN_MOST:
            return None
        identifiers, _, keys, body = encoded(fingerprints)
        if overlaps(chain.identifiers, identifiers):
            return None
        self._segments.write(tx, scope, len(identifiers), keys, body)
        return identifiers

    def keep_copy(self, scope: str) -> None:
        """Make the scope's copy of its source-row hashes from the fingerprints kept, unless
        the one there is known to be current: at the end of a load that completed, when no
        other run writes the scope (one run of a pipeline at a time). A copy kept holds the
        hashes kept (every write drops it), so it stays; one dropped only by this process's
        chain of writes (`_Chain`) is made of the hashes they wrote, not read back."""
        store = self._db  # the writes behind are done
        with self._copy_lock:
            found = self._units.pop(scope, None)
            if scope in self._copied:
                # the units this load found held, in place of those kept, unless the same
                # (only a load's own are kept: read in another order each load, they would grow)
                if found is not None and found[1] and found[1] != found[2]:
                    with store.transaction() as tx:
                        self._keep_units(tx, scope, found[0], found[1])
                return
            with store.transaction() as tx:
                tx.execute(
                    "INSERT INTO {cio_source_hashes} (scope, size, hashes) VALUES (?, NULL, NULL)"
                    " ON CONFLICT (scope) DO NOTHING",
                    [scope],
                )
                # PostgreSQL: after any write of the scope in flight (`_drop_copy` and
                # `_write_new` lock this row first), so the statement that makes the copy,
                # with a snapshot of its own, reads it
                lock = " FOR UPDATE" if store.arrays else ""
                found = tx.execute(
                    "SELECT size, hashes IS NULL FROM {cio_source_hashes} WHERE scope = ?" + lock,
                    [scope],
                )
                size, dropped = found[0]
                with self._chains_lock:
                    chain = self._chains.pop(scope, None)
                    token, units = self._chain_units.pop(scope, (None, []))
                if dropped and chain is not None and size == chain.token:  # made of the chain
                    _mark_parts(tx, scope, chain.token, sum(map(len, chain.hashes)))
                    if units and token == chain.token:  # each unit's hashes are the copy's
                        digest = copy_digest(b"".join(chain.hashes))
                        self._keep_units(tx, scope, digest, units)
                elif dropped:  # (a copy kept holds the hashes kept)
                    self._make_copy(tx, scope, server=store.arrays)
            self._copied.add(scope)

    def _make_copy(self, tx: Any, scope: str, *, server: bool) -> None:
        """Make the scope's copy from its fingerprints, by the server in one statement
        (PostgreSQL) or read back here (always, where the scope has segments: the people with
        a row of their own hide their entries in segments)."""
        _drop_parts(tx, "scope = ?", [scope])  # (a chain's that died: its mark is gone)
        if self._segments.held(InTransaction(tx), "scope = ?", [scope]):
            rows = tx.execute(
                "SELECT identifier, source_hash FROM {cio_fingerprints} WHERE scope = ?", [scope]
            )
            own = pa.array([row[0] for row in rows], pa.string())
            mine = pa.array([row[1] for row in rows], pa.int64()).drop_null()
            theirs = self._segments.source_hashes(InTransaction(tx), scope, own)
            _set_copy(tx, scope, _as_copy(pa.concat_arrays([mine, theirs])))
            return
        if server:
            tx.execute(
                "UPDATE {cio_source_hashes} SET (size, hashes) = (SELECT count(*),"
                " COALESCE(string_agg(int8send(source_hash), ''::bytea), ''::bytea)"
                " FROM {cio_fingerprints} WHERE scope = ? AND source_hash IS NOT NULL)"
                " WHERE scope = ?",
                [scope, scope],
            )
            return
        rows = tx.execute(
            "SELECT source_hash FROM {cio_fingerprints} WHERE scope = ?"
            " AND source_hash IS NOT NULL",
            [scope],
        )
        hashes = array("q", (row[0] for row in rows))
        if sys.byteorder == "little":
            hashes.byteswap()
        _set_copy(tx, scope, hashes.tobytes())

    def _touch(self, scope: str | None, identifiers: Any) -> None:
        """Tell the loads watching `scope` (None: every scope) of written or dropped people."""
        with self._lock:
            watching = [k for k, s in self._scopes.items() if scope is None or s == scope]
        if not watching:
            return
        if isinstance(identifiers, pa.Array | pa.ChunkedArray):
            identifiers = identifiers.to_pylist()
        for kept in watching:
            kept.touch(identifiers)

    def fingerprints_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, Fingerprint]:
        """The attribute hashes are parsed lazily: most people are settled by the row hash."""
        store = self._db
        if store.arrays:  # one index probe per identifier, whatever the planner's statistics
            found = store.read(
                "SELECT k.identifier, f.row_hash, f.attributes FROM unnest(?::text[]) AS"
                " k(identifier) CROSS JOIN LATERAL (SELECT row_hash, attributes FROM"
                " {cio_fingerprints} WHERE scope = ? AND identifier = k.identifier OFFSET 0) f",
                [list(identifiers), scope],
            )
        else:
            found = store.read_in(
                "SELECT identifier, row_hash, attributes FROM {{cio_fingerprints}}"
                " WHERE scope = ? AND identifier IN ({marks})",
                [scope],
                identifiers,
            )
        kept = {
            identifier: _LazyFingerprint(row_hash, blob) for identifier, row_hash, blob in found
        }
        if len(kept) < len(identifiers):  # the others' may be in segments
            missing = [i for i in identifiers if i not in kept]
            for identifier, row_hash, blob in self._segments.fingerprints_of(store, scope, missing):
                kept[identifier] = _LazyFingerprint(row_hash, blob)
        return kept

    def holds_any(self, scope: str) -> bool:
        with self._db.transaction() as tx:
            return self.holds_any_in(tx, scope)

    def source_hashes_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        store = self._db
        own = dict(
            store.read_in(
                "SELECT identifier, source_hash FROM {{cio_fingerprints}} WHERE scope = ?"
                " AND identifier IN ({marks})",
                [scope],
                identifiers,
            )
        )
        known = {i: h for i, h in own.items() if h is not None}
        if len(own) < len(identifiers):  # those with no row of their own: in segments?
            missing = [i for i in identifiers if i not in own]
            known.update(self._segments.source_hashes_of(store, scope, missing))
        return known

    def changed_sources(self, scope: str, pairs: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        store = self._db
        if not store.arrays:
            known = self.source_hashes_of(scope, [identifier for identifier, _ in pairs])
            return {(i, h) for i, h in pairs if known.get(i) != h}
        # compared by the database: only what changed comes back, with whether the person
        # has a row of their own (else their segment's entry, if any, is theirs)
        identifiers = [i for i, _ in pairs]
        hashes = ",".join(str(h) for _, h in pairs)
        if any("\n" in i for i in identifiers):  # as an array of texts, each adapted
            keys, given = "?::text[]", [identifiers, hashes]
        else:  # as one text, split by the database: about half the time
            keys, given = "string_to_array(?, E'\\n')", ["\n".join(identifiers), hashes]
        found = store.read(
            # one index probe per pair: a join would read the whole table's scope
            "SELECT k.identifier, k.source_hash, f.own, EXISTS (SELECT 1 FROM"
            f" {{cio_fingerprint_segments}} WHERE scope = ?) FROM unnest({keys},"
            " string_to_array(?, ',')::bigint[]) AS k(identifier, source_hash)"
            " LEFT JOIN LATERAL (SELECT true AS own, f.source_hash FROM {cio_fingerprints} f"
            " WHERE f.scope = ? AND f.identifier = k.identifier OFFSET 0) f ON true"
            " WHERE k.source_hash IS DISTINCT FROM f.source_hash",
            [scope, *given, scope],
        )
        changed = {(i, h) for i, h, own, _ in found if own}
        others = [(i, h) for i, h, own, _ in found if not own]
        if others and found[0][3]:  # the scope has segments
            known = self._segments.source_hashes_of(store, scope, [i for i, _ in others])
            others = [(i, h) for i, h in others if known.get(i) != h]
        return changed.union(others)

    def remember(self, scope: str, fingerprints: Mapping[str, Fingerprint]) -> None:
        if not fingerprints:
            return
        rows = [
            (scope, k, v["r"], orjson.dumps(v["a"]), v.get("s")) for k, v in fingerprints.items()
        ]
        store = self._db
        self._before_write(scope)
        with store.transaction() as tx:
            self._drop_copy(tx, scope)
            keys = ("scope", "identifier")
            tx.upsert("cio_fingerprints", self._COLUMNS, keys, rows, distinct=True)  # a dict's
        self._touch(scope, fingerprints)

    def remember_table(
        self, scope: str, fingerprints: pa.Table, *, unit: bytes | None = None
    ) -> None:
        """Written behind: the write runs on a helper thread while the caller goes on, and
        anything that reads or writes fingerprints next waits for it first (`flush`)."""
        if not len(fingerprints):
            return

        def write() -> None:
            if not self._store.arrays:
                rows = _per_person(fingerprints)
                with self._store.transaction() as tx:
                    self._drop_copy(tx, scope)
                    tx.upsert_table("cio_fingerprints", ["identifier"], rows, {"scope": scope})
                return
            with self._store.transaction() as tx:  # people with no fingerprint when diffed
                chain = self._write_new(tx, scope, fingerprints)
            with self._chains_lock:  # once committed
                if chain is None:
                    self._chains.pop(scope, None)
                else:
                    self._chains[scope] = chain
                    self._chain_unit(scope, chain.token, unit)

        self._touch(scope, fingerprints.column("identifier"))
        self._before_write(scope)
        store = self._db  # the writes before this one are done
        with self._lock:
            self._writing.append(_writer(store).submit(write))

    def _chain_unit(self, scope: str, token: int, unit: bytes | None) -> None:
        """Note the unit a write of the chain `token` wrote whole (under `_chains_lock`)."""
        known = self._chain_units.get(scope)
        if known is None or known[0] != token:
            known = self._chain_units[scope] = (token, [])
        if unit is not None:
            known[1].append(unit)

    def flush(self) -> None:
        with self._lock:
            writing, self._writing = self._writing, []
        errors = [w.exception() for w in writing]  # each waited for, in the order given
        for error in errors:
            if error is not None:
                raise error

    @property
    def _db(self) -> StateStore:
        """The store, once the writes behind (if any) are done. Their failures are `flush`'s
        to raise, to the job that wrote them: a read on another thread (the prefetch of kept
        hashes, whose result may go unused) must not take them."""
        with self._lock:
            writing = list(self._writing)
        for future in writing:
            future.exception()  # waits; raises nothing
        return self._store

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        if not identifiers:
            return
        store = self._db
        self._before_write(scope)
        with store.transaction() as tx:
            self._drop_copy(tx, scope)
            tx.delete_in("cio_fingerprints", "scope = ?", [scope], "identifier", identifiers)
            self._segments.remove(tx, "scope = ?", [scope], identifiers)
        self._touch(scope, identifiers)

    def erase(self, identifiers: Sequence[str]) -> None:
        """Drop these people's fingerprints from every table of the pipeline (an erasure)."""
        where, params = pipeline_scopes(self._pipeline)
        store = self._db
        with self._copy_lock, store.transaction() as tx:
            # first: no copy of the pipeline's hashes is left (one may hold theirs), and the
            # copies' rows locked, as every write and forget of a scope locks its row first,
            # so a rewrite of a segment by any of them is over before this reads the segments
            _drop_copies(tx, where, params)
            tx.delete_in("cio_fingerprints", where, params, "identifier", identifiers)
            self._segments.remove(tx, where, params, identifiers)
            for scope in set(self._drops) | self._copied:  # a read it overtook is not current
                self._drops[scope] = self._drops.get(scope, 0) + 1
            self._copied.clear()
        self._touch(None, identifiers)
