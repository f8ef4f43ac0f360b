"""What an action declares: its mapping keys, the keys it needs, the operation it builds (row by
row, and from whole columns where it can), the key that names its rows, and whether its rows carry
an idempotency key. The registry (`cio_destination.actions`) gathers these declarations; the
mapping validator, the mapper and the README's action table all read them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cio_destination.actions.rows import Builder, RowReader, map_each, map_keyed
from cio_destination.entries import Mapped, Row
from cio_destination.mapping_keys import TableMapping


class MappingProblem(ValueError):
    """A declared mapping its action cannot take: the key at fault and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class Requirement(Protocol):
    """Something an action needs of a declared mapping, checked in the order declared."""

    @property
    def keys(self) -> tuple[str, ...]:
        """The mapping keys it is about."""
        ...

    def check(self, mapping: TableMapping) -> None:
        """Raise `MappingProblem` when the mapping does not meet it."""
        ...


@dataclass(frozen=True)
class Required:
    """A key the action cannot do without; `why` ends the message that says so."""

    key: str
    why: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def check(self, mapping: TableMapping) -> None:
        if getattr(mapping, self.key) is None:
            raise MappingProblem(self.key, f"required {self.why}")


@dataclass(frozen=True)
class OneOf:
    """A value given either as a literal or as the column that holds it: exactly one of them."""

    literal: str
    column: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.literal, self.column)

    def check(self, mapping: TableMapping) -> None:
        if (getattr(mapping, self.literal) is None) == (getattr(mapping, self.column) is None):
            raise MappingProblem(
                self.literal, f"give exactly one of {self.literal} or {self.column}"
            )


@dataclass(frozen=True)
class IdentifierTypes:
    """The only `identifier_type`s the action takes."""

    types: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return ("identifier_type",)

    def check(self, mapping: TableMapping) -> None:
        if mapping.identifier_type not in self.types:
            listed = f"{', '.join(self.types[:-1])} or {self.types[-1]}"
            raise MappingProblem("identifier_type", f"{mapping.action} takes {listed}")


IDENTIFIER = Required("identifier", "(the column holding the person's identifier)")
"""The requirement of every action on a person."""
PERSON_KEYS = frozenset({"identifier", "identifier_type"})
"""The keys of every action on a person."""
OBJECT_KEYS = frozenset({"object_type_id", "object_type_id_column", "object_id"})
"""The keys of every action on an object."""
OBJECT_REQUIREMENTS: tuple[Requirement, ...] = (
    OneOf("object_type_id", "object_type_id_column"),
    Required("object_id", "(the column holding the object id)"),
)
"""The requirements of every action on an object."""


@dataclass(frozen=True)
class Columnar:
    """An action's columnar builder: the operations of a whole RecordBatch written by Arrow
    kernels, identical byte for byte to what its row builder gives for the same rows."""

    map_batch: Callable[
        [RowReader, Any, list[Row] | None, Callable[[Iterable[Row]], Mapped]], Mapped
    ]
    """`(reader, batch, source_rows, row_path)`: the batch's operations, as an `EntryBlock`
    for rows the columns' checks pass; rows any check flags go through `row_path`, which
    decides them. `source_rows` are the dict rows the batch was made of, if it was."""
    batch_columns: Callable[[RowReader, list[Row], Mapping[str, Any]], list[str | None] | None]
    """`(reader, rows, columns)`: the columns dict rows must bring into a batch for
    `map_batch` (None: they take the row path)."""


RowLoop = Callable[[RowReader, Iterable[Row], Builder, tuple[str, ...]], Mapped]
"""How an action goes through its rows: `(reader, rows, build, key_columns)`."""


@dataclass(frozen=True)
class Action:
    """One mapping action: a Customer.io operation a table's rows become."""

    name: str
    """The `action` users declare (README, "Mapping keys")."""
    keys: frozenset[str]
    """The mapping keys it takes, beyond `action`; any other is a mapping error."""
    requires: tuple[Requirement, ...]
    """What it needs of a mapping, checked in this order."""
    build: Builder
    """The row builder: the operation of one row."""
    row_key: tuple[str, ...]
    """The mapping keys whose columns name a row in reports (its natural key)."""
    keyed: bool = False
    """Whether its rows carry an idempotency key (the event id, or the send ledger's key),
    made from the `event_id` columns (by default the table's primary key, else the whole
    row) and given to `build`."""
    columnar: Columnar | None = None
    """Its columnar builder, where it has one."""
    check: Callable[[TableMapping], None] | None = None
    """Any other check of a declared mapping, after `requires` (raises `MappingProblem`)."""
    loop: RowLoop | None = None
    """A way through its rows of its own (by default `map_keyed` or `map_each`)."""

    @property
    def sends_attributes(self) -> bool:
        """Whether its operation carries the row's other columns (`attributes`)."""
        return "attributes" in self.keys

    def map_rows(self, reader: RowReader, rows: Iterable[Row]) -> Mapped:
        """The row path: the operations (or rejections) of `rows`, one at a time."""
        loop = self.loop or (map_keyed if self.keyed else map_each)
        return loop(reader, rows, self.build, reader.key_columns(self.row_key))
