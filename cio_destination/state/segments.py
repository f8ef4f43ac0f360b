"""Fingerprints of a first sync kept a unit at a time: one row per unit, not one per person.

A first `changes_only` sync on PostgreSQL writes each unit's fingerprints as one **segment**
(`cio_fingerprint_segments`, see `StoredFingerprints._write_new` for when): the server writes
one row with two blobs per unit, instead of one row, one primary-key entry and their WAL per
person. A segment holds its people sorted by identifier, in two Arrow IPC streams: `keys`
(identifier and source-row hash: what lookups and bulk reads of source-row hashes read) and
`fingerprints` (operation hash and attribute hashes, in the same order: read only for the
segments a lookup found people in). The attribute hashes are kept as the columnar diff gives
them, an int64 column per attribute (null: the person has no value), not as the JSON a row per
person holds: that JSON is written only for the people read back (`attributes_json`). Arrow
compresses each stream's buffers (zstd, `write_options`; a reader of any release decompresses
them as it reads), and PostgreSQL stores them as they come (`STORAGE EXTERNAL`: it does not try
again). At 1M people of the benchmark's table the segments came to 41 MB instead of 82 MB: the
server's CPU in the load fell by about half (0.4-0.5 s to 0.22-0.25 s) for 2-3 ms of this
process's a segment; sorted identifiers and the hashes of an attribute of few values shrink
most, a column of distinct values (its hashes) not at all.

A person's fingerprint is their row in `cio_fingerprints` if there is one, else their entry in
a segment: a later load's writes go to `cio_fingerprints` and hide the segment's entry, which
every read honours. No person is in two segments (the writer checks a unit against the
segments written before it). Segments never change: a forget or an erasure writes the segment
anew without those people, under a new id, and deletes the old one, so the keys of a segment
read once are kept by (scope, segment) and never read again.
"""

from __future__ import annotations

import functools
import secrets
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import comma_listed, join_pieces, json_key
from cio_destination.exceptions import CustomerioTransientError

TABLE = """CREATE TABLE IF NOT EXISTS {cio_fingerprint_segments} (
    scope TEXT NOT NULL,
    segment BIGINT NOT NULL,
    size BIGINT NOT NULL,
    keys {external_blob} NOT NULL,
    fingerprints {external_blob} NOT NULL,
    PRIMARY KEY (scope, segment)
)"""
"""One row per segment: `size` people, their `keys` and `fingerprints` (Arrow IPC streams of
`KEYS` and `BODY`, row for row, sorted by identifier)."""
KEYS = pa.schema([("identifier", pa.string()), ("source_hash", pa.int64())])
BODY = ("row_hash", "attributes")
"""The columns of a segment's `fingerprints`: `row_hash` (int64) and `attributes`, the
attribute hashes as the unit's fingerprints hold them (a struct of int64 fields, one per
attribute, see `attributes_json`)."""
CHAIN_MOST = 2_000_000
"""The most people one chain of a first sync's writes keeps in segments: a unit is checked
against every segment the chain wrote before it (no person in two), a cost that grows with
the square of the people; the people after these are written one row each, as any write."""
_SEARCH_STEPS = 16
"""A binary search costs about this many times a hash table's work per identifier looked for
(its steps, each a few kernels), against one per identifier of the segment: `positions` takes
the hash table for more than a sixteenth of a segment's people."""
_CACHED_MOST = 4_000_000
"""The most people whose keys a process keeps read (past it, a read lets go of the keys of
segments it did not ask for)."""

_READS_MOST = 8
"""The most times a read is made again because a segment it listed was rewritten meanwhile."""


def _rewritten() -> CustomerioTransientError:
    """Segments were rewritten while a read or a rewrite of them was on, every time it was
    tried: the job is tried again (dlt retries it; a later run resumes the package)."""
    return CustomerioTransientError(
        "changes_only: fingerprint segments in the state store were rewritten while read; retrying"
    )


class Reader(Protocol):
    """What segments are read through: a store (`StateStore`), or a transaction
    (`InTransaction`)."""

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query."""
        ...

    def read_blobs(self, sql: str, params: Sequence[Any]) -> list[tuple[int, bytes]]:
        """The rows of one query of an integer and a blob."""
        ...


class InTransaction:
    """A transaction, as a `Reader`."""

    def __init__(self, tx: Any) -> None:
        self.tx = tx

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.tx.execute(sql, params)  # type: ignore[no-any-return]

    def read_blobs(self, sql: str, params: Sequence[Any]) -> list[tuple[int, bytes]]:
        return [(int(key), bytes(blob)) for key, blob in self.tx.execute(sql, params)]


def encoded(fingerprints: pa.Table) -> tuple[pa.Array, pa.Array, pa.Buffer, pa.Buffer]:
    """A unit's fingerprints (`FINGERPRINT_SCHEMA`, distinct identifiers) as a segment: its
    identifiers and source-row hashes sorted by identifier, and its two blobs."""
    ordered = fingerprints
    given = _whole(ordered.column("identifier"))
    rows = len(given)
    if rows > 1 and not pc.all(pc.less(given.slice(0, rows - 1), given.slice(1))).as_py():
        ordered = ordered.take(pc.sort_indices(given))  # (a table read in key order is not)
    columns = {name: _whole(ordered.column(name)) for name in ordered.column_names}
    keys = pa.table([columns[n] for n in KEYS.names], schema=KEYS)
    body = pa.table([columns[n] for n in BODY], names=list(BODY))
    return columns["identifier"], columns["source_hash"], _stream(keys), _stream(body)


def overlaps(earlier: Sequence[pa.Array], identifiers: pa.Array) -> bool:
    """Whether any of `identifiers` (sorted) is among the `earlier` segments' (each sorted);
    a segment whose range misses theirs is not looked in."""
    if not len(identifiers):
        return False
    low, high = identifiers[0].as_py(), identifiers[len(identifiers) - 1].as_py()
    near = [e for e in earlier if len(e) and e[0].as_py() <= high and low <= e[-1].as_py()]
    if not near:
        return False
    found = pc.is_in(pa.chunked_array(near, pa.string()), value_set=identifiers)
    return bool(pc.any(found).as_py())


def attributes_json(attributes: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Per person, the JSON of their attribute hashes (binary) as `remember` writes it
    (`orjson.dumps` of a fingerprint's `"a"`: `{"name":hash,...}`, no spaces, the fields in
    order, an attribute with no hash left out), from `attributes` as the columnar diff gives
    them: a struct of int64 fields, one per attribute (null: no value). JSON given (binary,
    a row per person's) is as it is."""
    if isinstance(attributes, pa.ChunkedArray):
        attributes = _whole(attributes)
    if not pa.types.is_struct(attributes.type):
        return attributes
    hashed = [
        (json_key(field.name), pc.cast(values, pa.string()), "", values.null_count > 0)
        for field, values in zip(attributes.type, attributes.flatten(), strict=True)
    ]
    if not hashed:
        return pa.array([b"{}"] * len(attributes), pa.binary())
    if any(nullable for *_, nullable in hashed):
        joined = pc.binary_join_element_wise("{", comma_listed(hashed), "}", "")
    else:  # every person has every attribute: one join
        pieces: list[Any] = ["{"]
        for index, (key, values, _, _) in enumerate(hashed):
            pieces += [("," if index else "") + key, values]
        joined = join_pieces([*pieces, "}"])
    return joined.cast(pa.binary())


def _whole(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array (its one chunk as it is: `combine_chunks` copies it)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _stream(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=write_options()) as writer:
        writer.write_table(table)
    return sink.getvalue()


@functools.cache
def write_options() -> pa.ipc.IpcWriteOptions:
    """How a segment's streams are written: zstd (Arrow's level, 1) where this pyarrow has the
    codec (every wheel on PyPI does), else uncompressed (a build without it still writes, and
    reads what it wrote); on the writer's own thread (the load's other threads have the cores).
    Made when first asked for, so a build without zstd still imports this module."""
    codec = "zstd" if _has_codec("zstd") else None
    return pa.ipc.IpcWriteOptions(compression=codec, use_threads=False)


def _has_codec(name: str) -> bool:
    return bool(pa.Codec.is_available(name))


def _blob(data: pa.Buffer) -> pa.Array:
    """A binary array of one value, `data` (its bytes not copied)."""
    offsets = pa.array([0, data.size], pa.int32()).buffers()[1]
    return pa.Array.from_buffers(pa.binary(), 1, [None, offsets, data])


def _table(blob: Any) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all().combine_chunks()


def positions(identifiers: pa.Array, asked: pa.Array) -> pa.Array:
    """Where each of `asked` is among the sorted `identifiers` (int64; null: not there): by a
    binary search made for all of them at once by Arrow kernels (a step costs a few kernels
    over `asked`), or, for many, by a hash table of `identifiers` (a cost that grows with
    them, not with the steps)."""
    size = len(identifiers)
    if not size or not len(asked):
        return pa.nulls(len(asked), pa.int64())
    inside = pc.and_(  # only those in the segment's range are looked for
        pc.greater_equal(asked, identifiers[0]), pc.less_equal(asked, identifiers[size - 1])
    )
    if not pc.any(inside).as_py():
        return pa.nulls(len(asked), pa.int64())
    if not pc.all(inside).as_py():
        found = positions(identifiers, asked.filter(inside))
        return pc.replace_with_mask(pa.nulls(len(asked), pa.int64()), inside, found)
    if len(asked) * _SEARCH_STEPS > size:
        return pc.index_in(asked, value_set=identifiers).cast(pa.int64())
    low = pa.repeat(pa.scalar(0, pa.int64()), len(asked))
    last = pa.scalar(size - 1, pa.int64())
    step = 1 << (size.bit_length() - 1)
    while step:  # the count of identifiers below each asked one
        ahead = pc.add(low, pa.scalar(step, pa.int64()))
        inside = pc.less_equal(ahead, pa.scalar(size, pa.int64()))
        probe = pc.take(identifiers, pc.min_element_wise(pc.subtract(ahead, 1), last))
        low = pc.if_else(pc.and_(inside, pc.less(probe, asked)), ahead, low)
        step >>= 1
    at = pc.min_element_wise(low, last)
    found = pc.and_(pc.less(low, size), pc.equal(pc.take(identifiers, at), asked))
    return pc.if_else(found, at, pa.scalar(None, pa.int64()))


class Segments:
    """The segments of a store's scopes, the keys of those read kept by (scope, segment)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], pa.Table] = {}
        self._cached = 0
        self._lock = threading.Lock()

    @staticmethod
    def held(reader: Reader, where: str, params: Sequence[Any]) -> list[tuple[str, int, int]]:
        """(scope, segment, size) of the segments of the scopes `where` matches."""
        rows = reader.read(
            f"SELECT scope, segment, size FROM {{cio_fingerprint_segments}} WHERE {where}",
            list(params),
        )
        return [(scope, int(segment), int(size)) for scope, segment, size in rows]

    @staticmethod
    def write(tx: Any, scope: str, size: int, keys: pa.Buffer, body: pa.Buffer) -> int:
        """Keep a segment (of people held nowhere else in the scope), in transaction `tx`
        (PostgreSQL: one binary COPY, the blobs as their bytes); its new id."""
        segment = secrets.randbits(63)
        row = pa.table(
            {
                "segment": pa.array([segment], pa.int64()),
                "size": pa.array([size], pa.int64()),
                "keys": _blob(keys),
                "fingerprints": _blob(body),
            }
        )
        tx.upsert_table(
            "cio_fingerprint_segments", ["segment"], row, {"scope": scope}, new=True, blobs=True
        )
        return segment

    def keys(
        self, reader: Reader, held: Iterable[tuple[str, int, int]]
    ) -> dict[tuple[str, int], pa.Table]:
        """The keys (`KEYS`, sorted) of these segments: kept, or read in one statement."""
        wanted = [(scope, segment) for scope, segment, _ in held]
        with self._lock:
            found = {k: self._keys[k] for k in wanted if k in self._keys}
        missing = [k for k in wanted if k not in found]
        by_scope: dict[str, list[int]] = {}
        for scope, segment in missing:
            by_scope.setdefault(scope, []).append(segment)
        for scope, listed in by_scope.items():
            marks = ",".join("?" * len(listed))
            for segment, blob in reader.read_blobs(
                "SELECT segment, keys FROM {cio_fingerprint_segments}"
                f" WHERE scope = ? AND segment IN ({marks})",
                [scope, *listed],
            ):
                found[(scope, segment)] = _table(blob)
        with self._lock:
            if self._cached > _CACHED_MOST:  # the keys asked for stay; the others go
                for key in [k for k in self._keys if k not in found]:
                    self._cached -= len(self._keys.pop(key))
            for key in missing:
                if key in found and key not in self._keys:
                    self._keys[key] = found[key]
                    self._cached += len(found[key])
        return found

    def scope_keys(self, reader: Reader, scope: str) -> dict[tuple[str, int], pa.Table]:
        """The keys of every segment of `scope`, as one state of the store: a segment listed
        but rewritten (a forget, an erasure) before its keys were read is listed again, with
        the one that replaced it (never a person missed because their segment moved)."""
        for _ in range(_READS_MOST):
            held = self.held(reader, "scope = ?", [scope])
            found = self.keys(reader, held)
            if len(found) == len(held):
                return found
        raise _rewritten()

    def forget_cached(self, gone: Iterable[tuple[str, int]]) -> None:
        """Let go of the keys of segments deleted."""
        with self._lock:
            for key in gone:
                table = self._keys.pop(key, None)
                if table is not None:
                    self._cached -= len(table)

    def found(
        self, reader: Reader, scope: str, asked: Sequence[str]
    ) -> dict[int, tuple[pa.Array, pa.Array, pa.Table]]:
        """Per segment of `scope` holding any of `asked`: those people (their positions among
        `asked`, and in the segment) and the segment's keys."""
        if not asked:
            return {}
        names = pa.array(asked, pa.string())
        hits: dict[int, tuple[pa.Array, pa.Array, pa.Table]] = {}
        for (_, segment), keys in self.scope_keys(reader, scope).items():
            at = positions(keys.column("identifier").chunk(0), names)
            if at.null_count == len(at):
                continue
            mine = pc.indices_nonzero(pc.is_valid(at))
            hits[segment] = (mine, pc.take(at, mine), keys)
        return hits

    def source_hashes_of(self, reader: Reader, scope: str, asked: Sequence[str]) -> dict[str, int]:
        """The source-row hashes the segments of `scope` keep for `asked`, where kept."""
        known: dict[str, int] = {}
        for mine, at, keys in self.found(reader, scope, asked).values():
            hashes = pc.take(keys.column("source_hash"), at).to_pylist()
            for position, found in zip(mine.to_pylist(), hashes, strict=True):
                if found is not None:
                    known[asked[position]] = found
        return known

    def fingerprints_of(
        self, reader: Reader, scope: str, asked: Sequence[str]
    ) -> list[tuple[str, int, bytes]]:
        """(identifier, operation hash, attribute hashes' JSON) of those of `asked` the
        segments of `scope` hold: only the segments holding any are read."""
        for _ in range(_READS_MOST):
            hits = self.found(reader, scope, asked)
            if not hits:
                return []
            marks = ",".join("?" * len(hits))
            rows = reader.read_blobs(
                "SELECT segment, fingerprints FROM {cio_fingerprint_segments}"
                f" WHERE scope = ? AND segment IN ({marks})",
                [scope, *hits],
            )
            if len(rows) == len(hits):
                break
            # a segment listed was rewritten (a forget, an erasure) before its body was read:
            # its people are in the one that replaced it, read again
        else:
            raise _rewritten()
        found: list[tuple[str, int, bytes]] = []
        for segment, blob in rows:
            mine, at, _ = hits[segment]
            body = _table(blob).take(at)  # the JSON of only those
            for position, row_hash, attributes in zip(
                mine.to_pylist(),
                body.column("row_hash").to_pylist(),
                attributes_json(body.column("attributes")).to_pylist(),
                strict=True,
            ):
                found.append((asked[position], row_hash, attributes))
        return found

    def source_hashes(self, reader: Reader, scope: str, hidden: pa.Array | None) -> pa.Array:
        """Every source-row hash the segments of `scope` keep, but those of the people
        `hidden` (text: they have a row of their own in `cio_fingerprints`)."""
        tables = list(self.scope_keys(reader, scope).values())
        if not tables:
            return pa.array([], pa.int64())
        keys = pa.concat_tables(tables)
        if hidden is not None and len(hidden):
            keys = keys.filter(pc.invert(pc.is_in(keys.column("identifier"), value_set=hidden)))
        return keys.column("source_hash").combine_chunks().drop_null()

    def remove(self, tx: Any, where: str, params: Sequence[Any], gone: Sequence[str]) -> None:
        """Take the people `gone` out of the segments of the scopes `where` matches, in
        transaction `tx`: each segment holding any is written anew without them (under a new
        id) and deleted."""
        reader = InTransaction(tx)
        held = self.held(reader, where, params)
        if not held or not gone:
            return
        names = pa.array(list(gone), pa.string())
        rewritten: list[tuple[str, int]] = []
        for (scope, segment), keys in self.keys(reader, held).items():
            at = positions(keys.column("identifier").chunk(0), names)
            if at.null_count == len(at):
                continue
            blob = reader.read_blobs(
                "SELECT segment, fingerprints FROM {cio_fingerprint_segments}"
                " WHERE scope = ? AND segment = ?",
                [scope, segment],
            )[0][1]
            keep = pc.invert(pc.is_in(keys.column("identifier"), value_set=names))
            kept_keys, body = keys.filter(keep), _table(blob).filter(keep)
            if not tx.execute(
                "DELETE FROM {cio_fingerprint_segments} WHERE scope = ? AND segment = ?"
                " RETURNING segment",
                [scope, segment],
            ):  # rewritten meanwhile (never, while callers lock the copy's row first)
                raise _rewritten()
            if len(kept_keys):
                self.write(tx, scope, len(kept_keys), _stream(kept_keys), _stream(body))
            rewritten.append((scope, segment))
        self.forget_cached(rewritten)
