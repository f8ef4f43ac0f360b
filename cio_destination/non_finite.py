"""NaN and infinity in dict rows, kept across dlt's writers so that their rows are rejected.

dlt writes dict rows to JSON files before a destination sees them (typed-jsonl, with orjson), and
JSON has no NaN or infinity: they become null, and a NULL is no value to Customer.io. An event
keyed on a NaN would collapse with its neighbours, a `changes_only` person would have the
attribute cleared. Arrow keeps them, and the mapper rejects such a row (`invalid_value`,
`invalid_event_id`, ... naming the column).

So a step on the resource (`mark_non_finite`, which `customerio_adapter` adds) notes, before dlt
writes a row, where it held a non-finite float, in a text column of this destination's own
(`NON_FINITE_COLUMN`); the mapper puts the values back (`restore_non_finite`) before anything
reads the row, and the row is decided as the same row from Arrow is. No other part of the
destination sees that column.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["NON_FINITE_COLUMN", "mark_non_finite", "note_non_finite", "restore_non_finite"]

NON_FINITE_COLUMN = "_cio_non_finite"
"""The column where a row notes its non-finite floats: `[[path, text], ...]` as JSON text, a
path being the column and the keys and indexes down to the value, the text `nan`, `inf` or
`-inf`. The mapper never sends it, and no key includes it."""


def mark_non_finite(data: Any) -> Any:
    """Add the step that notes NaN and infinity in dict rows to a dlt resource (or to each of a
    source's resources), so the destination rejects those rows instead of seeing NULLs.

    `customerio_adapter` adds it to the resources it maps; call this for resources mapped in
    config only. Arrow tables pass through as they are (they keep NaN themselves). Returns
    `data`.
    """
    resources = getattr(data, "resources", None)
    for resource in resources.values() if resources is not None else (data,):
        if not getattr(resource, "_cio_notes_non_finite", False):
            resource.add_step(note_non_finite)
            resource._cio_notes_non_finite = True
    return data


def note_non_finite(items: Any) -> Any:
    """The step: each dict row (of a page or alone) with a NaN or an infinity becomes a copy
    with a note of where, in `NON_FINITE_COLUMN` (the source's own rows stay as they are);
    other items pass as they are."""
    if type(items) is dict:
        note = _note(items)
        return items if note is None else {**items, NON_FINITE_COLUMN: note}
    if type(items) is not list:
        return items
    noted = None
    for index, item in enumerate(items):
        if type(item) is dict:
            note = _note(item)
            if note is not None:
                noted = noted or list(items)
                noted[index] = {**item, NON_FINITE_COLUMN: note}
    return items if noted is None else noted


# the types most values have, which hold no float: one set lookup each
_PLAIN = frozenset({str, int, bool, type(None), dt.datetime, dt.date, Decimal})


def _note(row: dict[str, Any]) -> str | None:
    found: list[Any] | None = None
    for name, value in row.items():
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # NaN and infinities only: x - x is 0.0 for the rest
                found = found or []
                found.append([[name], _text(value)])
        elif kind in _PLAIN:
            continue
        elif kind is dict or kind is list:
            nested = _nested(value, [name])
            if nested:
                found = (found or []) + nested
        elif isinstance(value, float) and value - value != 0.0:  # a float subclass (numpy)
            found = found or []
            found.append([[name], _text(value)])
    if not found:
        return None
    # where a column goes back among those dlt keeps (it leaves out nulls), for the row's order
    kept = [name for name, value in row.items() if value is not None]
    for item in found:
        if len(item[0]) == 1:
            item.append(kept.index(item[0][0]))
    return orjson.dumps(found).decode()


def _nested(value: Any, path: list[Any]) -> list[Any]:
    """The notes of the non-finite floats inside a container (without recursion)."""
    stack = [value]
    while stack:  # first whether there is any, without making paths
        container = stack.pop()
        for item in container.values() if type(container) is dict else container:
            kind = type(item)
            if kind is float:
                if item - item != 0.0:
                    return _nested_notes(value, path)
            elif kind is dict or kind is list:
                stack.append(item)
            elif kind not in _PLAIN and isinstance(item, (float, dict, list)):
                return _nested_notes(value, path)
    return []


def _nested_notes(value: Any, path: list[Any]) -> list[Any]:
    found = []
    stack = [(value, path)]
    while stack:
        container, at = stack.pop()
        pairs = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in pairs:
            if isinstance(item, float):
                if item - item != 0.0:
                    found.append([[*at, key], _text(item)])
            elif isinstance(item, (dict, list)):
                stack.append((item, [*at, key]))
    return found


def _text(value: float) -> str:
    return "nan" if value != value else ("inf" if value > 0 else "-inf")


def restore_non_finite(rows: Iterable[dict[str, Any]], columns: Mapping[str, Any]) -> set[str]:
    """Put back the non-finite floats the rows noted (a column where it was among the row's
    columns), and drop the notes; the columns given a value that are not among the table's
    `columns` (dlt leaves out a column that was NaN in every row, as it was null to it)."""
    unseen: set[str] = set()
    for row in rows:
        note = row.pop(NON_FINITE_COLUMN, None)
        if note is None:
            continue
        try:
            found = orjson.loads(note)
        except orjson.JSONDecodeError:
            continue  # not a note of this destination's
        placed = []
        for path, text, *position in found:
            if not _put(row, path, float(text)) or len(path) != 1:
                continue
            placed.append((position[0] if position else len(row), path[0]))
            if path[0] not in columns:
                unseen.add(path[0])
        if placed:
            _reorder(row, placed)
    return unseen


def _reorder(row: dict[str, Any], placed: list[tuple[int, str]]) -> None:
    """Put the columns given back at their places among the row's columns."""
    names = {name for _, name in placed}
    items = [(name, value) for name, value in row.items() if name not in names]
    for position, name in sorted(placed):
        items.insert(position, (name, row[name]))
    row.clear()
    row.update(items)


def _put(row: dict[str, Any], path: list[Any], value: float) -> bool:
    """Set the value at `path` in the row; False where the row has no such place."""
    target: Any = row
    try:
        for key in path[:-1]:
            target = target[key]
        if isinstance(target, dict) or (isinstance(target, list) and path[-1] < len(target)):
            target[path[-1]] = value
            return True
    except (KeyError, IndexError, TypeError):
        pass
    return False
