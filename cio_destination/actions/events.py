"""`event`, `page` and `screen`: a person's custom event, page view or mobile screen view.

Each row's operation carries an `id`, the ULID of its key (`event_ids`), which Customer.io
de-duplicates on: a replay, a rerun or a full re-sync of the same rows never creates a second
event. The event name is a literal of the mapping or a column's value (a page's name is its URL);
its rule is here in its three forms: the mapping's literal, a row's value, a column's values.
The columnar builder writes the operations of a whole RecordBatch, ids included, with Arrow
kernels; rows any check flags go through the row path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.actions.columns import RowPath, by_row_path, finish, timestamp_pieces
from cio_destination.actions.rows import RowReader
from cio_destination.actions.spec import (
    IDENTIFIER,
    PERSON_KEYS,
    Action,
    Columnar,
    MappingProblem,
    OneOf,
)
from cio_destination.arrow_json import (
    as_string,
    is_text,
    joined_sizes,
    json_string_body,
    object_pieces,
)
from cio_destination.entries import Mapped, Row
from cio_destination.event_ids import event_ids, event_keys
from cio_destination.limits import (
    MAX_EVENT_NAME_BYTES,
    Reject,
    attribute_texts,
    blank_flags,
    event_data_too_large,
    identifier_column,
    identifier_flags,
    is_blank,
    text_value,
    utf8_len,
)
from cio_destination.mapping_keys import TableMapping

_ATTRIBUTES_HEAD = ',"attributes":'


# -- the event name ------------------------------------------------------------------------------


def _check_event_name(mapping: TableMapping) -> None:
    """The mapping's literal event name, checked before any row."""
    if mapping.event_name is not None:
        if not mapping.event_name.strip():
            raise MappingProblem("event_name", "must not be empty")
        if len(mapping.event_name.encode("utf-8")) > MAX_EVENT_NAME_BYTES:
            raise MappingProblem(
                "event_name", f"over Customer.io's {MAX_EVENT_NAME_BYTES}-byte limit"
            )


def _event_name(reader: RowReader, row: Row) -> str:
    """A row's event name: the mapping's literal, or its column's value."""
    if reader.mapping.event_name is not None:
        name = reader.mapping.event_name
        column = "event_name"
    else:
        column = reader.mapping.event_name_column
        assert column is not None
        value = row.get(column)
        if is_blank(value):
            raise Reject("missing_event_name", column, "the event name is empty")
        name = text_value(value, column, "invalid_event_name", "event name")
    if utf8_len(name, MAX_EVENT_NAME_BYTES) > MAX_EVENT_NAME_BYTES:
        raise Reject(
            "event_name_too_long",
            column,
            f"the event name is over Customer.io's {MAX_EVENT_NAME_BYTES}-byte limit",
        )
    return name


def _event_name_pieces(
    constant: str | None, batch: Any, column_name: str | None, flags: list[Any]
) -> list[Any] | None:
    """The column form of `_event_name`: the name's JSON string body, the mapping's constant or
    a text column's values; rows the row form rejects (or might) are added to `flags`. None
    when the row form must map the whole batch."""
    if constant is not None:
        if len(constant.encode("utf-8")) > MAX_EVENT_NAME_BYTES:
            return None  # the row form rejects every row, saying why
        return [orjson.dumps(constant).decode()[1:-1]]
    assert column_name is not None
    column = batch.column(column_name)
    if not is_text(column.type):
        return None  # the row form writes other values as their text
    column = as_string(column)
    if column is None:
        return None
    length = pc.binary_length(column)
    flags += [
        column.is_null(),
        pc.equal(length, 0),
        pc.greater(length, MAX_EVENT_NAME_BYTES),
        *blank_flags(column),
    ]
    return [json_string_body(column)]


# -- the operation -------------------------------------------------------------------------------


def named_op(reader: RowReader, row: Row, event_id: str) -> dict[str, Any]:
    """The row builder: the row's event (page, screen) operation, with its id."""
    mapping = reader.mapping
    op: dict[str, Any] = {
        "type": "person",
        "action": mapping.action,
        "identifiers": {mapping.identifier_type: reader.identifier(row)},
        "name": _event_name(reader, row),
        "id": event_id,
    }
    timestamp = reader.timestamp(row)
    if timestamp is not None:
        op["timestamp"] = timestamp
    data = reader.event_data(row, mapping.event_data_column)
    if data:
        op["attributes"] = data
    return op


def map_named_batch(
    reader: RowReader, batch: Any, source_rows: list[Row] | None, row_path: RowPath
) -> Mapped:
    """The columnar builder: the rows' operations written by Arrow kernels, as `named_op`
    writes them, event ids included (`event_ids.event_keys`, `event_ids.event_ids`)."""
    mapping = reader.mapping
    compiled = reader.compiled
    names = set(batch.schema.names)
    attribute_columns = [c for c in compiled.attribute_columns if c in names]
    ident = identifier_column(batch, mapping.identifier)
    name_column = mapping.event_name_column
    if (
        ident is None
        or mapping.clear_nulls
        or mapping.event_data_column is not None
        or (mapping.timestamp is not None and mapping.timestamp not in names)
        or (name_column is not None and name_column not in names)
    ):
        return by_row_path(row_path, batch, source_rows)
    kind = mapping.identifier_type
    flags = identifier_flags(ident, kind)

    name_pieces = _event_name_pieces(mapping.event_name, batch, name_column, flags)
    keys = event_keys(batch, compiled.event_id_columns, flags)
    if name_pieces is None or keys is None:
        return by_row_path(row_path, batch, source_rows)
    ids = event_ids(compiled.table, keys)

    pieces: list[Any] = [
        '{"type":"person","action":'
        + orjson.dumps(mapping.action).decode()
        + ',"identifiers":{'
        + orjson.dumps(kind).decode()
        + ':"',
        json_string_body(ident),
        '"},"name":"',
        *name_pieces,
        '","id":"',
        ids,
        '"',
    ]
    pieces += timestamp_pieces(batch, mapping.timestamp, flags)
    attributes = attribute_texts(
        batch, attribute_columns, flags, value_limit=False, split_floats=True
    )
    if attributes is None:
        return by_row_path(row_path, batch, source_rows)
    if attributes:
        data = object_pieces("attributes", attributes)  # null (left out) where none
        flags.append(event_data_too_large(joined_sizes(data, batch.num_rows), _ATTRIBUTES_HEAD))
        pieces += data
    pieces.append("}")

    id_columns = compiled.event_id_columns
    row_keys = None
    if len(id_columns) == 1 and id_columns[0] in names:
        column = batch.column(id_columns[0])
        if is_text(column.type) or pa.types.is_integer(column.type):
            row_keys = pc.cast(column, pa.string()).fill_null("")  # str(value), "" for None
    return finish(
        batch,
        source_rows,
        row_path,
        pieces,
        flags,
        row_keys,
        keys=ids,
        row_key_of=lambda row: reader.row_key(row, id_columns),
    )


def batch_columns(
    reader: RowReader, rows: list[Row], columns: Mapping[str, Any]
) -> list[str | None] | None:
    """The columns dict rows bring into a batch for `map_named_batch`: those the operation and
    the key use, or every column when the whole row is the key (all must be in the schema)."""
    mapping = reader.mapping
    compiled = reader.compiled
    if mapping.clear_nulls:
        return None
    if compiled.event_id_columns:
        return [
            mapping.identifier,
            *compiled.attribute_columns,
            mapping.timestamp,
            mapping.event_name_column,
            *compiled.event_id_columns,
        ]
    present = set().union(*rows) if rows else set()
    if not present <= columns.keys():
        return None
    return list(columns)


def _named(name: str) -> Action:
    return Action(
        name=name,
        keys=PERSON_KEYS
        | {
            "event_name",
            "event_name_column",
            "event_data_column",
            "event_id",
            "timestamp",
            "attributes",
            "json_columns",
        },
        requires=(IDENTIFIER, OneOf("event_name", "event_name_column")),
        build=named_op,
        row_key=("event_id",),
        keyed=True,
        columnar=Columnar(map_named_batch, batch_columns),
        check=_check_event_name,
    )


ACTIONS = (_named("event"), _named("page"), _named("screen"))
