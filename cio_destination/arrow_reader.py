"""Reading warehouse tables into Arrow natively, for `sql_table(backend="pyarrow")`.

dlt's pyarrow backend fetches the driver's row tuples and turns them into Arrow in Python, about
7 CPU-us a row: on a 1M-row table most of a sync's time before this destination gets a row. A
database that gives Arrow itself skips that. `NativeArrowTableLoader` is a `table_loader_class`
for dlt's `sql_table`: the query is dlt's own (incremental cursor range and order, row limit,
query adapter), compiled by the same SQLAlchemy dialect with the same bound values; only the
result is streamed as Arrow, cut into tables of exactly `chunk_size` rows as dlt's reader cuts
them, and each cast to the column types dlt's reader gives (`cast_arrow_as_columns_schema`, with
the same capabilities and time zone), so dlt's incremental step, normalize and this destination
see the same tables.

Where the database cannot (any but DuckDB), or a column has no dlt type (dlt infers those from
the Python values), or its Arrow type does not cast to its dlt type without loss (a nanosecond
timestamp, a decimal of a larger scale: dlt's reader gets those as Python values first), the
table is read by dlt's own reader, as without this loader.

    sql_table(credentials=url, table="users", backend="pyarrow",
              table_loader_class=NativeArrowTableLoader)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
from dlt.common.configuration.container import Container
from dlt.common.destination import DestinationCapabilitiesContext
from dlt.common.libs.pyarrow import cast_arrow_as_columns_schema, get_py_arrow_datatype
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.sources.sql_database import TableLoader

__all__ = ["NATIVE_DIALECTS", "NativeArrowTableLoader", "castable", "exact_chunks", "stream"]

NATIVE_DIALECTS = frozenset({"duckdb"})
"""SQLAlchemy dialects whose connection streams a query's result as Arrow record batches."""

_UNITS = {"s": 0, "ms": 1, "us": 2, "ns": 3}


class NativeArrowTableLoader(TableLoader):
    """dlt's `TableLoader` reading the `pyarrow` backend's tables as Arrow from the database
    where it can (DuckDB), and as dlt does everywhere else."""

    def _load_rows(self, query: Any, backend_kwargs: dict[str, Any]) -> Iterator[Any]:
        if self.backend != "pyarrow" or self.engine.dialect.name not in NATIVE_DIALECTS:
            yield from super()._load_rows(query, backend_kwargs)
            return
        tz = backend_kwargs.get("tz", "UTC")
        caps = (
            Container().get(DestinationCapabilitiesContext)
            or DestinationCapabilitiesContext.generic_capabilities()
        )
        sql, parameters = self._compiled(query)
        native = False
        with self.engine.connect() as connection:
            database = connection.connection.driver_connection
            reader = stream(database.sql(sql, params=parameters or None), self.chunk_size)
            try:
                native = castable(reader.schema, self.columns, caps, tz)
                for table in exact_chunks(reader, self.chunk_size) if native else ():
                    yield cast_arrow_as_columns_schema(table, self.columns, caps, tz)
            finally:
                reader.close()  # DuckDB refuses the connection's rollback while a result is open
        if not native:  # nothing was read: dlt's own reader
            yield from super()._load_rows(query, backend_kwargs)

    def _compiled(self, query: Any) -> tuple[str, list[Any]]:
        """The query's SQL and its positional values, as SQLAlchemy would send them."""
        dialect = self.engine.dialect
        compiled = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        values = compiled.construct_params()
        parameters = []
        for name in compiled.positiontup or ():
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            parameters.append(process(values[name]) if process else values[name])
        return str(compiled), parameters


def stream(relation: Any, batch_size: int) -> pa.RecordBatchReader:
    """A DuckDB relation's rows as Arrow batches of about `batch_size` rows (DuckDB 2 calls it
    `to_arrow_reader`, 1.x `fetch_arrow_reader`)."""
    read = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return read(batch_size)  # type: ignore[no-any-return]


def castable(
    schema: pa.Schema, columns: TTableSchemaColumns, caps: DestinationCapabilitiesContext, tz: str
) -> bool:
    """Every field has a dlt type that Arrow casts the field's type to without loss, as dlt's
    reader would convert the driver's Python values of it."""
    for field in schema:
        column = columns.get(field.name)
        if column is None or not column.get("data_type"):
            return False
        try:
            target = get_py_arrow_datatype(column, caps, tz)
        except (ValueError, TypeError):
            return False
        if not _same_kind(field.type, target):
            return False
    return True


def _same_kind(source: pa.DataType, target: pa.DataType) -> bool:
    types = pa.types
    if types.is_dictionary(source):  # an ENUM
        return types.is_string(source.value_type) and types.is_string(target)
    if types.is_timestamp(target) or types.is_time(target):
        kind = types.is_timestamp if types.is_timestamp(target) else types.is_time
        return kind(source) and _UNITS[source.unit] <= _UNITS[target.unit]
    if types.is_decimal(target):
        whole = source.precision - source.scale if types.is_decimal(source) else 0
        return (
            types.is_decimal(source)
            and source.scale <= target.scale
            and whole <= target.precision - target.scale
        )
    if types.is_integer(target):  # a HUGEINT arrives as a decimal of scale 0
        return types.is_integer(source) or (types.is_decimal(source) and source.scale == 0)
    for kind in (
        types.is_floating,
        types.is_boolean,
        types.is_date32,
        lambda t: types.is_string(t) or types.is_large_string(t),
        lambda t: types.is_binary(t) or types.is_large_binary(t),
    ):
        if kind(target):
            return bool(kind(source))
    return False


def exact_chunks(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last one fewer, none empty) of a stream of batches of
    any size, as dlt's reader yields them."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending, schema=batch.schema)
            yield table.slice(0, rows).combine_chunks()
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending, schema=pending[0].schema).combine_chunks()
