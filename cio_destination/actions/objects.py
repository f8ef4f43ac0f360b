"""`object_identify` and `object_delete`: an object (a company, an account, ...) created or
updated with the row's attributes, or deleted."""

from __future__ import annotations

from typing import Any

from cio_destination.actions.rows import RowReader
from cio_destination.actions.spec import OBJECT_KEYS, OBJECT_REQUIREMENTS, Action
from cio_destination.entries import Row


def object_identify_op(reader: RowReader, row: Row, dropped: list[str] | None) -> dict[str, Any]:
    """The row builder of `object_identify`: the object and its attributes."""
    op: dict[str, Any] = {
        "type": "object",
        "action": "identify",
        "identifiers": reader.object_identifiers(row),
    }
    attributes = reader.object_attributes(row)
    if attributes:
        op["attributes"] = attributes
    return op


def object_delete_op(reader: RowReader, row: Row, dropped: list[str] | None) -> dict[str, Any]:
    """The row builder of `object_delete`: the object, and nothing else."""
    return {"type": "object", "action": "delete", "identifiers": reader.object_identifiers(row)}


ACTIONS = (
    Action(
        name="object_identify",
        keys=OBJECT_KEYS | {"attributes", "clear_nulls", "json_columns"},
        requires=OBJECT_REQUIREMENTS,
        build=object_identify_op,
        row_key=("object_id",),
    ),
    Action(
        name="object_delete",
        keys=OBJECT_KEYS,
        requires=OBJECT_REQUIREMENTS,
        build=object_delete_op,
        row_key=("object_id",),
    ),
)
