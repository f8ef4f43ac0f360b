"""`NativeArrowTableLoader`: DuckDB tables read as Arrow by the driver, the same tables as dlt's.

Each test reads one table twice, through `sql_table(backend="pyarrow")` with dlt's own reader
and with the native one, and compares what dlt yields (schema with its metadata, rows, chunks) or
what a pipeline records (incremental cursor); a spy on dlt's row-tuple conversion says which
reader ran.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pyarrow as pa
import pytest
from dlt.sources.sql_database import helpers as sql_helpers
from dlt.sources.sql_database import sql_table

from cio_destination.arrow_reader import NativeArrowTableLoader, castable, exact_chunks

# the PostgreSQL server of tests/test_postgres.py (a module-scoped fixture)
from tests.test_postgres import postgres_url  # noqa: F401

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"

# every DuckDB type dlt reflects with a data type, NULLs in each, and values at their edges
TYPED_COLUMNS = """
    i AS id,
    i::INTEGER AS small,
    CASE WHEN i % 5 = 0 THEN NULL ELSE i * 1000000007 END AS big,
    i::HUGEINT AS huge,
    (i % 200)::UTINYINT AS tiny,
    CASE WHEN i % 4 = 0 THEN NULL ELSE i / 3.0 END::DOUBLE AS ratio,
    (i / 3.0)::FLOAT AS single,
    CASE WHEN i % 6 = 0 THEN NULL ELSE (i / 8.0)::DECIMAL(18, 3) END AS amount,
    (i * 12345.678901)::DECIMAL(38, 10) AS wide,
    CASE WHEN i % 3 = 0 THEN NULL ELSE 'name ' || i || ' é' END AS name,
    i % 2 = 0 AS flag,
    DATE '2024-01-01' + i::INTEGER AS day,
    TIMESTAMP '2024-01-01 00:00:00.123456' + to_seconds(i * 3600) AS naive,
    CASE WHEN i % 7 = 0 THEN NULL
         ELSE TIMESTAMPTZ '2024-01-01 00:00:00+05' + to_seconds(i) END AS aware,
    TIMESTAMP_S '2024-02-01 01:02:03' AS seconds,
    TIME '01:02:03.5' AS clock,
    ('{"a": ' || i || ', "b": [1, "x"]}')::JSON AS doc,
    'bytes'::BLOB || i::VARCHAR::BLOB AS raw,
    uuid_extract_version(gen_random_uuid()) AS version,
    '00000000-0000-0000-0000-' || lpad(i::VARCHAR, 12, '0') AS uid_text,
    ('00000000-0000-0000-0000-' || lpad(i::VARCHAR, 12, '0'))::UUID AS uid
"""


def build(path: Path, rows: int, columns: str = TYPED_COLUMNS) -> str:
    with duckdb.connect(str(path)) as con:
        con.execute(f"CREATE OR REPLACE TABLE t AS SELECT {columns} FROM range({rows}) AS r(i)")
    return f"duckdb:///{path}"


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows dlt's reader turned from tuples into Arrow (one entry per chunk)."""
    calls: list[int] = []
    convert = sql_helpers.row_tuples_to_arrow

    def spy(rows: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(rows))
        return convert(rows, *args, **kwargs)

    monkeypatch.setattr(sql_helpers, "row_tuples_to_arrow", spy)
    return calls


def read(url: str, loader: Any, **kwargs: Any) -> list[pa.Table]:
    warnings.filterwarnings("ignore", module="duckdb_engine")
    kwargs.setdefault("chunk_size", 7)
    resource = sql_table(
        credentials=url, table="t", backend="pyarrow", table_loader_class=loader, **kwargs
    )
    return [item for item in resource if isinstance(item, pa.Table)]


def assert_same_tables(ours: list[pa.Table], dlts: list[pa.Table]) -> None:
    assert [t.num_rows for t in ours] == [t.num_rows for t in dlts]
    for mine, theirs in zip(ours, dlts, strict=True):
        assert mine.schema.equals(theirs.schema, check_metadata=True), (mine.schema, theirs.schema)
        assert mine.equals(theirs)


def test_native_reader_yields_the_tables_dlts_reader_yields(
    tmp_path: Path, conversions: list[int]
) -> None:
    url = build(tmp_path / "w.duckdb", 40)
    dlts = read(url, None)
    assert sum(conversions) == 40  # dlt's reader converted every row
    conversions.clear()
    ours = read(url, NativeArrowTableLoader)
    assert conversions == []  # the native reader ran: no row went through dlt's conversion
    assert [t.num_rows for t in ours] == [7, 7, 7, 7, 7, 5]  # chunk_size rows a batch
    assert_same_tables(ours, dlts)


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_the_time_zone_of_the_backend_is_applied_as_dlt_applies_it(tmp_path: Path, tz: str) -> None:
    url = build(tmp_path / "w.duckdb", 10)
    options = {"backend_kwargs": {"tz": tz}}
    assert_same_tables(read(url, NativeArrowTableLoader, **options), read(url, None, **options))


def test_a_row_limit_and_an_empty_result_read_the_same(
    tmp_path: Path, conversions: list[int]
) -> None:
    url = build(tmp_path / "w.duckdb", 40)
    limited = [sql_table(credentials=url, table="t", backend="pyarrow", chunk_size=7)]
    limited.append(
        sql_table(
            credentials=url,
            table="t",
            backend="pyarrow",
            chunk_size=7,
            table_loader_class=NativeArrowTableLoader,
        )
    )
    dlts, ours = ([t for t in r.add_limit(2) if isinstance(t, pa.Table)] for r in limited)
    assert_same_tables(ours, dlts)
    assert sum(t.num_rows for t in ours) == 14
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("DELETE FROM t")
    conversions.clear()
    assert read(url, NativeArrowTableLoader) == read(url, None) == []


@pytest.mark.parametrize(
    "column",
    [
        "[i, i + 1] AS pair",  # LIST: dlt infers its type from the Python values
        "{'k': i} AS nested",  # STRUCT: the same
        "TIMESTAMP_NS '2024-02-01 01:02:03.123456789' + to_seconds(i) AS nanos",  # dlt: us
    ],
)
def test_a_column_arrow_cannot_give_as_dlt_types_it_leaves_the_table_to_dlts_reader(
    tmp_path: Path, conversions: list[int], column: str
) -> None:
    """The driver's Python values first (dlt infers a type from them, truncates nanoseconds,
    rounds a decimal): that is dlt's reader's to do, so the table is read as without the
    native reader."""
    url = build(tmp_path / "w.duckdb", 20, f"i AS id, {column}")
    dlts = read(url, None)
    conversions.clear()
    ours = read(url, NativeArrowTableLoader)
    assert sum(conversions) == 20
    assert_same_tables(ours, dlts)


def test_the_sqlalchemy_backend_is_left_to_dlt(tmp_path: Path) -> None:
    url = build(tmp_path / "w.duckdb", 10)
    rows = [
        list(sql_table(credentials=url, table="t", backend="sqlalchemy", table_loader_class=c))
        for c in (None, NativeArrowTableLoader)
    ]
    assert len(rows[0]) == 10
    assert rows[0] == rows[1]


@pytest.mark.parametrize(
    ("arrow_type", "column", "native"),
    [
        (pa.decimal128(18, 3), {"data_type": "decimal", "precision": 38, "scale": 9}, True),
        (pa.decimal128(38, 10), {"data_type": "decimal", "precision": 38, "scale": 9}, False),
        (pa.decimal128(38, 2), {"data_type": "decimal", "precision": 30, "scale": 2}, False),
        (pa.timestamp("us", "UTC"), {"data_type": "timestamp"}, True),
        (pa.timestamp("ns"), {"data_type": "timestamp"}, False),
        (pa.timestamp("ns"), {"data_type": "timestamp", "precision": 9}, True),
        (pa.time64("ns"), {"data_type": "time"}, False),
        (pa.string(), {"data_type": "bigint"}, False),
        (pa.int32(), {"data_type": "bigint"}, True),
        (pa.int32(), {}, False),
        (pa.decimal128(38, 0), {"data_type": "bigint"}, True),
        (pa.float32(), {"data_type": "double"}, True),
        (pa.int64(), {"data_type": "double"}, False),
        (pa.dictionary(pa.uint8(), pa.string()), {"data_type": "text"}, True),
        (pa.month_day_nano_interval(), {"data_type": "text"}, False),
        (pa.binary(), {"data_type": "binary"}, True),
        (pa.date32(), {"data_type": "date"}, True),
    ],
)
def test_a_column_is_read_natively_only_where_arrow_casts_it_without_loss(
    arrow_type: pa.DataType, column: dict[str, Any], native: bool
) -> None:
    from dlt.common.destination import DestinationCapabilitiesContext

    caps = DestinationCapabilitiesContext.generic_capabilities()
    schema = pa.schema([pa.field("c", arrow_type)])
    assert castable(schema, {"c": {"name": "c", **column}}, caps, "UTC") is native  # type: ignore[dict-item]
    assert castable(schema, {}, caps, "UTC") is False


def test_batches_of_any_size_become_tables_of_chunk_size_rows() -> None:
    numbers = pa.array(range(23))
    sizes = [1, 9, 0, 4, 9]
    batches, start = [], 0
    for size in sizes:
        batches.append(pa.record_batch([numbers.slice(start, size)], names=["n"]))
        start += size
    tables = list(exact_chunks(batches, 5))
    assert [t.num_rows for t in tables] == [5, 5, 5, 5, 3]
    assert pa.concat_tables(tables).column("n").to_pylist() == list(range(23))
    assert all(t.column("n").num_chunks == 1 for t in tables)
    assert list(exact_chunks([], 5)) == []


# -- the incremental cursor, through pipelines ---------------------------------------------------


def sync_rounds(url: str, path: Path, loader: Any, pipelines_dir: Path) -> Iterator[Any]:
    """Three extracts of an incremental table with rows added (some at the last cursor value)
    between them; yields per round the rows extracted and the cursor dlt keeps."""
    pipeline = dlt.pipeline(
        f"incremental_{'native' if loader else 'dlt'}",
        destination=dlt.destinations.duckdb(str(pipelines_dir / "loaded.duckdb")),
        pipelines_dir=str(pipelines_dir),
        dev_mode=True,
    )
    for round_ in range(3):
        resource = sql_table(
            credentials=url,
            table="t",
            backend="pyarrow",
            chunk_size=4,
            incremental=dlt.sources.incremental("naive", row_order="asc"),
            primary_key="id",
            table_loader_class=loader,
        )
        pipeline.run(resource)
        with pipeline.sql_client() as client:
            rows = client.execute_sql("SELECT id, naive, amount, name FROM t ORDER BY id")
        state = pipeline.state["sources"][pipeline.default_schema_name]["resources"]["t"]
        yield round_, sorted(rows), state["incremental"]["naive"]
        with duckdb.connect(str(path)) as con:
            base = 100 * (round_ + 1)
            # a row at the last cursor value dlt has not seen, and later ones
            con.execute(
                f"""INSERT INTO t (id, naive, amount, name)
                SELECT {base} + i, (SELECT max(naive) FROM t) + to_seconds(i * 60), i / 4.0,
                'late ' || i FROM range(3) AS r(i)"""
            )
    # no later read in this process takes its incremental state from this pipeline
    pipeline.deactivate()


@pytest.mark.slow
def test_incremental_loads_are_the_same_with_either_reader(
    tmp_path: Path, conversions: list[int]
) -> None:
    results = {}
    for name, loader in (("dlt", None), ("native", NativeArrowTableLoader)):
        path = tmp_path / f"{name}.duckdb"
        url = build(path, 10)
        conversions.clear()
        results[name] = list(sync_rounds(url, path, loader, tmp_path / f"pipelines_{name}"))
        if loader is not None:
            assert conversions == []
    assert results["native"] == results["dlt"]
    # the rounds moved the cursor and loaded the new rows, the row at the cursor value included
    counts = [len(rows) for _, rows, _ in results["dlt"]]
    assert counts == [10, 13, 16]


# -- the shipped warehouse sync ------------------------------------------------------------------


def _warehouse_module() -> Any:
    name = "warehouse_to_customerio"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("native", [True, False])
def test_the_warehouse_sync_reads_arrow_natively_unless_told_not_to(
    tmp_path: Path, conversions: list[int], native: bool
) -> None:
    wh = _warehouse_module()
    url = build(tmp_path / "w.duckdb", 20)
    tables = {"people": {"table": "t", "incremental": "naive", "primary_key": "id"}}

    def extract(native_arrow: bool) -> list[pa.Table]:
        source = wh.warehouse.with_args(name="warehouse")(
            credentials=url, tables=tables, backend="pyarrow", native_arrow=native_arrow
        )
        return [item for item in source.resources["people"] if isinstance(item, pa.Table)]

    dlts = extract(False)
    assert sum(conversions) == 20
    conversions.clear()
    tables_read = extract(native)
    assert sum(conversions) == (0 if native else 20)
    assert_same_tables(tables_read, dlts)


# -- PostgreSQL, through ADBC ----------------------------------------------------------------------

PG_COLUMNS = """
    i AS id, i::int AS small, i::smallint AS tiny, CASE WHEN i % 5 = 0 THEN NULL ELSE i::bigint * 1000000007 END AS big,
    CASE WHEN i % 4 = 0 THEN NULL ELSE i / 3.0 END::float8 AS ratio,
    (CASE WHEN i % 6 = 0 THEN NULL ELSE i / 8.0 END)::numeric(18, 3) AS amount,
    (i * 12345.678901)::numeric(38, 10) AS wide,
    CASE WHEN i % 3 = 0 THEN NULL ELSE 'name ' || i || ' é' END AS name, i % 2 = 0 AS flag,
    DATE '2024-01-01' + i AS day,
    TIMESTAMP '2024-01-01 00:00:00.123456' + i * INTERVAL '1 hour' AS naive,
    CASE WHEN i % 7 = 0 THEN NULL
         ELSE TIMESTAMPTZ '2024-01-01 00:00:00+05' + i * INTERVAL '1 second' END AS aware,
    TIME '01:02:03.5' AS clock, convert_to('bytes' || i, 'UTF8') AS raw
"""


@pytest.fixture
def pg_table(postgres_url: str) -> Iterator[Any]:  # noqa: F811
    """The server's URL and a function (re)creating table `t` in a schema of its own, which
    it returns; the schema is dropped after the test."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    schema = f"cio_{uuid.uuid4().hex[:12]}"

    def create(columns: str, rows: int) -> str:
        with engine.begin() as connection:
            connection.exec_driver_sql(
                f"DROP TABLE IF EXISTS {schema}.t;"
                f" CREATE TABLE {schema}.t AS SELECT {columns} FROM generate_series(1, {rows}) AS i".replace(
                    "%", "%%"
                )
            )
        return schema

    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield postgres_url, create
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.mark.slow
def test_postgres_tables_read_through_adbc_are_the_tables_dlts_reader_yields(
    pg_table: Any, conversions: list[int]
) -> None:
    url, create = pg_table
    schema = create(PG_COLUMNS, 40)
    dlts = read(url, None, schema=schema)
    assert sum(conversions) == 40
    conversions.clear()
    ours = read(url, NativeArrowTableLoader, schema=schema)
    assert conversions == []  # ADBC ran
    assert_same_tables(ours, dlts)
    # the cursor's bound values (a timestamp, a date, a number) reach ADBC as SQLAlchemy binds
    # them, and select the same rows
    for cursor in ("naive", "day", "id"):
        start = sorted(pa.concat_tables(dlts).column(cursor).to_pylist())[10]
        bounded = {
            "incremental": dlt.sources.incremental(cursor, initial_value=start),
            "schema": schema,
        }
        conversions.clear()
        ours = read(url, NativeArrowTableLoader, **bounded)
        assert conversions == []
        assert_same_tables(ours, read(url, None, **bounded))
        assert sum(t.num_rows for t in ours) == 30


@pytest.mark.slow
@pytest.mark.parametrize(
    "column",
    [
        "('{\"a\": ' || i || '}')::jsonb AS doc",  # PostgreSQL's JSON text, not dlt's
        "gen_random_uuid() AS u",  # an extension type
        "(i / 3.0)::real AS single",  # the driver's float is the real's shortest text
        "i::numeric AS plain",  # no declared scale: dlt's default decimal
    ],
)
def test_postgres_columns_adbc_gives_otherwise_leave_the_table_to_dlts_reader(
    pg_table: Any, conversions: list[int], column: str
) -> None:
    url, create = pg_table
    schema = create(f"i AS id, {column}", 12)
    dlts = read(url, None, schema=schema)
    conversions.clear()
    ours = read(url, NativeArrowTableLoader, schema=schema)
    assert sum(conversions) == 12
    assert_same_tables(ours, dlts)


@pytest.mark.slow
def test_postgres_without_adbc_is_read_by_dlts_reader(
    pg_table: Any, conversions: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, create = pg_table
    schema = create("i AS id, 'name ' || i AS name", 12)
    monkeypatch.setitem(sys.modules, "adbc_driver_postgresql", None)  # not installed
    monkeypatch.setitem(sys.modules, "adbc_driver_postgresql.dbapi", None)
    ours = read(url, NativeArrowTableLoader, schema=schema)
    assert sum(conversions) == 12
    assert sum(t.num_rows for t in ours) == 12
