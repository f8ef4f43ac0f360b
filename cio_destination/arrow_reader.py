"""Reading warehouse tables into Arrow natively, for `sql_table(backend="pyarrow")`.

dlt's pyarrow backend fetches the driver's row tuples and turns them into Arrow in Python (from
DuckDB about 7 CPU-us a row: on a 1M-row table most of a sync's time before this destination
gets a row). A database that gives Arrow itself skips that. `NativeArrowTableLoader` is a `table_loader_class`
for dlt's `sql_table`: the query is dlt's own (incremental cursor range and order, row limit,
query adapter), compiled by the same SQLAlchemy dialect with the same bound values; only the
result is streamed as Arrow, cut into tables of exactly `chunk_size` rows as dlt's reader cuts
them, and each cast to the column types dlt's reader gives (`cast_arrow_as_columns_schema`, with
the same capabilities and time zone), so dlt's incremental step, normalize and this destination
see the same tables.

- DuckDB: through the SQLAlchemy connection itself (a DuckDB relation's Arrow stream).
- PostgreSQL: through ADBC's libpq driver (`adbc-driver-postgresql`, the extra
  `cio-destination[postgres-arrow]`) on a connection of its own to the engine's URL (its query
  parameters, `sslmode=...`, go to libpq; the engine's `connect_args` do not); without the
  package, dlt's reader. JSON, uuid and numeric columns without a declared scale come from ADBC
  as other values than dlt makes of psycopg's, so tables with them take dlt's reader (the
  shipped sync reads JSON columns as text, which ADBC gives as dlt does).

Where the database cannot (any other), or a column has no dlt type (dlt infers those from the
Python values), or its Arrow type does not cast to its dlt type as dlt would convert the
driver's Python value (a nanosecond timestamp, a decimal of a larger scale, PostgreSQL's `real`
whose Python value is its shortest decimal text), the table is read by dlt's own reader, as
without this loader.

    sql_table(credentials=url, table="users", backend="pyarrow",
              table_loader_class=NativeArrowTableLoader)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pyarrow as pa
from dlt.common.configuration.container import Container
from dlt.common.destination import DestinationCapabilitiesContext
from dlt.common.libs.pyarrow import cast_arrow_as_columns_schema, get_py_arrow_datatype
from dlt.common.schema.typing import TTableSchemaColumns
from dlt.sources.sql_database import TableLoader

__all__ = [
    "NATIVE_DIALECTS",
    "NativeArrowTableLoader",
    "castable",
    "compiled",
    "exact_chunks",
    "stream",
    "without_extensions",
]

NATIVE_DIALECTS = frozenset({"duckdb", "postgresql"})
"""SQLAlchemy dialects whose results can be streamed as Arrow record batches."""

_UNITS = {"s": 0, "ms": 1, "us": 2, "ns": 3}
# ADBC's PostgreSQL driver gives numeric as its text (an opaque extension type of that name)
_NUMERIC_TEXT = "numeric"


class NativeArrowTableLoader(TableLoader):
    """dlt's `TableLoader` reading the `pyarrow` backend's tables as Arrow from the database
    where it can (DuckDB; PostgreSQL with ADBC installed), and as dlt does everywhere else."""

    def _load_rows(self, query: Any, backend_kwargs: dict[str, Any]) -> Iterator[Any]:
        open_reader = self._reader() if self.backend == "pyarrow" else None
        if open_reader is None:
            yield from super()._load_rows(query, backend_kwargs)
            return
        tz = backend_kwargs.get("tz", "UTC")
        caps = (
            Container().get(DestinationCapabilitiesContext)
            or DestinationCapabilitiesContext.generic_capabilities()
        )
        # PostgreSQL's real reaches Python as its shortest decimal text, not the float32 itself
        floats32 = self.engine.dialect.name != "postgresql"
        native = False
        with open_reader(query) as reader:
            native = castable(reader.schema, self.columns, caps, tz, float32=floats32)
            for table in exact_chunks(reader, self.chunk_size) if native else ():
                table = without_extensions(table)
                yield cast_arrow_as_columns_schema(table, self.columns, caps, tz)
        if not native:  # nothing was read: dlt's own reader
            yield from super()._load_rows(query, backend_kwargs)

    def _reader(self) -> Callable[[Any], AbstractContextManager[pa.RecordBatchReader]] | None:
        name = self.engine.dialect.name
        if name == "duckdb":
            return self._duckdb
        if name == "postgresql":
            try:
                import adbc_driver_postgresql.dbapi  # noqa: F401
            except ImportError:
                return None
            return self._postgres
        return None

    @contextmanager
    def _duckdb(self, query: Any) -> Iterator[pa.RecordBatchReader]:
        sql, parameters = compiled(query, self.engine.dialect)
        with self.engine.connect() as connection:
            database = connection.connection.driver_connection
            reader = stream(database.sql(sql, params=parameters or None), self.chunk_size)
            try:
                yield reader
            finally:
                reader.close()  # DuckDB refuses the connection's rollback while a result is open

    @contextmanager
    def _postgres(self, query: Any) -> Iterator[pa.RecordBatchReader]:
        from adbc_driver_postgresql import dbapi

        # the engine's own dialect, with the $1 placeholders libpq takes
        dialect = type(self.engine.dialect)(paramstyle="numeric_dollar")
        sql, parameters = compiled(query, dialect)
        with (
            dbapi.connect(self.get_connection_url()) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, parameters=parameters or None)
            reader = cursor.fetch_record_batch()
            try:
                yield reader
            finally:
                reader.close()


def compiled(query: Any, dialect: Any) -> tuple[str, list[Any]]:
    """The query's SQL and its positional values, as SQLAlchemy would send them."""
    statement = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    values = statement.construct_params()
    parameters = []
    for name in statement.positiontup or ():
        process = statement.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        parameters.append(process(values[name]) if process else values[name])
    return str(statement), parameters


def stream(relation: Any, batch_size: int) -> pa.RecordBatchReader:
    """A DuckDB relation's rows as Arrow batches of about `batch_size` rows (DuckDB 2 calls it
    `to_arrow_reader`, 1.x `fetch_arrow_reader`)."""
    read = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return read(batch_size)  # type: ignore[no-any-return]


def castable(
    schema: pa.Schema,
    columns: TTableSchemaColumns,
    caps: DestinationCapabilitiesContext,
    tz: str,
    *,
    float32: bool = True,
) -> bool:
    """Every field has a dlt type that Arrow casts the field's type to as dlt's reader would
    convert the driver's Python values of it. `float32`: a float32 field's values are the
    driver's floats (false: they are not, see PostgreSQL's real)."""
    for field in schema:
        column = columns.get(field.name)
        if column is None or not column.get("data_type"):
            return False
        try:
            target = get_py_arrow_datatype(column, caps, tz)
        except (ValueError, TypeError):
            return False
        source = field.type
        if isinstance(source, pa.BaseExtensionType):
            # numeric(p, s) text parses exactly into the decimal of its declared p and s; other
            # extensions (PostgreSQL's JSON text, uuid) are not what dlt makes of Python values
            if not (
                _numeric_text(source)
                and pa.types.is_decimal(target)
                and column.get("scale") is not None
            ):
                return False
            continue
        if pa.types.is_float32(source) and not float32:
            return False
        if not _same_kind(source, target):
            return False
    return True


def without_extensions(table: pa.Table) -> pa.Table:
    """The table without what dlt's reader does not give: extension columns (ADBC's numeric
    text) as their plain storage, which casts to the decimal dlt's reader gives, and no
    metadata (ADBC names each column's PostgreSQL type there)."""
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        if isinstance(field.type, pa.BaseExtensionType):
            storage = [chunk.storage for chunk in column.chunks]
            column = pa.chunked_array(storage, type=field.type.storage_type)
        fields.append(pa.field(field.name, column.type, nullable=field.nullable))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _numeric_text(source: pa.BaseExtensionType) -> bool:
    return (
        source.extension_name == "arrow.opaque"
        and getattr(source, "type_name", None) == _NUMERIC_TEXT
        and pa.types.is_string(source.storage_type)
    )


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
