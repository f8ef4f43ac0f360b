"""Ids and hashes made from data: two different inputs never share one, whatever bytes they hold."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.entries import Entry, Rejection
from cio_destination.framing import column_layout, frame, frame_into, texts_layout
from cio_destination.state import PipelineState
from cio_destination.state.rejects import row_to_json

_parts = st.lists(st.one_of(st.none(), st.text(), st.binary()), max_size=6)


@given(_parts, _parts)
def test_different_lists_of_parts_frame_differently(one, other):
    def as_bytes(parts):
        return [p.encode() if isinstance(p, str) else p for p in parts]

    if as_bytes(one) != as_bytes(other):
        assert frame(one) != frame(other)


@given(_parts)
def test_parts_fed_to_a_hash_are_their_frame(parts):
    fed = hashlib.blake2b()
    frame_into(fed, [p.encode() if isinstance(p, str) else p for p in parts])
    assert fed.digest() == hashlib.blake2b(frame(parts)).digest()


@given(st.lists(st.text()), st.integers(0, 5), st.integers(0, 5))
def test_a_column_lays_out_as_its_values(values, start, cut):
    """Sliced or not, of either offset width, a column gives its texts' layout, no copy made."""
    stop = max(start, len(values) - cut)
    for kind in (pa.string(), pa.large_string()):
        column = pa.array(values, kind).slice(start, stop - start)
        lengths, data = column_layout(column)
        assert (bytes(lengths), bytes(data)) == texts_layout(values[start:stop])


def test_a_null_lays_out_apart_from_an_empty_text():
    nulls, empties = (column_layout(pa.array(v, pa.string())) for v in ([None], [""]))
    assert bytes(nulls[0]) != bytes(empties[0])


def _rejection(row: dict, field: str | None, reason: str = "invalid_identifier") -> Rejection:
    return Rejection(row=row, row_key="k", reason=reason, field=field, message="m")


def test_rejections_whose_parts_once_joined_alike_are_both_kept(tmp_path: Path):
    """The reject id joined its parts with \\x00, which dlt's direct naming lets a table or
    column name hold: one rejection replaced the other."""
    rejects = PipelineState.in_file(tmp_path / "state.sqlite").rejects
    row = {"uid": 1}
    rejects.record(
        "1.5",
        "t\x00invalid_identifier",
        "identify",
        [_rejection(row, "uid", reason="identifier_too_long")],
    )
    rejects.record("1.5", "t", "identify", [_rejection(row, "identifier_too_long\x00uid")])
    rejects.record("1.5", "u", "identify", [_rejection(row, None)])
    rejects.record("1.5", "u", "identify", [_rejection(row, "")])

    assert len(list(rejects.rows())) == 4


def test_reject_ids_recorded_before_stay_the_same(tmp_path: Path):
    """A batch replayed after an upgrade must replace its rejections, not add them again."""
    rejects = PipelineState.in_file(tmp_path / "state.sqlite").rejects
    row = {"uid": "x" * 200}
    rejects.record("1.5", "people", "identify", [_rejection(row, "uid")])
    rejects.record("1.5", "people", "identify", [_rejection(row, None)])

    parts = [b"1.5", b"people", b"invalid_identifier"]
    expected = {
        hashlib.blake2b(b"\x00".join([*parts, field, row_to_json(row)]), digest_size=16).hexdigest()
        for field in (b"uid", b"")
    }
    assert {r["reject_id"] for r in rejects.rows()} == expected


def test_batches_whose_keys_once_joined_alike_get_different_ids():
    """The batch id joined row keys with \x1f and followed them with the sizes and the
    rejections unframed: two different batches of one load could share an id, and the report
    kept one batch's figures for both."""
    from array import array

    from cio_destination.report import batch_id

    def rejected(row_key: str) -> Rejection:
        return Rejection(
            row={}, row_key=row_key, reason="invalid_identifier", field=None, message=""
        )

    two_entries = batch_id([[Entry(b"0123456789", "a"), Entry(b"012", "b")]], [rejected("")], None)
    # one entry whose key holds the separator, and a rejection whose key holds the bytes the
    # other batch's second size adds
    size = array("q", [3]).tobytes().decode()
    one_entry = batch_id([[Entry(b"0123456789", "a\x1fb")]], [rejected(size)], None)

    assert one_entry != two_entries
    assert batch_id([[Entry(b"0123456789", "a\x1fb")]], [rejected(size)], None) == one_entry
