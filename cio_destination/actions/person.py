"""`delete`, `suppress`, `unsuppress` and `merge`: operations on a person that carry no data.

`delete` removes the person and their history; `suppress` deletes them and keeps their
identifier from coming back through later identifies; `unsuppress` allows it again. `merge`
folds the secondary person into the primary (the secondary is deleted).
"""

from __future__ import annotations

from typing import Any

from cio_destination.actions.rows import RowReader, person_op
from cio_destination.actions.spec import IDENTIFIER, PERSON_KEYS, Action, IdentifierTypes, Required
from cio_destination.entries import Row


def merge_op(reader: RowReader, row: Row, dropped: list[str] | None = None) -> dict[str, Any]:
    """The row builder of `merge`: the primary and the secondary person, and nothing else."""
    mapping = reader.mapping
    return {
        "type": "person",
        "action": "merge",
        "primary": {mapping.identifier_type: reader.identifier(row)},
        "secondary": {
            mapping.secondary_identifier_type: reader.identifier(
                row, mapping.secondary_identifier, mapping.secondary_identifier_type
            )
        },
    }


def _bare(name: str) -> Action:
    return Action(
        name=name,
        keys=PERSON_KEYS,
        requires=(IDENTIFIER,),
        build=person_op,
        row_key=("identifier",),
    )


MERGE = Action(
    name="merge",
    keys=PERSON_KEYS | {"secondary_identifier", "secondary_identifier_type"},
    requires=(
        IDENTIFIER,
        IdentifierTypes(("id", "email", "cio_id")),
        Required("secondary_identifier", "for merge"),
    ),
    build=merge_op,
    row_key=("identifier",),
)

ACTIONS = (_bare("delete"), _bare("suppress"), _bare("unsuppress"), MERGE)
