"""`object_add_relationships` and `object_delete_relationships`: an object (a company, an account,
...) related to a person, with relationship attributes, or that relationship removed.

The object's side of `add_relationships` / `delete_relationships`: the operation is the object's
(`"type": "object"`) and names the person in `cio_relationships`, which takes an `id`, `email` or
`cio_id`. A table of memberships keyed by account reads naturally this way.
"""

from __future__ import annotations

from typing import Any

from cio_destination.actions.rows import RowReader
from cio_destination.actions.spec import (
    IDENTIFIER,
    OBJECT_KEYS,
    OBJECT_REQUIREMENTS,
    PERSON_KEYS,
    Action,
    IdentifierTypes,
)
from cio_destination.entries import Row


def object_relationship_op(
    reader: RowReader, row: Row, dropped: list[str] | None
) -> dict[str, Any]:
    """The row builder: the object's relationship to the row's person (with its attributes,
    where the action sends them)."""
    op: dict[str, Any] = {
        "type": "object",
        "action": reader.mapping.action.removeprefix("object_"),
        "identifiers": reader.object_identifiers(row),
    }
    person = {reader.mapping.identifier_type: reader.identifier(row)}
    op["cio_relationships"] = [reader.relationship(row, person)]
    return op


_REQUIRES = (*OBJECT_REQUIREMENTS, IDENTIFIER, IdentifierTypes(("id", "email", "cio_id")))

ACTIONS = (
    Action(
        name="object_add_relationships",
        keys=OBJECT_KEYS | PERSON_KEYS | {"attributes", "json_columns"},
        requires=_REQUIRES,
        build=object_relationship_op,
        row_key=("object_id", "identifier"),
    ),
    Action(
        name="object_delete_relationships",
        keys=OBJECT_KEYS | PERSON_KEYS,
        requires=_REQUIRES,
        build=object_relationship_op,
        row_key=("object_id", "identifier"),
    ),
)
