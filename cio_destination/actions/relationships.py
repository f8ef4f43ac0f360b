"""`add_relationships` and `delete_relationships`: a person related to an object (a company, an
account, ...), with relationship attributes, or that relationship removed."""

from __future__ import annotations

from typing import Any

from cio_destination.actions.rows import RowReader, person_op
from cio_destination.actions.spec import (
    IDENTIFIER,
    OBJECT_KEYS,
    OBJECT_REQUIREMENTS,
    PERSON_KEYS,
    Action,
)
from cio_destination.entries import Row


def relationship_op(reader: RowReader, row: Row, dropped: list[str] | None) -> dict[str, Any]:
    """The row builder: the person's relationship to the mapping's object (with its attributes,
    where the action sends them)."""
    op = person_op(reader, row)
    op["cio_relationships"] = [reader.relationship(row, reader.object_identifiers(row))]
    return op


ACTIONS = (
    Action(
        name="add_relationships",
        keys=PERSON_KEYS | OBJECT_KEYS | {"attributes", "json_columns"},
        requires=(IDENTIFIER, *OBJECT_REQUIREMENTS),
        build=relationship_op,
        row_key=("identifier", "object_id"),
    ),
    Action(
        name="delete_relationships",
        keys=PERSON_KEYS | OBJECT_KEYS,
        requires=(IDENTIFIER, *OBJECT_REQUIREMENTS),
        build=relationship_op,
        row_key=("identifier", "object_id"),
    ),
)
