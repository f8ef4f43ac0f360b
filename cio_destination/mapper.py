"""One entry point from a table's rows to its operations: `map_items`.

dlt hands the destination dict rows (typed-jsonl: a `list[dict]`, or `JsonlRows`, which a job
reads from its file straight into Arrow) or a `pyarrow.RecordBatch` (parquet).
`map_items` maps either through the table's action (`cio_destination.actions`): through its
columnar builder where it has one and the rows allow it (Arrow input, or dict rows whose mapped
columns have plain dlt types), through its row builder otherwise. Both give the same operations
and rejections, byte for byte; only the cost differs. `COLUMNAR_PATH` switches the columnar path
off (`CIO_DESTINATION_COLUMNAR=0`) and counts the rows it wrote.
"""

from __future__ import annotations

import datetime as dt
import operator
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from itertools import repeat
from typing import Any

import pyarrow as pa

from cio_destination.actions import ACTIONS
from cio_destination.actions.rows import RowReader, gc_paused
from cio_destination.entries import Mapped, Row, rows_from_arrow
from cio_destination.jsonl_arrow import JsonlRows, arrow_readable
from cio_destination.mapping import with_columns
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.non_finite import NON_FINITE_COLUMN, restore_non_finite


class ColumnarPath:
    """Whether the columnar paths run, and how many rows' operations they have written.

    Switched off (`enabled = False`, or `CIO_DESTINATION_COLUMNAR=0` in the environment of the
    process), every row takes the row path, which must give the same operations and rejections
    byte for byte; tests compare the two and read `rows` to know the columnar path really ran.
    """

    def __init__(self) -> None:
        self.enabled = os.environ.get("CIO_DESTINATION_COLUMNAR", "1") != "0"
        self._rows = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        """Rows whose operations Arrow kernels wrote, since the process started."""
        return self._rows

    def wrote(self, rows: int) -> None:
        """Count rows whose operations Arrow kernels wrote."""
        with self._lock:
            self._rows += rows


COLUMNAR_PATH = ColumnarPath()
"""The process's columnar path switch and row counter."""


class RowMapper(RowReader):
    """The mapper of one table: its compiled mapping and its action. `map_rows` is the row path;
    `map_items` takes either path."""

    def __init__(self, compiled: CompiledMapping, *, dlt_decoded: bool = False) -> None:
        super().__init__(compiled, dlt_decoded=dlt_decoded)
        self.action = ACTIONS[compiled.action]
        self._of_dict_rows = self if dlt_decoded else None

    def of_dict_rows(self) -> RowMapper:
        """The mapper of the table's dict rows as dlt writes them (JSON it typed, read)."""
        if self._of_dict_rows is None:
            self._of_dict_rows = RowMapper(self.compiled, dlt_decoded=True)
        return self._of_dict_rows

    def map_rows(self, rows: Iterable[Row]) -> Mapped:
        """The operations (or rejections) of `rows`, one row at a time."""
        with gc_paused():
            return self.action.map_rows(self, rows)


def map_items(
    mapper: RowMapper, items: Sequence[Row] | Any, columns: Mapping[str, Any] | None = None
) -> Mapped:
    """The operations (or rejections) of a batch of one table's rows.

    `items` are dict rows (dlt's typed-jsonl, a list or `JsonlRows`, `columns` the table's
    column schemas: dlt has read the JSON of the columns it types as json) or a pyarrow RecordBatch or Table (JSON columns
    as text). The action's columnar builder maps them where it can, else its row builder: the
    outcome is the same either way.
    """
    columns = columns or {}
    if isinstance(items, JsonlRows) and NON_FINITE_COLUMN in columns:
        items = items.rows()  # restored in the dicts (and nowhere else)
    if isinstance(items, list) and NON_FINITE_COLUMN in columns:
        mapper, columns = _non_finite_restored(mapper, items, columns)
    with gc_paused():
        mapped = _map_items(mapper, items, columns)
    if mapped.block:
        COLUMNAR_PATH.wrote(len(mapped.block))
    return mapped


def reads_dicts_into_arrow(mapper: RowMapper, columns: Mapping[str, Any]) -> bool:
    """Whether a dict job of this table is worth reading into Arrow as well as dicts (see
    `jsonl_arrow`): only where the action's columnar builder may take `JsonlRows.batch`, so a
    table it would decline anyway (no columnar builder, JSON, non-finite or variant columns, a
    column of a type Arrow's read does not convert) reads the dicts alone, as dlt does."""
    columnar = mapper.action.columnar if COLUMNAR_PATH.enabled else None
    if columnar is None or mapper.compiled.reads_json or NON_FINITE_COLUMN in columns:
        return False
    if any(variant in columns for variant, _ in mapper.compiled.variants):
        return False
    wanted = columnar.batch_columns(mapper.of_dict_rows(), [], columns)
    return wanted is not None and arrow_readable(columns, wanted)


def _map_items(mapper: RowMapper, items: Sequence[Row] | Any, columns: Mapping[str, Any]) -> Mapped:
    columnar = mapper.action.columnar if COLUMNAR_PATH.enabled else None
    if mapper.compiled.reads_json:
        columnar = None  # JSON text is the value it holds: the row path reads it
    if isinstance(items, (list, JsonlRows)):
        mapper = mapper.of_dict_rows()
        wanted = None if columnar is None else columnar.batch_columns(mapper, items, columns)
        batch = None if wanted is None else _dict_batch(mapper, items, columns, wanted)
        if columnar is None or batch is None:
            return mapper.map_rows(items)
        return columnar.map_batch(mapper, batch, items, mapper.map_rows)
    batch = as_record_batch(items)
    if batch is None:
        return Mapped([], [], 0)
    if columnar is None or _holds_variants(mapper, batch):
        return mapper.map_rows(rows_from_arrow(batch))
    return columnar.map_batch(mapper, batch, None, mapper.map_rows)


def _holds_variants(reader: RowReader, batch: Any) -> bool:
    """Whether a value of the batch is in one of dlt's variant columns (a value that did not fit
    its column's type, as dict rows written to parquet keep them): the row path reads those
    values back into their columns, which the columnar builders do not."""
    names = set(batch.schema.names)
    return any(
        variant in names and batch.column(variant).null_count < batch.num_rows
        for variant, _ in reader.compiled.variants
    )


def _non_finite_restored(
    mapper: RowMapper, rows: list[Row], columns: Mapping[str, Any]
) -> tuple[RowMapper, Mapping[str, Any]]:
    """Put back the NaN and infinities dlt's writer turned into nulls (`non_finite`), so the
    rows are decided as the same rows from Arrow are; the mapper of a table whose schema lacks
    a column that held them only (the batch's columns with it too)."""
    unseen = restore_non_finite(rows, columns)
    columns = {c: s for c, s in columns.items() if c != NON_FINITE_COLUMN}
    if not unseen:
        return mapper, columns
    added = {name: {"name": name, "data_type": "double"} for name in sorted(unseen)}
    placed = _placed_as_in_rows(mapper.compiled.columns, added, rows)
    return RowMapper(with_columns(mapper.compiled, placed)), {**columns, **added}


def _placed_as_in_rows(
    columns: Mapping[str, Any], added: Mapping[str, Any], rows: list[Row]
) -> dict[str, Any]:
    """`columns` with the `added` ones each placed after the column before it in the first row
    that holds it: the order the table's columns had where dlt did not leave one out, so a row
    with several problems names the same column first either way."""
    after: dict[str | None, list[str]] = {}
    for name in added:
        row = next((r for r in rows if name in r), {})
        before = None
        for key in row:
            if key == name:
                break
            if key in columns:
                before = key
        after.setdefault(before, []).append(name)
    placed = {name: added[name] for name in after.get(None, [])}
    for column, schema in columns.items():
        placed[column] = schema
        placed.update((name, added[name]) for name in after.get(column, []))
    return placed


def as_record_batch(items: Any) -> Any | None:
    """One RecordBatch of a batch or a table (its chunks combined); None for an empty table."""
    if not isinstance(items, pa.Table):
        return items
    return items.combine_chunks().to_batches()[0] if items.num_rows else None


# the Arrow type pyarrow must infer for a column of each dlt data type, for the columnar path
_INFERRED = {
    "text": pa.types.is_string,
    "bigint": pa.types.is_int64,
    "double": pa.types.is_float64,
    "bool": pa.types.is_boolean,
    "timestamp": pa.types.is_timestamp,  # naive values are UTC there, as in the row path
    "date": pa.types.is_date32,
    "decimal": pa.types.is_decimal,
}
# the Python type (and its subtypes but these) typed-jsonl gives for each of those dlt types:
# pyarrow converts a value of another type to fit the column (1 to 1.0 in a double column, a
# datetime to its date in a date one), where the row path sends the value as it is
_PYTHON_TYPES: dict[str, tuple[type, tuple[type, ...]]] = {
    "text": (str, ()),
    "bigint": (int, (bool,)),
    "double": (float, ()),
    "bool": (bool, ()),
    "timestamp": (dt.datetime, ()),
    "date": (dt.date, (dt.datetime,)),
    "decimal": (Decimal, ()),
}


def _of_type(values: list[Any], data_type: str) -> bool:
    """Whether every value (or None) has the Python type typed-jsonl gives for `data_type`."""
    allowed, excluded = _PYTHON_TYPES[data_type]
    return all(
        kind is type(None) or (issubclass(kind, allowed) and not issubclass(kind, excluded))
        for kind in set(map(type, values))
    )


def _dict_batch(
    reader: RowReader,
    rows: list[Row] | JsonlRows,
    columns: Mapping[str, Any],
    wanted: list[str | None],
) -> Any | None:
    """`_rows_to_batch` of dict rows: read from Arrow's table of a typed-jsonl file's rows where
    `JsonlRows.batch` can (no dict made), else from the dicts."""
    if isinstance(rows, JsonlRows):
        batch = rows.batch(wanted, columns, [variant for variant, _ in reader.compiled.variants])
        if batch is not None:
            return batch
    return _rows_to_batch(reader, rows, columns, wanted)


def _rows_to_batch(
    reader: RowReader, rows: Sequence[Row], columns: Mapping[str, Any], wanted: list[str | None]
) -> Any | None:
    """The `wanted` columns of dict rows as a RecordBatch, or None when they cannot all be.

    Each column must have a plain dlt type, its values the Python type typed-jsonl gives for
    it, and the type pyarrow infers from them that type: a value of another kind (an int in a
    double column, bytes in a text one) makes None rather than be converted."""
    if not rows:
        return None
    variants = [variant for variant, _ in reader.compiled.variants]
    if variants and any(variant in row for row in rows for variant in variants):
        return None  # the row path reads those values back into their columns
    names: list[str] = []
    arrays = []
    for name in dict.fromkeys(n for n in wanted if n is not None):
        if name not in columns:
            continue  # no row has a value for it
        data_type = columns[name].get("data_type") or ""
        expected = _INFERRED.get(data_type)
        if expected is None:
            return None
        values = [row.get(name) for row in rows]
        if not _of_type(values, data_type):
            return None
        try:
            array = datetime_array(values) if data_type == "timestamp" else None
            array = pa.array(values) if array is None else array
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return None
        if not (expected(array.type) or pa.types.is_null(array.type)):
            return None
        names.append(name)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=names)


_EPOCH = {True: dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), False: dt.datetime(1970, 1, 1)}
_UTC_OR_NAIVE = {frozenset([dt.timezone.utc]): True, frozenset([None]): False}


def datetime_array(values: Sequence[Any]) -> Any | None:
    """`pa.array(values)` for datetimes as dlt's typed-jsonl reader gives them, five times
    faster; None where this way does not apply (then `pa.array` does it).

    Only plain `datetime`s, no None, all naive or all in `timezone.utc`: each minus the epoch is
    a C subtraction, and Arrow reads the timedeltas as durations, which are the microseconds
    since the epoch a timestamp holds (`pa.array` asks every value's tzinfo for its offset)."""
    if not values or set(map(type, values)) != {dt.datetime}:
        return None
    aware = _UTC_OR_NAIVE.get(frozenset(map(operator.attrgetter("tzinfo"), values)))
    if aware is None:
        return None
    since = pa.array(list(map(operator.sub, values, repeat(_EPOCH[aware]))), pa.duration("us"))
    return since.view(pa.timestamp("us", tz="UTC" if aware else None))
