"""`identify`: create or update a person, with the row's attributes.

Several rows for one person in a batch collapse into one operation, merged in row order: the same
end state as sending them one by one, but immune to requests being reordered. The columnar builder
writes the operations of a whole RecordBatch with Arrow kernels; a person who appears twice, and
any row a column check flags, go through the row path. (`changes_only` skips rows whose mapped
values are as when their person was last accepted: `cio_destination.diff.source_rows`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pyarrow.compute as pc

from cio_destination.actions.columns import RowPath, by_row_path, finish, timestamp_pieces
from cio_destination.actions.rows import Builder, RowReader, as_reject
from cio_destination.actions.spec import (
    IDENTIFIER,
    PERSON_KEYS,
    Action,
    Columnar,
    MappingProblem,
)
from cio_destination.arrow_json import json_string_body, object_pieces
from cio_destination.entries import Entry, Mapped, Rejection, Row
from cio_destination.limits import (
    MAX_ATTRIBUTES_PER_IDENTIFY,
    MAX_IDENTIFIER_BYTES,
    Reject,
    attribute_texts,
    dropped_records,
    entry_rejections,
    identifier_column,
    identifier_flags,
)
from cio_destination.mapping_keys import TableMapping


def identify_op(reader: RowReader, row: Row, dropped: list[str] | None) -> dict[str, Any]:
    """The row builder: a person identify operation; empty attributes and a missing timestamp
    are left out."""
    kind = reader.mapping.identifier_type
    identifier = reader.identifier(row)
    timestamp = reader.timestamp(row)
    attributes = reader.attributes(row, per_value_limit=True, dropped=dropped)
    op: dict[str, Any] = {"type": "person", "action": "identify", "identifiers": {kind: identifier}}
    if attributes:
        op["attributes"] = attributes
    if timestamp is not None:
        op["timestamp"] = timestamp
    return op


def map_identify(
    reader: RowReader, rows: Iterable[Row], build: Builder, key_columns: tuple[str, ...]
) -> Mapped:
    """The row path: a person's rows collapse into one operation (see the module's docstring)."""
    # Each operation is serialized as soon as it is built, so its dicts are freed while the
    # next row reuses their memory (fresh pages cost more than the mapping itself); only a
    # person seen again is read back from its bytes (a lossless round trip) and merged.
    built: list[Entry] = []
    positions: dict[str, int] = {}
    merged: dict[int, dict[str, Any]] = {}
    too_many: set[int] = set()
    rejections: list[Rejection] = []
    dropped_at: dict[int, list[Rejection]] = {}
    kind = reader.mapping.identifier_type
    most = MAX_ATTRIBUTES_PER_IDENTIFY
    dumps = orjson.dumps
    decode = reader.reads_values
    dropping = reader.mapping.oversized_attribute == "drop_attribute"
    rows_in = 0
    for row in rows:
        rows_in += 1
        values = row
        dropped: list[str] | None = [] if dropping else None
        try:
            if decode:
                values = reader.decoded(row)
            op = build(reader, values, dropped)
            data = dumps(op)  # of every row: a merged operation is made of writable parts
        except (Reject, orjson.JSONEncodeError) as problem:
            reject = as_reject(problem, values)
            # a rejected row's identifier may be of any length: cut to what an identifier holds
            key = reader.row_key(values, key_columns)[:MAX_IDENTIFIER_BYTES]
            rejections.append(Rejection(row, key, reject.reason, reject.field, reject.message))
            continue
        identifier = op["identifiers"][kind]
        attributes, timestamp = op.get("attributes", {}), op.get("timestamp")
        position = positions.get(identifier)
        if dropped:
            at = len(built) if position is None else position
            dropped_at.setdefault(at, []).extend(dropped_records(row, identifier, dropped))
        if position is None:
            position = positions[identifier] = len(built)
            if len(attributes) > most:
                too_many.add(position)
            built.append(Entry(data, identifier, [row]))
            continue
        entry = built[position]
        person = merged.get(position)
        if person is None:
            person = merged[position] = orjson.loads(entry.data)
        combined = {**person.get("attributes", {}), **attributes}
        if combined:
            person["attributes"] = combined
        if len(combined) > most:
            too_many.add(position)
        if timestamp is not None:
            person["timestamp"] = max(timestamp, person.get("timestamp", timestamp))
        entry.rows.append(row)
    for position, op in merged.items():
        built[position].data = dumps(op)
    entries: list[Entry] = []
    sent_without: list[Rejection] = []
    for position, entry in enumerate(built):
        too_large = entry_rejections(entry.rows, entry.row_key, entry.data)
        if position in too_many:
            rejections.extend(
                Rejection(
                    row,
                    entry.row_key,
                    "too_many_attributes",
                    "attributes",
                    f"over Customer.io's {most} attributes per identify",
                )
                for row in entry.rows
            )
        elif too_large:
            rejections.extend(too_large)
        else:
            entries.append(entry)
            sent_without.extend(dropped_at.get(position, ()))
    return Mapped(entries, rejections, rows_in, dropped=sent_without)


def map_identify_batch(
    reader: RowReader, batch: Any, source_rows: list[Row] | None, row_path: RowPath
) -> Mapped:
    """The columnar builder: the rows' operations written by Arrow kernels, as the row path
    writes them; a person seen twice in the batch goes through the row path (which collapses
    their rows), and so does every row a column check flags."""
    mapping = reader.mapping
    names = set(batch.schema.names)
    attribute_columns = [c for c in reader.compiled.attribute_columns if c in names]
    ident = identifier_column(batch, mapping.identifier)
    if (
        ident is None
        or mapping.clear_nulls
        or len(attribute_columns) > MAX_ATTRIBUTES_PER_IDENTIFY
        or (mapping.timestamp is not None and mapping.timestamp not in names)
    ):
        return by_row_path(row_path, batch, source_rows)
    kind = mapping.identifier_type

    # rows the row path must see: every check it makes, made on whole columns
    flags = identifier_flags(ident, kind)
    repeated = repeated_values(ident)
    if repeated is not None:
        flags.append(pc.is_in(ident, value_set=repeated))  # collapsed in row order there
    pieces: list[Any] = [
        '{"type":"person","action":"identify","identifiers":{' + orjson.dumps(kind).decode(),
        ':"',
        json_string_body(ident),
        '"}',
    ]
    attributes = attribute_texts(
        batch, attribute_columns, flags, value_limit=True, split_floats=True
    )
    if attributes is None:
        return by_row_path(row_path, batch, source_rows)
    if attributes:
        pieces += object_pieces("attributes", attributes)
    pieces += timestamp_pieces(batch, mapping.timestamp, flags)
    pieces.append("}")
    mapped = finish(batch, source_rows, row_path, pieces, flags, ident)
    if mapping.changes_only:  # for its fingerprints; a plain sync does not hold them
        mapped.attribute_texts = attributes
    return mapped


def repeated_values(column: Any) -> Any | None:
    """The values that occur more than once in a column, or None where none does.

    A column in strictly increasing or decreasing order (a table read in its key's order) has
    none: one comparison of each value with the next settles that, cheaper than hashing every
    value, which the others take.
    """
    if len(column) < 2:
        return None
    before, after = column.slice(0, len(column) - 1), column.slice(1)
    for ordered in (pc.less, pc.greater):
        if pc.all(ordered(before, after).fill_null(False)).as_py():
            return None
    counts = pc.value_counts(column)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    return repeated if len(repeated) else None


def batch_columns(
    reader: RowReader, rows: list[Row], columns: Mapping[str, Any]
) -> list[str | None] | None:
    """The columns dict rows bring into a batch for `map_identify_batch`."""
    mapping = reader.mapping
    if mapping.clear_nulls:
        return None
    return [mapping.identifier, *reader.compiled.attribute_columns, mapping.timestamp]


def _check(mapping: TableMapping) -> None:
    if not 0 <= mapping.max_removed_fraction <= 1:
        raise MappingProblem("max_removed_fraction", "must be between 0 and 1")


IDENTIFY = Action(
    name="identify",
    keys=PERSON_KEYS
    | {
        "attributes",
        "json_columns",
        "oversized_attribute",
        "timestamp",
        "clear_nulls",
        "changes_only",
        "mirror",
        "max_removed_fraction",
    },
    requires=(IDENTIFIER,),
    build=identify_op,
    row_key=("identifier",),
    columnar=Columnar(map_identify_batch, batch_columns),
    check=_check,
    loop=map_identify,
)

ACTIONS = (IDENTIFY,)
