"""One unambiguous byte encoding for the hashes and ids the destination derives from data.

Joining texts with a separator byte makes two different lists read the same as soon as a value
holds that byte (`["a\\x1fb", "c"]` and `["a", "b\\x1fc"]`). Here every part is written behind its
byte length instead, and a missing part (a null) as `-`, which no length starts with: the bytes
are a prefix-free code, so two different lists of parts never give the same bytes, whatever
bytes the parts hold. `frame` and `frame_column` write the same bytes, for one list of parts and
for a column of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import value_bytes

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


def frame_texts(texts: Any) -> bytes:
    """`frame(values)` of a whole string Arrow column, in a few kernel calls."""
    if not len(texts):
        return b""
    framed = frame_column(texts)
    if isinstance(framed, pa.ChunkedArray):
        framed = framed.combine_chunks()
    return value_bytes(framed)  # the framed values lie back to back in its data buffer
