"""`identify`: create or update a person, with the row's attributes.

Several rows for one person in a batch collapse into one operation, merged in row order: the same
end state as sending them one by one, but immune to requests being reordered. The columnar builder
writes the operations of a whole RecordBatch with Arrow kernels; a person who appears twice, and
any row a column check flags, go through the row path. `source_row_hashes` lets `changes_only`
skip rows whose mapped values are as when their person was last accepted.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from cio_destination.actions.columns import RowPath, by_row_path, finish, timestamp_pieces
from cio_destination.actions.rows import Builder, RowReader, as_reject
from cio_destination.actions.spec import (
    IDENTIFIER,
    PERSON_KEYS,
    Action,
    Columnar,
    MappingProblem,
)
from cio_destination.arrow_json import as_binary, is_text, json_string_body, object_pieces
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
from cio_destination.values import is_temporal


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
    return finish(batch, source_rows, row_path, pieces, flags, ident)


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


def source_row_hashes(reader: RowReader, batch: Any) -> tuple[list[Any], list[int]] | None:
    """Per row of an identify batch: its identifier text and a 64-bit hash of its mapped values.

    `changes_only` compares these with the hashes stored when the person was last accepted and
    maps only the rows that differ. None when a column's type has no plain text form here, or
    an identifier repeats in the batch (then the order of the rows matters: map them all).

    Two rows hash alike only if they are the same row under the same mapping. The bytes hashed
    are the row's text values back to back, then, each behind a comma, the byte length of each
    text value and the text of each other value (numbers, booleans, dates: Arrow's text of
    them holds no comma and is never `~`), a null as `~`. Read from the end, those parts are
    as many as the columns and hold no comma, and the lengths cut the texts apart: different
    values never give the same bytes, whatever the texts hold (see `cio_destination.framing`
    for why a separator alone is not enough). The hash, XXH3-64 (stable across releases and
    platforms: never Python's or DuckDB's `hash()`), is seeded with the mapping and with the
    name and type of every column hashed, in order, so no value can pass for another column
    or another type (`0`, `"0"` and `0.0`; seconds and milliseconds). Hashes stored by an
    older encoding simply differ: such a row is mapped again, and the whole-operation hash of
    its fingerprint settles that it is unchanged.
    """
    mapping = reader.mapping
    names = set(batch.schema.names)
    if mapping.identifier not in names:
        return None  # every row is rejected: nothing to skip
    ident = batch.column(mapping.identifier)
    ident = pc.cast(ident, pa.string()) if pa.types.is_integer(ident.type) else ident
    if not is_text(ident.type):
        return None
    if repeated_values(ident) is not None:
        return None
    columns = _hashed_texts(reader, batch)
    if columns is None:
        return None
    texts, others, layout = columns
    listed = [*(pc.cast(pc.binary_length(text), pa.string()) for text in texts), *others]
    rows = pc.binary_join_element_wise(*listed, ",", null_handling="replace", null_replacement="~")
    if not pc.all(pc.equal(pc.count_substring(rows, ","), len(listed) - 1)).as_py():
        return None  # a value with a comma in it: never expected, so never skipped
    if texts:
        if len({text.type for text in texts}) > 1:  # string and large_string: join as large
            texts = [pc.cast(text, pa.large_string()) for text in texts]
        kind = texts[0].type
        head = pc.binary_join_element_wise(
            *texts, pa.scalar("", kind), null_handling="replace", null_replacement=""
        )
        rows = pc.binary_join_element_wise(head, rows.cast(kind), pa.scalar(",", kind))
    settings = [
        mapping.model_dump(mode="json", exclude_defaults=True),
        sorted(reader.compiled.json_columns),
        layout,
    ]
    salt = hashlib.blake2b(
        orjson.dumps(settings, option=orjson.OPT_SORT_KEYS),
        digest_size=8,
        person=_SOURCE_HASH_PERSON,
    )
    seed = repeat(int.from_bytes(salt.digest(), "big"))
    unsigned = array("Q", map(xxhash.xxh3_64_intdigest, as_binary(rows).to_pylist(), seed))
    return ident.to_pylist(), array("q", unsigned.tobytes()).tolist()  # read as signed


_SOURCE_HASH_PERSON = b"cio-source-row-3"


def _hashed_texts(
    reader: RowReader, batch: Any
) -> tuple[list[Any], list[Any], list[list[str]]] | None:
    """The mapped columns as `source_row_hashes` hashes them: the text columns, the others
    as their text, and the layout (the name and type of each, in the order hashed)."""
    mapping = reader.mapping
    names = set(batch.schema.names)
    columns = [mapping.identifier, *reader.compiled.attribute_columns]
    if mapping.timestamp:
        columns.append(mapping.timestamp)
    texts, others, text_layout, other_layout = [], [], [], []
    for name in columns:
        if name not in names:
            continue
        column = batch.column(name)
        kind = column.type
        if is_text(kind):
            texts.append(column)
            text_layout.append([name, "text"])
            continue
        if is_temporal(kind):
            column = pc.cast(column, pa.int64()) if pa.types.is_timestamp(kind) else column
        elif not (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_decimal(kind)
        ):
            return None
        others.append(pc.cast(column, pa.string()))
        other_layout.append([name, str(kind)])
    return texts, others, text_layout + other_layout


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
