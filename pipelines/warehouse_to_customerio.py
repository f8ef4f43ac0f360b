"""Sync tables of any SQL warehouse into Customer.io, declared in config, incrementally.

    cd pipelines                                   # dlt reads ./.dlt/config.toml and secrets.toml
    cp .dlt/secrets.toml.example .dlt/secrets.toml # then fill in the warehouse URL and API keys
    python warehouse_to_customerio.py              # again later: only rows whose cursor moved

Which tables to read, and how, is declared under `[sources.warehouse]`; how each table's rows map
to Customer.io under `[destination.customerio.tables.<table>]`. Adding a table means adding config:

    [sources.warehouse]                     # credentials: SQLAlchemy URL, in secrets.toml
    backend = "sqlalchemy"                  # or "pyarrow"
    [sources.warehouse.tables.users]
    incremental = "updated_at"              # the cursor column
    [destination.customerio.tables.users]
    action = "identify"
    identifier = "email"
    identifier_type = "email"

Every key can also come from the environment (`SOURCES__WAREHOUSE__CREDENTIALS`,
`DESTINATION__CUSTOMERIO__API_KEY`, `SOURCES__WAREHOUSE__TABLES` as a JSON object, ...), as
everywhere in dlt. The README's "Sync a real warehouse" lists every key with its default.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import dlt
import sqlalchemy as sa
from dlt.common.configuration.exceptions import ConfigurationValueError
from dlt.common.pipeline import LoadInfo
from dlt.extract import DltResource
from dlt.sources.credentials import ConnectionStringCredentials
from dlt.sources.sql_database import sql_table
from sqlalchemy.exc import NoSuchModuleError, NoSuchTableError

from cio_destination import (
    MappingError,
    SyncReport,
    customerio,
    mark_non_finite,
    rejected_rows,
    restore_state,
    run_command,
    run_lease,
    sync_report,
)
from cio_destination import dry_run as run_dry
from cio_destination.arrow_reader import NativeArrowTableLoader
from cio_destination.progress import PROGRESS, sync_progress

PIPELINE_NAME = "warehouse_to_customerio"
BACKENDS = ("sqlalchemy", "pyarrow")
TABLE_KEYS = ("incremental", "initial_value", "primary_key", "schema", "table")
# where CAST(<json column> AS TEXT) is the JSON document (BigQuery, for one, refuses the cast)
JSON_TEXT_DIALECTS = frozenset({"postgresql", "mysql", "mariadb", "sqlite", "duckdb"})


@dataclass(frozen=True)
class TableSource:
    """How one table is read: `[sources.warehouse.tables.<name>]`.

    `name` is the section name: the name of the dlt resource and of the Customer.io mapping
    (`[destination.customerio.tables.<name>]`); `table` is the warehouse table or view to read,
    the section name unless given, so one warehouse table can feed several syncs.
    """

    name: str
    table: str
    incremental: str | None = None
    initial_value: Any = None
    primary_key: tuple[str, ...] | None = None
    schema: str | None = None

    @classmethod
    def from_config(cls, name: str, entry: Any) -> TableSource:
        """Read and check one table entry; errors name the config key to fix."""
        where = f"sources.warehouse.tables.{name}"
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise ConfigurationValueError(
                f"{where} must be a table of keys ({', '.join(TABLE_KEYS)})"
            )
        unknown = sorted(set(entry) - set(TABLE_KEYS))
        if unknown:
            raise ConfigurationValueError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(TABLE_KEYS)}"
            )
        for key in ("incremental", "schema", "table"):
            if entry.get(key) is not None and not (
                isinstance(entry[key], str) and entry[key].strip()
            ):
                raise ConfigurationValueError(f"{where}.{key} must be a non-empty string")
        primary_key = entry.get("primary_key")
        if isinstance(primary_key, str):
            primary_key = [primary_key]
        if primary_key is not None and not (
            isinstance(primary_key, Sequence)
            and primary_key
            and all(isinstance(c, str) and c for c in primary_key)
        ):
            raise ConfigurationValueError(
                f"{where}.primary_key must be a column name or a list of column names"
            )
        if entry.get("initial_value") is not None and not entry.get("incremental"):
            raise ConfigurationValueError(
                f"{where}.initial_value needs {where}.incremental (the cursor column)"
            )
        return cls(
            name=name,
            table=entry.get("table") or name,
            incremental=entry.get("incremental"),
            initial_value=entry.get("initial_value"),
            primary_key=tuple(primary_key) if primary_key else None,
            schema=entry.get("schema"),
        )


def table_sources(tables: Mapping[str, Any] | None) -> list[TableSource]:
    """The checked `[sources.warehouse.tables.*]` entries, in config order."""
    if not tables:
        raise ConfigurationValueError(
            "sources.warehouse.tables: no table to sync; declare one as"
            " [sources.warehouse.tables.<table>] with its cursor column, e.g."
            ' incremental = "updated_at"'
        )
    return [TableSource.from_config(name, entry) for name, entry in tables.items()]


def json_as_text(
    query: Any, table: sa.Table, incremental: Any = None, engine: sa.Engine | None = None
) -> Any:
    """A `sql_table` query adapter: select JSON columns as JSON text, with either backend.

    With the pyarrow backend, dlt turns a column of JSON objects into one Arrow struct whose
    fields are every key of every row, so each object would reach Customer.io with the keys of
    the others added as nulls. With the sqlalchemy backend, the driver decodes each document and
    dlt reads a decoded string that looks like JSON once more (the document '"123"' became the
    number 123), so a JSON string would differ from the pyarrow backend's, and so would the
    event id keyed on it. Read as text, each document arrives exactly as stored, and is read
    once (by dlt for dict rows, by the destination for Arrow). Only on databases whose CAST of
    a JSON value to text gives its JSON text (`JSON_TEXT_DIALECTS`); elsewhere the query is left
    as it is.
    """
    if engine is not None and engine.dialect.name not in JSON_TEXT_DIALECTS:
        return query
    return query.with_only_columns(
        *(
            sa.cast(column, sa.Text).label(column.name)
            if isinstance(column.type, sa.JSON)
            else column
            for column in query.selected_columns
        )
    )


def json_typed_metadata(schema: str | None = None) -> sa.MetaData:
    """A `MetaData` for `sql_table(metadata=...)` whose reflection types DuckDB's JSON columns
    as JSON.

    duckdb_engine reflects DuckDB's JSON type as VARCHAR (it reads the PostgreSQL-style catalog,
    where JSON is varchar), so dlt would type the column as text and each document would reach
    Customer.io as a JSON string. DuckDB's information_schema keeps the type; typed as JSON, the
    columns are read as JSON text (`json_as_text`) and their documents sent as the values they
    hold.
    Other databases reflect their JSON types themselves and are left as they are.
    """
    metadata = sa.MetaData(schema=schema)
    found: dict[tuple[str | None, str], set[str]] = {}

    def json_columns(connection: Any, table: sa.Table) -> set[str]:
        key = (table.schema, table.name)
        if key not in found:
            rows = connection.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = :t"
                    " AND table_schema = COALESCE(:s, current_schema()) AND data_type = 'JSON'"
                ),
                {"t": table.name, "s": table.schema},
            )
            found[key] = {row[0] for row in rows}
        return found[key]

    @sa.event.listens_for(metadata, "column_reflect")
    def _json_type(inspector: Any, table: sa.Table, column: dict[str, Any]) -> None:
        if inspector.dialect.name != "duckdb":
            return
        if column["name"] in json_columns(inspector.bind, table):
            column["type"] = sa.JSON()

    return metadata


def table_resource(
    source: TableSource,
    credentials: ConnectionStringCredentials | str,
    *,
    backend: str = "sqlalchemy",
    chunk_size: int = 50_000,
    schema: str | None = None,
    native_arrow: bool = True,
) -> DltResource:
    """A `sql_table` resource for one table entry, named after its config section; with the
    pyarrow backend and `native_arrow`, read as Arrow by the driver where it can
    (`NativeArrowTableLoader`)."""
    incremental = None
    if source.incremental:
        incremental = dlt.sources.incremental(
            source.incremental, initial_value=source.initial_value
        )
    metadata = json_typed_metadata(source.schema or schema)
    try:
        resource = sql_table(
            credentials=credentials,
            table=source.table,
            schema=source.schema or schema,
            backend=backend,  # type: ignore[arg-type]
            chunk_size=chunk_size,
            incremental=incremental,
            primary_key=list(source.primary_key) if source.primary_key else None,
            query_adapter_callback=json_as_text,
            metadata=metadata,
            table_loader_class=NativeArrowTableLoader if native_arrow else None,
        )
    except NoSuchTableError as error:
        where = f"sources.warehouse.tables.{source.name}"
        raise ConfigurationValueError(
            f"{where}: the warehouse has no table or view {source.table!r} in schema"
            f" {source.schema or schema or '(the default)'}; name the warehouse table with"
            f" {where}.table, its schema with {where}.schema"
        ) from error
    reflected = next((t for t in metadata.tables.values() if t.name == source.table), None)
    if reflected is not None:
        check_columns(source, reflected)
    if source.name != source.table:
        resource = resource.with_name(source.name)
    # NaN and infinity in dict rows: dlt's writer would make them nulls; noted, they are rejected
    return mark_non_finite(resource)  # type: ignore[no-any-return]


# The Python type of a cursor column -> the initial values it can be compared with, and how to
# write one in config.toml
_INITIAL_VALUES: tuple[tuple[type, tuple[type, ...], str], ...] = (
    (datetime, (datetime,), "a TOML date-time without quotes, e.g. 2024-01-01T00:00:00Z"),
    (date, (date,), "a TOML date without quotes, e.g. 2024-01-01"),
    (Decimal, (int, float, Decimal), "a number without quotes"),
    (float, (int, float, Decimal), "a number without quotes"),
    (int, (int, float, Decimal), "a number without quotes"),
    (str, (str,), "a quoted string"),
)


def check_columns(source: TableSource, table: sa.Table) -> None:
    """The columns a table entry names are the table's, and its `initial_value` can be compared
    with its cursor column, so a wrong entry stops the run before anything is read, naming the
    key (dlt would fail while reading, as if the warehouse were at fault)."""
    where = f"sources.warehouse.tables.{source.name}"
    named = [
        ("incremental", source.incremental),
        *(("primary_key", c) for c in source.primary_key or ()),
    ]
    for key, column in named:
        if column is not None and column not in table.c:
            columns = ", ".join(table.c.keys())
            raise ConfigurationValueError(
                f"{where}.{key}: the warehouse table or view {source.table!r} has no column"
                f" {column!r} (its columns: {columns})"
            )
    value = source.initial_value
    if value is None or source.incremental is None:
        return
    try:
        python_type = table.c[source.incremental].type.python_type
    except NotImplementedError:
        return  # a type SQLAlchemy cannot say: the warehouse will tell
    for kind, accepted, how in _INITIAL_VALUES:
        if issubclass(python_type, kind):
            fits = isinstance(value, accepted) and not isinstance(value, bool)
            if kind is date and isinstance(value, datetime):
                fits = False  # a date column's values are dates, never comparable with a time
            if not fits:
                raise ConfigurationValueError(
                    f"{where}.initial_value cannot be compared with the values of the cursor"
                    f" column {source.incremental!r} ({python_type.__name__}): give {how}"
                )
            return


@dlt.source(name="warehouse", section="warehouse")
def warehouse(
    credentials: ConnectionStringCredentials = dlt.secrets.value,
    tables: dict[str, Any] = dlt.config.value,
    backend: str = "sqlalchemy",
    chunk_size: int = 50_000,
    schema: str | None = None,
    native_arrow: bool = True,
) -> list[DltResource]:
    """The warehouse tables declared under `[sources.warehouse]`, one `sql_table` each.

    Args:
        credentials: SQLAlchemy URL of the warehouse (a secret: `secrets.toml` or
            `SOURCES__WAREHOUSE__CREDENTIALS`).
        tables: `[sources.warehouse.tables.<name>]` entries, see `TableSource`.
        backend: `sqlalchemy` (rows as dicts) or `pyarrow` (Arrow batches, faster on big tables).
        chunk_size: rows per batch read from the warehouse.
        schema: database schema of tables whose entry names none; default: the connection's.
        native_arrow: with the pyarrow backend, read Arrow from the database where it can
            (DuckDB; PostgreSQL with the `postgres-arrow` extra), with the same tables as
            dlt's reader for less CPU a row (`NativeArrowTableLoader`); false: dlt's reader.
    """
    if backend not in BACKENDS:
        raise ConfigurationValueError(
            f"sources.warehouse.backend must be one of {', '.join(BACKENDS)}, not {backend!r}"
        )
    if chunk_size < 1:
        raise ConfigurationValueError("sources.warehouse.chunk_size must be >= 1")
    check_dialect(credentials)
    return [
        table_resource(
            t,
            credentials,
            backend=backend,
            chunk_size=chunk_size,
            schema=schema,
            native_arrow=native_arrow,
        )
        for t in table_sources(tables)
    ]


def check_dialect(credentials: ConnectionStringCredentials | str) -> None:
    """SQLAlchemy has the dialect and the driver the warehouse URL names: a missing one is a
    package to install, said once, before any table is read. Nothing connects here."""
    url = (
        credentials.to_native_representation()
        if isinstance(credentials, ConnectionStringCredentials)
        else str(credentials)
    )
    try:
        dialect = sa.engine.make_url(url).drivername
    except sa.exc.ArgumentError:
        return  # not a URL SQLAlchemy reads: sql_table says so
    try:
        sa.create_engine(url).dispose()
    except NoSuchModuleError:
        raise ConfigurationValueError(
            f"sources.warehouse.credentials: SQLAlchemy has no dialect {dialect!r} installed;"
            " install its package in this environment (e.g. snowflake-sqlalchemy,"
            " sqlalchemy-bigquery, sqlalchemy-redshift)"
        ) from None
    except ImportError as error:
        raise ConfigurationValueError(
            f"sources.warehouse.credentials: the driver of SQLAlchemy dialect {dialect!r} is not"
            f" installed (no module {error.name!r}); install it in this environment (e.g."
            " psycopg2-binary for postgresql)"
        ) from None


def check_mappings(names: Sequence[str], mappings: Mapping[str, Any] | None) -> None:
    """Fail before reading anything when a table to sync has no Customer.io mapping in config."""
    for name in names:
        if not (mappings or {}).get(name):
            raise MappingError(
                name,
                "action",
                "the table is declared under [sources.warehouse.tables] but has no Customer.io"
                " mapping",
            )


@dataclass
class SyncResult:
    """What one sync did: dlt's load info, rows per table, and the rows Customer.io refused."""

    pipeline: dlt.Pipeline
    load_info: LoadInfo | None
    """dlt's account of this sync's load of new and changed rows."""
    resumed_loads: list[str] = field(default_factory=list)
    """Loads an earlier, failed run left pending, finished before reading anything new."""
    rows: dict[str, int] = field(default_factory=dict)
    """New and changed rows per table handed to Customer.io (sent, or rejected and recorded)."""
    rejected: list[dict[str, Any]] = field(default_factory=list)
    """Rejected rows of every load of this sync, as `rejected_rows(pipeline)` yields them."""
    reports: list[SyncReport] = field(default_factory=list)
    """The destination's report of every load of this sync (one, marked dry run, for a dry run)."""

    def summary(self) -> str:
        """A few lines for a person: rows sent and rejected per table, rejections by reason."""
        if any(report.dry_run for report in self.reports):
            return "\n".join(str(report) for report in self.reports)
        return "\n".join([self._rows_summary(), *(str(report) for report in self.reports)])

    def _rows_summary(self) -> str:
        loads = [*self.resumed_loads, *self.load_info.loads_ids]
        lines = [f"pipeline {self.pipeline.pipeline_name}: loads {', '.join(loads) or 'none'}"]
        lines += [
            f"  finished load {load_id}, left pending by an earlier run"
            for load_id in self.resumed_loads
        ]
        new_loads = set(self.load_info.loads_ids)
        # an attribute dropped for its size is recorded with the rejections, but its row was sent
        rejected = [r for r in self.rejected if r["reason"] != "attribute_dropped"]
        dropped = [r for r in self.rejected if r["reason"] == "attribute_dropped"]
        rejected_now = Counter(r["table"] for r in rejected if r["load_id"] in new_loads)
        for table, count in sorted(self.rows.items()):
            bad = rejected_now[table]
            lines.append(f"  {table}: {count - bad} sent, {bad} rejected")
        if not self.rows:
            lines.append("  nothing new to send")
        lines.append(f"rejected rows: {len(rejected)}")
        reasons = Counter((r["table"], r["reason"], r["field"]) for r in rejected)
        for (table, reason, column), count in sorted(reasons.items()):
            lines.append(f"  {table}: {count} x {reason} ({column})")
        if dropped:
            lines.append(f"attributes dropped from rows sent without them: {len(dropped)}")
            columns = Counter((r["table"], r["field"]) for r in dropped)
            for (table, column), count in sorted(columns.items()):
                lines.append(f"  {table}: {count} x {column} (over the 1000-byte value limit)")
        if self.rejected:
            lines.append(
                "  inspect them with cio_destination.rejected_rows(pipeline, load_id=...):"
                " each has row_key, reason, field, message and the row"
            )
        return "\n".join(lines)


def sync(
    pipeline_name: str = PIPELINE_NAME,
    *,
    tables: Sequence[str] | None = None,
    full_refresh: bool = False,
    progress: str = "auto",
    pipelines_dir: str | None = None,
    dry_run: bool = False,
) -> SyncResult:
    """Run the sync once: loads a failed run left pending first (resume), then what changed.

    Args:
        pipeline_name: dlt pipeline name; its working dir keeps the cursors and the rejects.
        tables: sync only these of the configured tables (default: all).
        full_refresh: forget the incremental cursors and send every row again (events keep their
            ids, so Customer.io ignores the ones it has).
        progress: `auto` (default: a bar on a terminal, a block of counters every 30 s in a
            log, nothing on a short sync), `log` (dlt's, every second), `tqdm`, `enlighten`,
            `alive_progress` or `none` (see `cio_destination.progress`).
        pipelines_dir: where pipelines keep their state (default: dlt's, `~/.dlt/pipelines`).
        dry_run: map, validate and batch everything on a scratch copy of the pipeline, send
            nothing, and keep every cursor where it is; the result carries the report.
    """
    pipeline = dlt.pipeline(
        pipeline_name,
        destination=customerio(),
        pipelines_dir=pipelines_dir,
        progress=sync_progress(progress),
    )
    # with state_url: the lease (one run of the pipeline at a time), held across both runs
    # below, and the cursors of the last completed load on a runner that starts empty; without
    # it, nothing
    with run_lease(pipeline):
        restore_state(pipeline)
        return _run(pipeline, tables, full_refresh, dry_run)


def _run(
    pipeline: dlt.Pipeline, tables: Sequence[str] | None, full_refresh: bool, dry_run: bool
) -> SyncResult:
    resumed: list[str] = []
    if pipeline.has_pending_data and not dry_run:
        # with pending packages dlt.run() loads only those and drops the new data: finish them
        # first (that needs no warehouse), then read what changed
        resumed = pipeline.run().loads_ids

    source = warehouse()
    names = list(source.resources.keys())
    if tables:
        missing = sorted(set(tables) - set(names))
        if missing:
            raise ConfigurationValueError(
                f"table(s) {', '.join(missing)} not declared under [sources.warehouse.tables]"
            )
        source = source.with_resources(*tables)
        names = list(tables)
    check_mappings(names, dlt.config.get("destination.customerio.tables", dict))
    refresh = None
    if full_refresh:
        # a subset forgets only its own cursors; the whole source also drops its schema
        refresh = "drop_resources" if tables else "drop_sources"
    if dry_run:
        report = run_dry(pipeline, source, refresh=refresh)
        rows = {t.table: t.rows_in for t in report.tables}
        info = pipeline.last_trace.last_load_info if pipeline.last_trace else None
        return SyncResult(pipeline=pipeline, load_info=info, rows=rows, reports=[report])
    info = pipeline.run(source, refresh=refresh)  # type: ignore[arg-type]

    normalized = pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
    row_counts = normalized.row_counts if normalized else {}
    rows = {t: n for t, n in row_counts.items() if not t.startswith("_dlt")}
    rejected = [
        r
        for load_id in [*resumed, *info.loads_ids]
        for r in rejected_rows(pipeline, load_id=load_id)
    ]
    reports = [sync_report(pipeline, load_id) for load_id in [*resumed, *info.loads_ids]]
    return SyncResult(
        pipeline=pipeline,
        load_info=info,
        resumed_loads=resumed,
        rows=rows,
        rejected=rejected,
        reports=reports,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit code (see `run_command`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-name", default=PIPELINE_NAME, help="dlt pipeline name")
    parser.add_argument(
        "--table",
        action="append",
        dest="tables",
        metavar="NAME",
        help="sync only this configured table (repeatable; default: all)",
    )
    parser.add_argument(
        "--full-refresh",
        action="store_true",
        help="forget the incremental cursors and send every row again",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="map, validate and batch everything, send nothing, keep the cursors; print the report",
    )
    parser.add_argument(
        "--progress",
        choices=PROGRESS,
        default="auto",
        help="progress output (default: auto, a bar on a terminal, every 30 s in a log)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="duckdb_engine")

    def run() -> int:
        result = sync(
            args.pipeline_name,
            tables=args.tables,
            full_refresh=args.full_refresh,
            progress=args.progress,
            dry_run=args.dry_run,
        )
        print(result.summary())
        return 0

    # 0 done (rejected rows included), 1 failed: run again to resume, 2 a setting or mapping
    # to fix; a failure is one line on stderr
    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
