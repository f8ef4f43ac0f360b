"""The column form of the attribute value hash: zlib's checksums of a whole column at once.

`changes_only` keeps each attribute value's hash (crc32 and adler32 of its JSON) for good, so the
numpy sums of `cio_destination.diff.checksums` must be zlib's numbers for any bytes: empty,
unicode, values longer than the table's reach, nulls, sliced arrays, every offset width, and
values that fall on the boundary of a round of bytes.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cio_destination.diff import changes, checksums
from cio_destination.diff.checksums import LONGEST, crc32_adler32

LONG = st.tuples(st.binary(min_size=1, max_size=4), st.integers(LONGEST // 4 - 2, LONGEST)).map(
    lambda part: part[0] * part[1]
)
"""Values around `LONGEST` bytes: some summed, some too long and given to zlib."""
VALUES = st.lists(
    st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=12).map(str.encode), LONG),
    max_size=40,
)
KINDS = st.sampled_from([pa.binary(), pa.large_binary(), pa.string(), pa.large_string()])


def _as(kind: pa.DataType, values: list[bytes | None]) -> pa.Array:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pa.array(values, kind)
    texts = [None if v is None else v.decode("utf-8", "replace") for v in values]
    return pa.array(texts, kind)


AROUND = st.tuples(st.binary(max_size=3), st.binary(max_size=3))


@given(VALUES, KINDS, st.integers(0, 5), st.integers(0, 5), st.integers(1, 3 * LONGEST), AROUND)
@example(
    [b"", b"a", None, b"a" * (LONGEST + 1), b"\xff" * LONGEST], pa.binary(), 1, 0, 1, (b"", b"")
)
@example([b"", b"a" * (LONGEST - 2), b"a" * (LONGEST - 1)], pa.binary(), 0, 0, 9, (b'"', b'"'))
def test_the_sums_are_zlibs_checksums_of_each_value(
    values: list[bytes | None],
    kind: pa.DataType,
    skip: int,
    trim: int,
    at_once: int,
    around: tuple[bytes, bytes],
):
    """Whatever the bytes, the offsets' width, the slice, the bytes summed at a time (a
    round's boundary falling anywhere) and the bytes around each value (none, a string's
    quotes), the numbers are zlib's of the value between them, a null's those of no value."""
    column = _as(kind, values)
    column = column.slice(min(skip, len(column)), max(0, len(column) - skip - trim))
    crc, adler = crc32_adler32(column, around=around, at_once=at_once)
    written = [
        around[0] + (b"" if v is None else v) + around[1]
        for v in column.cast(pa.large_binary()).to_pylist()
    ]
    assert crc.tolist() == [zlib.crc32(v) for v in written]
    assert adler.tolist() == [zlib.adler32(v) for v in written]


@given(
    st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)), max_size=40)
)
def test_a_float_columns_two_pieces_hash_as_its_values(values: list[float | None]):
    """A float column's JSON in the mapping's two pieces (`float_pieces`: Arrow's text, and the
    ".0" of a whole number), joined, hashes as `value_hash` of each value, whether the values
    repeat or not."""
    from cio_destination.arrow_json import float_pieces

    for column in (values, values * 3):
        pieces = float_pieces(pa.array(column, pa.float64()))
        expected = [None if v is None else changes.value_hash(v) for v in column]
        assert changes.value_hashes(pieces).to_pylist() == expected


def test_a_column_of_another_layout_is_summed_as_its_bytes():
    """A string view (no offsets buffer) is read as the same bytes."""
    column = pa.array(["a", "", "\u00e9t\u00e9", None], pa.string_view())
    crc, adler = crc32_adler32(column)
    assert crc.tolist() == [zlib.crc32(v) for v in (b"a", b"", "\u00e9t\u00e9".encode(), b"")]
    assert adler.tolist() == [zlib.adler32(v) for v in (b"a", b"", "\u00e9t\u00e9".encode(), b"")]


JSON_VALUES = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.text(min_size=1, max_size=3).map(lambda t: t * 400),
    st.integers(-(2**63), 2**64 - 1),  # what JSON is written for
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@given(st.lists(JSON_VALUES, max_size=50), st.integers(0, 4), st.booleans())
def test_value_hashes_are_value_hash_of_each_value(values: list[Any], skip: int, repeat: bool):
    """The column form's numbers are `value_hash`'s, the scalar form kept by every release:
    short and long texts, unicode, numbers, nulls, a sliced column, repeated or distinct, and
    a string column given as its JSON bodies (the quotes around them not written)."""
    values = values * 3 if repeat else values
    texts = pa.array(
        [None if v is None else orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values],
        pa.binary(),
    ).cast(pa.string())
    texts = texts.slice(min(skip, len(texts)))
    values = values[skip:]
    expected = [None if v is None else changes.value_hash(v) for v in values]
    assert changes.value_hashes(texts).to_pylist() == expected
    if all(v is None or isinstance(v, str) for v in values):  # a string column's bodies
        bodies = pc.utf8_slice_codeunits(texts, 1, -1)
        assert changes.value_hashes(bodies, around=('"', '"')).to_pylist() == expected


def test_the_numbers_kept_by_earlier_releases_are_the_same():
    """Fingerprints are persistent state: these numbers were kept by the release before the
    column form was summed with numpy (`value_hash` of each value, one zlib call each)."""
    values = ['"a"', '"user1@example.com"', "12.5", "true", '""', '"\u00e9t\u00e9"', None]
    assert changes.value_hashes(pa.array(values)).to_pylist() == [
        -1365064997489803098,
        -4994967563039275314,
        -7815790268989374265,
        9078215117421216193,
        -5545315173022564283,
        8220265176526554001,
        None,
    ]


def test_the_column_is_hashed_at_once_and_only_a_value_too_long_by_zlib(
    monkeypatch: pytest.MonkeyPatch,
):
    """The vectorised path ran: the values are summed by one call for the column, and zlib
    hashes only the value longer than the table's reach."""
    summed: list[Any] = []
    hashed: list[int] = []

    def counted(values: pa.Array, **options: Any) -> Any:
        summed.append(len(values))
        return crc32_adler32(values, **options)

    class Zlib:
        def crc32(self, data: Any, value: int = 0) -> int:
            hashed.append(len(data))
            return zlib.crc32(data, value)

        adler32 = staticmethod(zlib.adler32)

    changes.value_hashes(pa.array(["1"]))  # (its tables made, by zlib too)
    monkeypatch.setattr(changes, "crc32_adler32", counted)
    monkeypatch.setattr(checksums, "zlib", Zlib())
    texts = pa.array([f"person {i}" for i in range(5_000)] + ["x" * LONGEST])
    hashes = changes.value_hashes(texts, around=('"', '"')).to_pylist()
    assert hashes == [changes.value_hash(t) for t in texts.to_pylist()]
    assert summed == [5_001]
    assert hashed == [1, LONGEST, 1]  # the quote before, the value, the quote after

    from cio_destination.arrow_json import float_pieces

    floats = pa.array([i / 8 for i in range(5_000)], pa.float64())
    hashes = changes.value_hashes(float_pieces(floats)).to_pylist()
    assert hashes == [changes.value_hash(v) for v in floats.to_pylist()]
    assert summed == [5_001, 5_000]  # the two pieces joined, then summed as one column
