"""Pack serialized entries into `/api/v2/batch` bodies no bigger than a byte limit. Pure.

The size is checked before an entry is added, on the exact bytes that will be sent, so no body is
ever one entry over the limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

_HEAD = b'{"batch":['
_TAIL = b"]}"
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL)

T = TypeVar("T")


def body_of(entries: Sequence[bytes]) -> bytes:
    """The request body for serialized entries."""
    return _HEAD + b",".join(entries) + _TAIL


def body_size(entry_sizes: Sequence[int]) -> int:
    return ENVELOPE_BYTES + sum(entry_sizes) + max(len(entry_sizes) - 1, 0)


def pack(items: Sequence[T], sizes: Sequence[int], max_bytes: int) -> Iterator[list[T]]:
    """Split `items` (with serialized sizes) into consecutive groups whose body fits `max_bytes`.

    An item that cannot fit even alone still forms a group of its own; callers reject such entries
    before packing (Customer.io's per-entry limit is far below any body limit).
    """
    group: list[T] = []
    used = ENVELOPE_BYTES
    for item, size in zip(items, sizes, strict=True):
        extra = size + (1 if group else 0)
        if group and used + extra > max_bytes:
            yield group
            group = []
            used = ENVELOPE_BYTES
            extra = size
        group.append(item)
        used += extra
    if group:
        yield group
