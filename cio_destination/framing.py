"""One unambiguous byte encoding for the hashes and ids the destination derives from data.

Joining texts with a separator byte makes two different lists read the same as soon as a value
holds that byte (`["a\\x1fb", "c"]` and `["a", "b\\x1fc"]`). Here every part is written behind its
byte length instead, and a missing part (a null) as `-`, which no length starts with: the bytes
are a prefix-free code, so two different lists of parts never give the same bytes, whatever
bytes the parts hold. `frame` and `frame_column` write the same bytes, for one list of parts and
for a column of them. `texts_layout` and `column_layout` tell a list of texts apart another way,
with no copy of a column's values: each value's length, then all their bytes back to back.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import value_span

NULL = b"-"


def frame(parts: Iterable[bytes | str | None]) -> bytes:
    """The parts, each behind its byte length and a colon (`3:abc`); a None as `-`."""
    out = bytearray()
    for part in parts:
        if part is None:
            out += NULL
            continue
        data = part.encode("utf-8") if isinstance(part, str) else part
        out += b"%d:" % len(data)
        out += data
    return bytes(out)


def frame_column(texts: Any) -> Any:
    """`frame([value])` of each value of a string Arrow column (a null as `-`)."""
    kind = texts.type
    lengths = pc.cast(pc.binary_length(texts), kind)
    colon, empty = pa.scalar(b":", kind), pa.scalar(b"", kind)
    return pc.binary_join_element_wise(lengths, colon, texts, empty).fill_null(
        pa.scalar(NULL, kind)
    )


class Digest(Protocol):
    """A hash being fed (`hashlib`'s)."""

    def update(self, data: bytes | memoryview, /) -> None: ...


def frame_into(digest: Digest, parts: Iterable[bytes | memoryview | None]) -> None:
    """Feed `frame(parts)` to `digest`, a part at a time (a part is never copied)."""
    for part in parts:
        if part is None:
            digest.update(NULL)
            continue
        view = memoryview(part).cast("B")
        digest.update(b"%d:" % len(view))
        digest.update(view)


def texts_layout(texts: Iterable[str]) -> tuple[bytes, bytes]:
    """Texts as two parts that tell them apart together: each one's UTF-8 byte length (int64,
    in the machine's order), and all their bytes back to back."""
    data = [text.encode("utf-8") for text in texts]
    return array("q", map(len, data)).tobytes(), b"".join(data)


def column_layout(texts: Any) -> tuple[memoryview, memoryview]:
    """`texts_layout` of a string Arrow array (a null's length as -1): views of two Arrow
    buffers, the values not copied."""
    lengths = pc.cast(pc.binary_length(texts), pa.int64()).fill_null(-1)
    start, stop = value_span(texts) if len(texts) else (0, 0)
    data = texts.buffers()[2]
    values = memoryview(data)[start:stop] if data is not None else memoryview(b"")
    return int64_view(lengths), values


def int64_view(numbers: Any) -> memoryview:
    """The bytes of an int64 Arrow array without nulls (as `array("q", ...).tobytes()`)."""
    assert numbers.type.byte_width == 8 and numbers.null_count == 0
    if not len(numbers):
        return memoryview(b"")
    return memoryview(numbers.buffers()[1])[
        numbers.offset * 8 : (numbers.offset + len(numbers)) * 8
    ]
