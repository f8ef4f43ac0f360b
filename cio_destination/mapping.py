"""How a table's rows map to Customer.io: the declared mapping, and its check against the table.

A mapping is declared with `customerio_adapter` (as `x-customerio-*` table hints) or in config under
`[destination.customerio.tables.<table>]`. Both are read into one `TableMapping`, checked against
what its action declares (`cio_destination.actions`: the keys it takes, the keys it needs, its
own checks), then compiled against the table's columns into a `CompiledMapping` that the mapper
uses. Every problem is a `MappingError` naming the table and the key, raised before any request
is made. A column the table does not have (yet) is no problem: dlt leaves out columns that are
NULL in every row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from cio_destination.actions import ACTIONS
from cio_destination.actions.spec import MappingProblem
from cio_destination.exceptions import MappingError
from cio_destination.limits import MAX_ATTRIBUTE_NAME_BYTES
from cio_destination.mapping_keys import CompiledMapping, TableMapping
from cio_destination.non_finite import NON_FINITE_COLUMN

HINT_PREFIX = "x-customerio-"
# dlt stores a value that does not fit its column's type in a variant column named
# `<column>\u25b6v_<type>` (with the direct naming convention this destination uses)
VARIANT_INFIX = "\u25b6v_"


def hint_name(key: str) -> str:
    """The table hint that carries mapping key `key`, e.g. `event_id` -> `x-customerio-event-id`."""
    return HINT_PREFIX + key.replace("_", "-")


def check_mapping(mapping: TableMapping) -> None:
    """Hold a declared mapping to its action: only the keys it takes, every one it needs, and
    its own checks, in that order; a `MappingProblem` names the first key at fault."""
    action = ACTIONS[mapping.action]
    for key in TableMapping.model_fields:
        if key != "action" and key not in action.keys and key in mapping.model_fields_set:
            users = sorted(name for name, other in ACTIONS.items() if key in other.keys)
            raise MappingProblem(key, f"only applies to action {', '.join(users)}")
    for requirement in action.requires:
        requirement.check(mapping)
    if action.check is not None:
        action.check(mapping)


def parse_mapping(table: str, declared: Mapping[str, Any]) -> TableMapping:
    """Validate declared keys into a `TableMapping`, or raise a `MappingError` naming the key."""
    action = declared.get("action")
    if action is None:
        raise MappingError(table, "action", f"required, one of {', '.join(ACTIONS)}")
    if not isinstance(action, str) or action not in ACTIONS:
        raise MappingError(
            table, "action", f"unknown action '{action}', use one of {', '.join(ACTIONS)}"
        )
    try:
        mapping = TableMapping.model_validate(dict(declared))
    except ValidationError as exc:
        error = exc.errors()[0]
        location = ".".join(str(p) for p in error["loc"])
        message = "not a mapping key" if error["type"] == "extra_forbidden" else error["msg"]
        raise MappingError(table, location.split(".")[0], message) from None
    try:
        check_mapping(mapping)
    except MappingProblem as problem:
        raise MappingError(table, problem.key, problem.problem) from None
    return mapping


def declared_from_hints(table_schema: Mapping[str, Any]) -> dict[str, Any]:
    """Read the mapping keys stored as `x-customerio-*` hints on a dlt table schema."""
    declared = {}
    for name, value in table_schema.items():
        if isinstance(name, str) and name.startswith(HINT_PREFIX):
            declared[name[len(HINT_PREFIX) :].replace("-", "_")] = value
    return declared


def resolve_mapping(
    table: str, table_schema: Mapping[str, Any], configured: Mapping[str, Any] | None
) -> TableMapping:
    """The table's mapping: from config when present there (it replaces the adapter's), else hints."""
    declared = dict(configured) if configured else declared_from_hints(table_schema)
    if not declared:
        raise MappingError(
            table,
            "action",
            "the table has no Customer.io mapping; every table loaded to this destination needs one",
        )
    return parse_mapping(table, declared)


def compile_mapping(
    table: str, mapping: TableMapping, columns: Mapping[str, Mapping[str, Any]]
) -> CompiledMapping:
    """Check a mapping against the table's columns and resolve its defaults.

    A named column the table does not have is not an error (see `absent_columns`): rows then
    have no value for it, as when it is NULL.
    """
    columns = {c: s for c, s in columns.items() if c != NON_FINITE_COLUMN}  # a note, no column
    variants = tuple(
        (name, name.rpartition(VARIANT_INFIX)[0])
        for name, schema in columns.items()
        if schema.get("variant") and VARIANT_INFIX in name
    )
    # a row's value in a variant column is its column's value: the variant is not a column
    names = list(dict.fromkeys(dict(variants).get(c, c) for c in columns))
    absent = tuple((key, column) for key, column in mapping.named_columns() if column not in names)
    used = set(mapping.used_columns())
    action = ACTIONS[mapping.action]
    if not action.sends_attributes:
        attribute_columns: tuple[str, ...] = ()
    elif mapping.attributes is not None:
        attribute_columns = tuple(mapping.attributes)
    else:
        attribute_columns = tuple(c for c in names if c not in used)
    for column in attribute_columns:
        if len(column.encode("utf-8")) > MAX_ATTRIBUTE_NAME_BYTES:
            raise MappingError(
                table,
                "attributes",
                f"a column name is over Customer.io's {MAX_ATTRIBUTE_NAME_BYTES}-byte"
                " attribute name limit; leave it out with `attributes` or rename it",
            )
    primary_key = tuple(c for c, s in columns.items() if s.get("primary_key"))
    event_id_columns: Sequence[str] = ()
    if action.keyed:
        event_id_columns = mapping.event_id or primary_key
    typed_json = frozenset(c for c, s in columns.items() if s.get("data_type") == "json")
    json_columns = frozenset((*(mapping.json_columns or ()), *typed_json))
    read = {*mapping.used_columns(), *attribute_columns, *event_id_columns}
    json_read = json_columns if action.keyed and not event_id_columns else json_columns & read
    return CompiledMapping(
        table=table,
        mapping=mapping,
        attribute_columns=attribute_columns,
        event_id_columns=tuple(event_id_columns),
        json_columns=json_columns,
        primary_key=primary_key,
        absent_columns=absent,
        variants=variants,
        declared_json=frozenset(mapping.json_columns or ()),
        typed_json=typed_json,
        json_read=tuple(sorted(json_read)),
        columns=columns,
    )


def with_columns(compiled: CompiledMapping, columns: Mapping[str, Any]) -> CompiledMapping:
    """The mapping compiled again with `columns`: the table's, with columns its schema lacks (a
    column dlt left out because all its values were NULL to it: see `non_finite`) among them;
    any of the table's left out stay, after them."""
    return compile_mapping(compiled.table, compiled.mapping, {**columns, **compiled.columns})
