"""Change detection for identify tables (`changes_only=True`): send only what changed.

For every person Customer.io accepted, a fingerprint is kept: a 64-bit hash of each mapped
attribute's value. The next time the person comes by, only attributes whose hash differs are
sent, an attribute that became empty is cleared on purpose, and a person with no change is not
sent at all. A fingerprint is written only after Customer.io accepted the operation, so a
rejected or failed send is tried again in full next time.

Fingerprints live in the pipeline's local state, or in any SQL database given by URL
(`fingerprints_url`), so runners with no persistent disk keep them (see
`cio_destination.state.fingerprints`). `cio_destination.diff.Diff` runs this for each call and
remembers the fingerprints of what Customer.io accepted.

Each hash has a row form and a column form, side by side here: `only_changes` diffs entries one
by one (dict rows, and people with a fingerprint); `cio_destination.diff.columnar` computes the
fingerprints of a whole Arrow block of new people with the column forms, the same numbers.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from cio_destination.diff.checksums import crc32_adler32
from cio_destination.entries import Entry
from cio_destination.state.fingerprints import Fingerprint, Fingerprints

# The whole-operation hash of a fingerprint settles the common case (nothing changed) with one
# hash per row; the attribute hashes are computed only for people new or changed. It is XXH3-64
# (blake2b-64 before 2026-12-02): a hash stored by an older version no longer matches, so that
# person's attributes are compared one by one, found unchanged and nothing is sent (the hash is
# refreshed, `Changes.pending_only`). It is never compared anywhere else: Arrow rows whose
# source did not change are settled by their source-row hash before it is looked at.


def _hash(data: bytes) -> int:
    number = xxhash.xxh3_64_intdigest(data)
    return number - (1 << 64) if number >> 63 else number  # read as signed


def operation_hashes(operations: Iterable[bytes]) -> pa.Array:
    """The column form of `_hash`: the whole-operation hash of each of `operations`, from
    each hash's 8 bytes (big-endian), not a Python int per operation."""
    digests = np.frombuffer(b"".join(map(xxhash.xxh3_64_digest, operations)), ">u8")
    return pa.array(digests.astype(np.uint64).view(np.int64))


def value_hash(value: Any) -> int:
    """A stable 64-bit hash of one attribute value (crc32 and adler32 of its JSON, side by side)."""
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return (zlib.crc32(data) << 32 | zlib.adler32(data)) - (1 << 63)


DISTINCT_SAMPLE = 4_096
"""The values `value_hashes` looks at to tell a column of mostly distinct values (enough to
see the repeats of a column of a thousand distinct values, a count of logins)."""


def value_hashes(
    texts: pa.Array | tuple[pa.Array, ...],
    *,
    around: tuple[str, str] = ("", ""),
) -> pa.Array:
    """The column form of `value_hash`, given each value's JSON as `value_hash` writes it (null:
    no value, no hash), or the part of it between `around` (a string's quotes), in one column
    or in pieces (a tuple of columns: a float's text and its ".0"; joined first, as one column
    sums faster than its pieces, and a null in any piece is a null). Where values repeat, each
    distinct value is hashed (and written) once; a column whose first values are mostly
    distinct (emails, names) is hashed value by value, with no hash table of its values (which
    cost as much again as the hashes)."""
    affixes = (around[0].encode(), around[1].encode())
    if isinstance(texts, tuple):  # one column to sum: a quarter less time than the pieces
        texts = pc.binary_join_element_wise(*texts, "")
    sample = texts.slice(0, DISTINCT_SAMPLE)
    if 2 * pc.count_distinct(sample, mode="all").as_py() > len(sample):
        return _value_hashes_of(texts, affixes)
    encoded = pc.dictionary_encode(texts)
    hashes = _value_hashes_of(encoded.dictionary, affixes)
    return pc.take(hashes, encoded.indices)


def _value_hashes_of(texts: pa.Array, around: tuple[bytes, bytes]) -> pa.Array:
    """`value_hash` of each JSON text of `texts` (between `around`), as crc32 and adler32 (a
    null: null), all at once (`crc32_adler32`)."""
    crc, adler = crc32_adler32(texts, around=around)
    # minus 2**63, modulo 2**64: the top bit flipped, read as signed
    joined = (crc.astype(np.uint64) << np.uint64(32)) | adler
    signed = (joined ^ np.uint64(1 << 63)).view(np.int64)
    nulls = texts.is_null().to_numpy(zero_copy_only=False) if texts.null_count else None
    return pa.array(signed, mask=nulls)


@dataclass
class Changes:
    """The operations to send after the diff, and what to remember once they are accepted."""

    entries: list[Entry]
    unchanged: int = 0
    pending: dict[int, tuple[str, Fingerprint]] = field(default_factory=dict)
    pending_only: dict[str, Fingerprint] = field(default_factory=dict)
    """People whose attributes did not change though their operation did (e.g. a new timestamp):
    nothing is sent, and their whole-operation hash is refreshed."""

    def accepted(self, delivered: Iterable[Entry]) -> dict[str, Fingerprint]:
        """Fingerprints to save for the entries Customer.io accepted."""
        saved = dict(self.pending_only)
        for entry in delivered:
            found = self.pending.get(id(entry))
            if found is not None:
                saved[found[0]] = found[1]
        return saved


def only_changes(
    entries: Sequence[Entry],
    attribute_columns: Sequence[str],
    fingerprints: Fingerprints,
    scope: str,
    source_hashes: Mapping[str, int] | None = None,
    *,
    first_sync: bool = False,
    previous: Mapping[str, Fingerprint] | None = None,
) -> Changes:
    """Keep, per identify entry, only the attributes that differ from the stored fingerprint.

    Identify entries carry the identifier as their `row_key`. `source_hashes` (Arrow input) are
    kept with the fingerprints, to skip unchanged rows before mapping next time. `first_sync`:
    the scope has no fingerprint yet, so none is looked up; `previous`: the entries'
    fingerprints, already read.
    """
    sources = source_hashes or {}
    if first_sync:
        previous = {}
    elif previous is None:  # (none to look up: no round trip)
        keys = [entry.row_key for entry in entries]
        previous = fingerprints.fingerprints_of(scope, keys) if keys else {}
    mapped = set(attribute_columns)
    changes = Changes(entries=[])
    for entry in entries:
        identifier = entry.row_key
        row_hash = _hash(entry.data)
        before = previous.get(identifier)
        if before is not None and before.get("r") == row_hash:
            changes.unchanged += len(entry.rows)
            source = sources.get(identifier)
            if source is not None and before.get("s") != source:
                changes.pending_only[identifier] = {
                    "r": row_hash,
                    "a": before.get("a"),
                    "s": source,
                }
            continue
        op = orjson.loads(entry.data)
        attributes = op.get("attributes", {})
        current = {name: value_hash(value) for name, value in attributes.items()}
        if before is not None:
            seen = before.get("a", {})
            changed = {k: v for k, v in attributes.items() if seen.get(k) != current[k]}
            for name in seen:
                if name in mapped and name not in attributes:
                    changed[name] = ""  # the value became empty: clear it on purpose
            if not changed:
                changes.unchanged += len(entry.rows)
                changes.pending_only[identifier] = {
                    "r": row_hash,
                    "a": current,
                    "s": sources.get(identifier),
                }
                continue
            op["attributes"] = changed
            entry = Entry(orjson.dumps(op), entry.row_key, entry.rows, entry.key)
        changes.entries.append(entry)
        changes.pending[id(entry)] = (
            identifier,
            {"r": row_hash, "a": current, "s": sources.get(identifier)},
        )
    return changes
