"""`arrow_json.join_pieces`: its fast way (`interleaved`, one `take`) writes what Arrow's
element-wise join writes, byte for byte, and is the way it takes."""

from __future__ import annotations

from array import array

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination import arrow_json
from cio_destination.arrow_json import interleaved, join_pieces

TEXTS = st.text(alphabet=st.sampled_from(["a", "ü", "✓", '"', "\\", "\n", ",", "{"]), max_size=4)


def by_arrow(pieces: list) -> list:
    """What Arrow's element-wise join writes (the simple way)."""
    return pc.binary_join_element_wise(*pieces, "", null_handling="skip").to_pylist()


@st.composite
def piece_lists(draw: st.DrawFn) -> list:
    """Constants and string columns of one length (nulls, slices of longer arrays), at least
    one of each, as `join_pieces` is given them."""
    rows = draw(st.integers(1, 6))
    pieces: list = []
    for _ in range(draw(st.integers(2, 7))):
        if draw(st.booleans()):
            pieces.append(draw(TEXTS))
            continue
        before = draw(st.integers(0, 2))
        values = draw(st.lists(st.none() | TEXTS, min_size=rows + before, max_size=rows + before))
        pieces.append(pa.array(values, pa.string()).slice(before, rows))
    if all(isinstance(piece, str) for piece in pieces):
        pieces.append(pa.array([draw(TEXTS)] * rows, pa.string()))
    if not any(isinstance(piece, str) for piece in pieces):
        pieces.insert(draw(st.integers(0, len(pieces))), draw(TEXTS))
    return pieces


@given(pieces=piece_lists())
def test_the_interleaved_pieces_are_arrows_element_wise_join(pieces: list):
    joined = interleaved(pieces)

    assert joined is not None  # the fast way applies to every such list
    joined.validate(full=True)
    assert joined.null_count == 0
    assert joined.to_pylist() == by_arrow(pieces)


@given(pieces=piece_lists())
def test_join_pieces_takes_the_fast_way(pieces: list):
    expected = by_arrow(pieces)
    with pytest.MonkeyPatch.context() as patch:  # the element-wise join is not called
        patch.setattr(arrow_json.pc, "binary_join_element_wise", None)
        joined = join_pieces(pieces)

    assert joined.to_pylist() == expected


@pytest.mark.parametrize(
    "pieces",
    [
        ["[", pa.array(["a", None], pa.large_string()), "]"],  # another offset width
        ["[", pa.array(["a", "b"]), pa.array(["c"]), "]"],  # columns of different lengths
        ["[", pa.chunked_array([["a"], ["b"]]), "]"],  # not one array
        ["[", pa.array([1, 2]), "]"],  # not text
    ],
)
def test_the_fast_way_does_not_take_other_pieces(pieces: list):
    assert interleaved(pieces) is None


def test_pieces_the_fast_way_does_not_take_are_joined_by_arrow():
    pieces = ["[", pa.chunked_array([["a", None], ["b"]]), "]"]

    assert join_pieces(pieces).to_pylist() == ["[a]", "[]", "[b]"]


def test_rows_of_no_bytes_at_all_are_empty_texts():
    pieces = ["", pa.array([None, None], pa.string()), ""]
    joined = interleaved(pieces)

    assert joined is not None
    assert joined.to_pylist() == ["", ""] == by_arrow(pieces)


def test_a_layout_is_kept_for_the_next_unit_and_the_kept_ones_stay_few():
    arrow_json._layouts.clear()
    for rows in range(1, 8):
        interleaved(["{", pa.array(["x"] * rows), "}"])
        interleaved(["{", pa.array(["x"] * rows), "}"])
        assert len(arrow_json._layouts) <= 4
    assert ((False, True, False), 7) in arrow_json._layouts


def test_a_null_whose_slot_spans_bytes_leaves_them_out():
    """Arrow lets a null's slot span bytes of the data buffer (kernels may leave them): the
    join leaves them out, and so does the take."""
    offsets = pa.py_buffer(array("i", [0, 1, 3]).tobytes())
    column = pa.Array.from_buffers(
        pa.string(), 2, [pa.py_buffer(bytes([0b01])), offsets, pa.py_buffer(b"abc")]
    )
    pieces = ["[", column, "]"]

    assert interleaved(pieces).to_pylist() == ["[a]", "[]"] == by_arrow(pieces)
