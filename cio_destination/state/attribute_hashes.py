"""How a fingerprint's attribute hashes (`Fingerprint["a"]`, name -> 64-bit hash) are stored.

Since state layout 3, as binary: a version byte (1), the 64-bit id of the list of attribute
names (`names_id`, the names kept once per scope in `cio_fingerprint_names`), a presence bitmap
(one bit per name, in order, the lowest bit first), then each name's hash as 8 bytes, big-endian
(zeros where the bit says absent). Six attributes take 58 bytes, against about 180 as the JSON
of layout 2 (`{"name":hash,...}` with decimal hashes), which is still read as it is: a blob that
starts with `{` is JSON (`decode`), so fingerprints of an earlier release are compared as they
were kept and resend nobody.

The row form (`encode`, one fingerprint's dict) and the column form (`blobs`, a block's hash
columns) sit side by side here, and `decode` reads either back.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Mapping, Sequence

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

NAMES_METADATA = b"cio_attribute_names"
"""The key of an Arrow table's schema metadata that holds the names lists its blobs refer to
(JSON: `{names_id: [name, ...]}`), for the writer to keep beside them (`names_of_table`)."""
_VERSION = b"\x01"
_HEAD = 9  # the version byte and the names id


def names_id(names: Sequence[str]) -> int:
    """The id of a list of attribute names (XXH3-64 of its JSON, read as signed)."""
    number = xxhash.xxh3_64_intdigest(orjson.dumps(list(names)))
    return number - (1 << 64) if number >> 63 else number


def encode(hashes: Mapping[str, int]) -> tuple[int, list[str], bytes]:
    """The row form: one fingerprint's attribute hashes as their names' id, the names and the
    blob (every name present)."""
    names = list(hashes)
    ident = names_id(names)
    count = len(names)
    present = bytes([0xFF] * (count // 8) + ([(1 << count % 8) - 1] if count % 8 else []))
    blob = b"".join(
        [_VERSION, struct.pack(">q", ident), present, struct.pack(f">{count}q", *hashes.values())]
    )
    return ident, names, blob


def blobs(names: Sequence[str], hashes: Sequence[pa.Array], rows: int) -> pa.Array:
    """The column form of `encode`: per row (of `rows`), the blob of the hashes of `names`
    (one int64 column each, a null where the row has no value), built by Arrow kernels."""
    head = _VERSION + struct.pack(">q", names_id(names))
    if not hashes:
        return pa.array([head] * rows, pa.binary())
    pieces: list[pa.Array | pa.Scalar] = [pa.scalar(head, pa.binary())]
    for start in range(0, len(names), 8):  # one byte of the bitmap per 8 names
        group = hashes[start : start + 8]
        byte: pa.Array | pa.Scalar = pa.scalar((1 << len(group)) - 1, pa.uint8())
        if any(column.null_count for column in group):
            byte = pa.scalar(0, pa.uint8())
            for bit, column in enumerate(group):
                set_ = pa.scalar(1 << bit, pa.uint8())
                unset = pa.scalar(0, pa.uint8())
                byte = pc.add(byte, pc.if_else(pc.is_valid(column), set_, unset))
        pieces.append(_bytes_of(byte, rows, 1))
    for column in hashes:
        pieces.append(_bytes_of(column.fill_null(0) if column.null_count else column, rows, 8))
    return pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.binary()))


def _bytes_of(numbers: pa.Array | pa.Scalar, rows: int, size: int) -> pa.Array | pa.Scalar:
    """Integers of `size` bytes (an array of `rows`, no nulls, or a scalar) as big-endian bytes."""
    if isinstance(numbers, pa.Scalar):
        return pa.scalar(numbers.as_py().to_bytes(size, "big"), pa.binary())
    raw = pa.Array.from_buffers(
        pa.binary(size), rows, [None, numbers.buffers()[1]], offset=numbers.offset
    ).cast(pa.binary())
    return pc.binary_reverse(raw) if size > 1 and sys.byteorder == "little" else raw


def with_names(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """`table`, its blobs made by `blobs` of `names`, carrying those names for the writer."""
    listed = orjson.dumps({str(names_id(names)): list(names)})
    return table.replace_schema_metadata({NAMES_METADATA: listed})


def names_of_table(table: pa.Table) -> dict[int, list[str]]:
    """The names lists a table of blobs carries (`with_names`); none for JSON blobs."""
    listed = (table.schema.metadata or {}).get(NAMES_METADATA)
    return {int(k): v for k, v in orjson.loads(listed).items()} if listed else {}


def blob_names_id(blob: bytes) -> int | None:
    """The names id a blob refers to; None for a JSON blob (of layout 2)."""
    if bytes(blob[:1]) != _VERSION:  # (psycopg2 gives a memoryview of chars)
        return None
    return struct.unpack_from(">q", blob, 1)[0]  # type: ignore[no-any-return]


def decode(blob: bytes, names_of: Callable[[int], Sequence[str]]) -> dict[str, int]:
    """The attribute hashes of a blob (either form), given the names of a names id."""
    blob = bytes(blob)  # (psycopg2 gives a memoryview of chars, each indexed as bytes)
    ident = blob_names_id(blob)
    if ident is None:
        return orjson.loads(blob)  # type: ignore[no-any-return]
    names = names_of(ident)
    count = len(names)
    present = blob[_HEAD : _HEAD + (count + 7) // 8]
    values = struct.unpack_from(f">{count}q", blob, _HEAD + len(present))
    return {
        name: value
        for at, (name, value) in enumerate(zip(names, values, strict=True))
        if present[at >> 3] >> (at & 7) & 1
    }
