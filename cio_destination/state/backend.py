"""The one seam every state repository goes through: a SQL store, local or behind `state_url`.

* `StateFile`: one SQLite file in the pipeline's working directory
  (`<working_dir>/customerio/state.sqlite`), the embedded default;
* `SqlStore`: any database SQLAlchemy reaches by `state_url` (PostgreSQL first-class, SQLite and
  DuckDB too), shared by every pipeline that names it, its tables in `state_schema`.

A repository (`cio_destination.state.rejects`, `.reports`, `.ledger`, `.fingerprints`,
`.snapshots`, `.runs`) declares its tables (`TABLES`, one DDL each, `{blob}` for a binary type,
`{external_blob}` for one PostgreSQL stores uncompressed: written whole, never compressed)
and reaches the store only through `read` and `transaction`, in SQL both backends speak: `?`
parameters, `{name}` for a table (schema-qualified by the store), `ON CONFLICT` upserts. Every
row carries its pipeline's name, so pipelines can share one store. The store records the version
of its tables' layout (`SCHEMA_VERSION`), so a later release can migrate them; a file of the
layout before that version is migrated on open.

Writes are batched per call (`Transaction.upsert` sends many rows per statement; `upsert_table`
takes an Arrow table, which PostgreSQL gets as one binary COPY Arrow writes, and reads of
many rows come back as one Arrow table, `StateStore.read_table`). Only a
`durable` transaction (the send ledger's claims) is synced to disk before it returns; the rest
may be lost by a power cut (never by a crash of the process), which costs at most work done again.
Any failure surfaces as a `StateFileError` naming the file, or as `database_error` says for a URL.
"""

from __future__ import annotations

import io
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from cio_destination.exceptions import (
    CustomerioError,
    CustomerioTerminalError,
    CustomerioTransientError,
    StateFileError,
)

STATE_DIR = "customerio"
STATE_FILE = "state.sqlite"
SCHEMA_VERSION = 4
"""The layout of the state tables this release writes (recorded in `cio_state_meta`). 2 added
`cio_source_hashes`; 3 adds `cio_fingerprint_segments` (`cio_destination.state.segments`); 4
adds `cio_source_hash_parts` (a copy of source-row hashes kept in parts, its row holding their
mark). An older layout is upgraded by making the tables it lacks (on PostgreSQL, their blobs
stored uncompressed): its rows are read as they are. A release of an older layout refuses a
store of this one (it would not read the segments, and send everyone again; nor read a copy
kept in parts)."""

_META = """
    CREATE TABLE IF NOT EXISTS {cio_state_meta} (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
"""
_ROWS_PER_STATEMENT = 500
_COPY_ROWS = 1_000
"""Writes of this many rows or more stream them with COPY, where the database has it."""
_UNIQUE_VIOLATION = "23505"
"""PostgreSQL's SQLSTATE for a key kept already."""


def state_path(working_dir: str | Path) -> Path:
    """Where the state file of a pipeline working directory lives."""
    return Path(working_dir) / STATE_DIR / STATE_FILE


class _Names(dict):  # type: ignore[type-arg]
    """`{name}` in a statement -> the table's name as the store spells it."""

    def __init__(self, schema: str | None, quote: Callable[[str], str]) -> None:
        super().__init__()
        self._prefix = f"{quote(schema)}." if schema else ""

    def __missing__(self, key: str) -> str:
        return f"{self._prefix}{key}"


class Transaction:
    """One transaction of a store: committed as a whole, or rolled back."""

    def __init__(
        self,
        execute: Callable[[str, Sequence[Any]], Any],
        many: bool,
        array_types: Mapping[str, Mapping[str, str]] | None = None,
        copy: Callable[[str, Sequence[str], list[Sequence[Any]]], str] | None = None,
        copy_table: Callable[[str, pa.Table, bool], str | None] | None = None,
    ) -> None:
        """`many`: the driver runs one statement over many rows (sqlite3's executemany);
        `array_types`: the column types of each table, where the database takes whole arrays
        as parameters (PostgreSQL): then a write is one statement, however many its rows;
        `copy`: streams rows into a scratch table like the table named (PostgreSQL's COPY),
        returning its name, for large writes; `copy_table`: the same for an Arrow table (its
        binary COPY), or straight into the table (then None), see `upsert_table`."""
        self._execute = execute
        self._many = many
        self._arrays = array_types
        self._copy = copy
        self._copy_table = copy_table

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows, if it returns any."""
        return self._execute(sql, params)

    def upsert(
        self,
        table: str,
        columns: Sequence[str],
        keys: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        distinct: bool = False,
    ) -> None:
        """Insert `rows`, replacing the rows with the same `keys`; many rows per statement.
        A key given twice keeps its last row (`distinct`: the caller's rows have no such twins)."""
        if distinct:
            unique = list(rows)
        else:
            positions = [columns.index(k) for k in keys]
            unique = list({tuple(row[p] for p in positions): row for row in rows}.values())
        if not unique:
            return
        conflict = _on_conflict(columns, keys)
        head = f"INSERT INTO {{{table}}} ({', '.join(columns)}) "
        if self._copy is not None and len(unique) >= _COPY_ROWS:
            scratch = self._copy(table, columns, unique)
            self._execute(f"{head}SELECT {', '.join(columns)} FROM {scratch} {conflict}", [])
            self._execute(f"TRUNCATE {scratch}", [])  # (see `upsert_table`)
            return
        if self._arrays is not None:  # one array per column, unnested by the server
            types = self._arrays[table]
            arrays = ", ".join(f"?::{types[c]}[]" for c in columns)
            self._execute(
                f"{head}SELECT * FROM unnest({arrays}) {conflict}",
                [list(column) for column in zip(*unique, strict=True)],
            )
            return
        marks = "(" + ",".join("?" * len(columns)) + ")"
        if self._many:
            self._execute(f"{head}VALUES {marks} {conflict}", unique)
            return
        for start in range(0, len(unique), _ROWS_PER_STATEMENT):
            chunk = unique[start : start + _ROWS_PER_STATEMENT]
            values = [value for row in chunk for value in row]
            self._execute(f"{head}VALUES {','.join([marks] * len(chunk))} {conflict}", values)

    def upsert_table(
        self,
        table: str,
        keys: Sequence[str],
        data: pa.Table,
        constants: Mapping[str, Any],
        *,
        new: bool = False,
        blobs: bool = False,
    ) -> bool:
        """`upsert` of the rows of an Arrow table (binary columns for blobs), each with the
        `constants` too; its `keys` are distinct. PostgreSQL gets one binary COPY of the table,
        written by Arrow (`new`: its keys are most likely not kept yet, so the COPY goes
        straight into the table, and through a scratch table only if one was), if its rows are
        many or carry large `blobs` (as parameters, a blob goes as escaped text); the other
        databases get its rows, as `upsert` writes them. True: every row was inserted, none
        replaced one kept (known only of a COPY that went straight in)."""
        if not len(data):
            return True
        columns = [*constants, *data.column_names]
        if self._copy_table is None or (len(data) < _COPY_ROWS and not blobs):
            values = [column.to_pylist() for column in data.columns]
            rows = [(*constants.values(), *row) for row in zip(*values, strict=True)]
            self.upsert(table, columns, [*constants, *keys], rows, distinct=True)
            return False
        for position, (name, value) in enumerate(constants.items()):
            data = data.add_column(position, name, pa.repeat(value, len(data)))
        scratch = self._copy_table(table, data, new)
        if scratch is None:
            return True
        listed = ", ".join(columns)
        conflict = _on_conflict(columns, [*constants, *keys])
        self._execute(
            f"INSERT INTO {{{table}}} ({listed}) SELECT {listed} FROM {scratch} {conflict}", []
        )
        # emptied now, not only at the commit: a later upsert of the table in the same
        # transaction must not take these rows again (a copy dropped since would come back)
        self._execute(f"TRUNCATE {scratch}", [])
        return False

    def delete_in(
        self, table: str, where: str, params: Sequence[Any], column: str, values: Sequence[Any]
    ) -> None:
        """Delete the rows matching `where` (with `params`) whose `column` is one of `values`."""
        delete = f"DELETE FROM {{{table}}} WHERE {where} AND {column}"
        if self._arrays is not None:
            self._execute(f"{delete} = ANY(?)", [*params, list(values)])
            return
        for start in range(0, len(values), _ROWS_PER_STATEMENT):
            chunk = list(values[start : start + _ROWS_PER_STATEMENT])
            self._execute(f"{delete} IN ({','.join('?' * len(chunk))})", [*params, *chunk])


class StateStore:
    """What repositories see of a store: `read`, `read_in`, `transaction`, and `location` (what
    errors about the store name)."""

    location: str
    shared: bool
    """Whether other runners reach this store (a `state_url`), so a run takes a lease in it."""
    arrays = False
    """Whether statements take whole arrays as parameters (PostgreSQL: `unnest(?::text[])`,
    `= ANY(?)`), so a repository may ask the database to compare many rows at once."""

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query."""
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def read_in(
        self, sql: str, params: Sequence[Any], values: Sequence[Any]
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of `sql` (ending in `IN ({marks})`) for `values`, a chunk at a time."""
        for start in range(0, len(values), _ROWS_PER_STATEMENT):
            chunk = list(values[start : start + _ROWS_PER_STATEMENT])
            yield from self.read(sql.format(marks=",".join("?" * len(chunk))), [*params, *chunk])

    def read_blobs(self, sql: str, params: Sequence[Any]) -> list[tuple[int, bytes]]:
        """The rows of one query of an integer and a blob (large: PostgreSQL sends them as
        their bytes, not as text, see `SqlStore`)."""
        return [(int(key), bytes(blob)) for key, blob in self.read(sql, params)]

    def read_table(self, sql: str, params: Sequence[Any], schema: pa.Schema) -> pa.Table:
        """The rows of one query as an Arrow table of `schema` (its columns, in order)."""
        rows = self.read(sql, params)
        return pa.table(
            [pa.array([row[i] for row in rows], f.type) for i, f in enumerate(schema)],
            schema=schema,
        )

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[Transaction]:
        """One transaction; `durable`: on disk before it returns."""
        raise NotImplementedError
        yield  # pragma: no cover

    def close(self) -> None:
        """Release the connections."""


class StateFile(StateStore):
    """One SQLite file, opened once and shared by every repository and thread of a pipeline.

    Only durable transactions are synced (`synchronous=FULL` for their commit); the rest commit
    with `synchronous=NORMAL`, safe from a crash of the process, in WAL mode.
    """

    shared = False

    def __init__(self, path: str | Path, tables: Iterable[str], pipeline_name: str) -> None:
        """Open (or create) the file and every table of `tables`; migrate an older layout."""
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.Lock()
        self._names = _Names(None, str)
        self._names["blob_type"] = "BLOB"
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._db = db
            with self.transaction(durable=True) as tx:
                create_tables(tx, tables, lambda: _migrate_file(tx, pipeline_name))
            stat = self.path.stat()
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise StateFileError.unusable(self.path, exc) from None
        except BaseException:
            if db is not None:
                db.close()
            raise
        self._file_id = (stat.st_dev, stat.st_ino)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def still_open(self) -> bool:
        """Whether the file at `path` is still the one opened: a file deleted, emptied or
        replaced since is another state, never written through this handle."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        return stat.st_size > 0 and (stat.st_dev, stat.st_ino) == self._file_id

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._run(sql, params)
            except sqlite3.Error as exc:
                raise StateFileError.unusable(self.path, exc) from None

    def _run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        sql = sql.format_map(self._names)
        if params and isinstance(params[0], list | tuple):
            self._db.executemany(sql, params)
            return []
        return self._db.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[Transaction]:
        with self._lock:
            db = self._db
            try:
                if durable:
                    db.execute("PRAGMA synchronous=FULL")
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield Transaction(self._run, many=True)
                    db.execute("COMMIT")
                except BaseException:
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
                finally:
                    if durable:
                        db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StateFileError.unusable(self.path, exc) from None


def create_tables(tx: Transaction, tables: Iterable[str], migrate: Callable[[], None]) -> None:
    """Create the state's tables where missing, checking (and recording) the layout version."""
    tx.execute(_META)
    found = tx.execute("SELECT value FROM {cio_state_meta} WHERE name = 'schema_version'")
    version = int(found[0][0]) if found else 0
    if version > SCHEMA_VERSION:
        raise CustomerioTerminalError(
            f"the Customer.io destination state holds tables of layout {version}, written by a"
            f" newer release (this one writes layout {SCHEMA_VERSION}): upgrade cio-destination"
        )
    for ddl in tables:
        tx.execute(ddl.replace("{blob}", "{blob_type}").replace("{external_blob}", "{blob_type}"))
    if version < SCHEMA_VERSION:
        migrate()
        tx.execute(
            "INSERT INTO {cio_state_meta} (name, value) VALUES ('schema_version', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [str(SCHEMA_VERSION)],
        )


def store_uncompressed(tx: Transaction, tables: Iterable[str]) -> None:
    """PostgreSQL: store the `{external_blob}` columns of `tables` uncompressed (a blob of
    hashes does not compress; trying costs the server's CPU on every write). Made once, with
    the tables (it locks them)."""
    for ddl in tables:
        table = re.search(r"CREATE TABLE IF NOT EXISTS \{(\w+)\}", ddl)
        for column in re.findall(r"(\w+) \{external_blob\}", ddl):
            assert table is not None
            tx.execute(
                f"ALTER TABLE {{{table.group(1)}}} ALTER COLUMN {column} SET STORAGE EXTERNAL"
            )


# the tables of the file before the layout was versioned, and how their rows move over
_LAYOUT_0 = {
    "rejected_rows": "INSERT INTO cio_rejected_rows SELECT ?, reject_id, load_id, table_name,"
    " action, row_key, NULL, reason, field, message, row_json, rejected_at FROM rejected_rows",
    "batch_stats": "INSERT INTO cio_batch_reports SELECT ?, * FROM batch_stats",
    "send_ledger": "INSERT INTO cio_send_ledger SELECT ?, * FROM send_ledger",
    "ledger_meta": "INSERT INTO cio_send_ledger_meta SELECT ?, (SELECT value FROM ledger_meta"
    " WHERE name = 'ledger_id'), (SELECT value FROM ledger_meta WHERE name = 'generation')",
    "fingerprints": "INSERT INTO cio_fingerprints SELECT * FROM fingerprints",
    "mirror_members": "INSERT INTO cio_mirror_members SELECT * FROM mirror_members",
}


def _migrate_file(tx: Transaction, pipeline_name: str) -> None:
    """Move the rows of a state file of layout 0 (no version recorded) into this layout."""
    present = {row[0] for row in tx.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for old, move in _LAYOUT_0.items():
        if old in present:
            tx.execute(move, [pipeline_name] if "?" in move else [])
            tx.execute(f"DROP TABLE {old}")


_URL_KEY = "destination.customerio.state_url"


def database_error(error: BaseException, key: str = _URL_KEY) -> CustomerioError:
    """The error to raise for a failure of the database of `state_url` (or of its deprecated
    alias `fingerprints_url`): it names the key and the kinds of error only. SQLAlchemy's text
    holds the statement and its parameters (identifiers of people) and a driver's may quote the
    URL, so neither is kept.

    A URL SQLAlchemy cannot use (not a URL, a dialect or driver that is not installed) is a
    setting to fix (`CustomerioTerminalError`); anything else may pass (a database down or
    full): `CustomerioTransientError`, the package stays pending and a rerun resumes it.
    """
    from sqlalchemy.exc import ArgumentError

    kind = type(error).__name__
    original = getattr(error, "orig", None)
    if original is not None:
        kind = f"{kind}, {type(original).__module__}.{type(original).__name__}"
    if isinstance(error, ArgumentError | ImportError):
        return CustomerioTerminalError(
            f"{key} cannot be used ({kind}): check that it is a SQLAlchemy URL and that"
            " its dialect and driver are installed"
        )
    return CustomerioTransientError(
        f"the state database of {key} failed ({kind}); the load package stays pending: run"
        " again once it answers, or check the setting"
    )


@lru_cache(maxsize=512)
def _to_paramstyle(sql: str, style: str) -> str:
    if style == "qmark":
        return sql
    if style in ("format", "pyformat"):
        return sql.replace("%", "%%").replace("?", "%s")
    counter = iter(range(1, 1 << 30))
    mark = "$" if style == "numeric_dollar" else ":"
    return re.sub(r"\?", lambda _: f"{mark}{next(counter)}", sql)


class SqlStore(StateStore):
    """The state in a database SQLAlchemy reaches (`state_url`), its tables in `schema`.

    Every failure surfaces as `database_error` says: naming the key, never a statement, a
    parameter or the URL.
    """

    shared = True

    def __init__(
        self, url: str, schema: str | None, tables: Iterable[str], key: str = _URL_KEY
    ) -> None:
        self.location = key + (f" (schema {schema})" if schema else "")
        self._key = key
        try:
            import sqlalchemy as sa
        except ImportError:  # pragma: no cover - a dependency of the package
            raise CustomerioTerminalError(
                f"{key} needs SQLAlchemy: pip install 'cio-destination[postgres]'"
            ) from None
        self._sa = sa
        with self._database(connecting=True):
            self._engine = sa.create_engine(url, pool_pre_ping=True)
            dialect = self._engine.dialect
            self._dialect = dialect.name
            self._style = dialect.paramstyle
            quote = dialect.identifier_preparer.quote
            if self._dialect == "sqlite":
                schema = None  # a file has no schemas
            self._names = _Names(schema, quote)
            self._names["blob_type"] = "BYTEA" if self._dialect == "postgresql" else "BLOB"
            with self.transaction(durable=True) as tx:
                if schema:
                    if self._dialect == "postgresql":  # CREATE ... IF NOT EXISTS races otherwise
                        tx.execute("SELECT pg_advisory_xact_lock(7305982117)")
                    tx.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                tables = list(tables)

                def migrate() -> None:
                    if self._dialect == "postgresql":
                        store_uncompressed(tx, tables)

                create_tables(tx, tables, migrate)
                self._arrays = self._column_types(tx, schema)
                self.arrays = self._arrays is not None
                # Arrow's texts are UTF-8: COPYs of them (and its CSV reads) need the server's
                self._csv = self.arrays and tx.execute("SHOW server_encoding")[0][0] == "UTF8"

    def _column_types(
        self, tx: Transaction, schema: str | None
    ) -> dict[str, dict[str, str]] | None:
        """PostgreSQL's types of the state's columns, for writes and reads of whole arrays."""
        if self._dialect != "postgresql":
            return None
        types: dict[str, dict[str, str]] = {}
        for table, column, kind in tx.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = COALESCE(?, current_schema()) AND table_name LIKE 'cio\\_%'",
            [schema],
        ):
            types.setdefault(table, {})[column] = kind
        return types

    def read_in(
        self, sql: str, params: Sequence[Any], values: Sequence[Any]
    ) -> Iterator[tuple[Any, ...]]:
        if self._arrays is None:
            yield from super().read_in(sql, params, values)
            return
        # one query, its values one array: PostgreSQL looks each up in the index
        yield from self.read(
            sql.replace("IN ({marks})", "= ANY(?)").format(), [*params, list(values)]
        )

    @contextmanager
    def _database(self, *, connecting: bool = False) -> Iterator[None]:
        caught: tuple[type[BaseException], ...] = (self._sa.exc.SQLAlchemyError,)
        if connecting:
            caught += (ImportError,)
        try:
            yield
        except caught as error:
            raise database_error(error, self._key) from None

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[Transaction]:
        with self._database(), self._engine.begin() as connection:
            if not durable and self._dialect == "postgresql":
                connection.exec_driver_sql("SET LOCAL synchronous_commit = off")

            def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                text = _to_paramstyle(sql.format_map(self._names), self._style)
                result = connection.exec_driver_sql(text, tuple(params))
                if not result.returns_rows:
                    return []
                rows = result.cursor.fetchall()  # the driver's tuples, no Row objects
                result.close()
                return rows  # type: ignore[no-any-return]

            def copy(table: str, columns: Sequence[str], rows: list[Sequence[Any]]) -> str:
                with self._driver(connection) as cursor:
                    scratch = self._scratch(cursor, table)
                    cursor.copy_expert(
                        f"COPY {scratch} ({', '.join(columns)}) FROM STDIN", copy_text(rows)
                    )
                return scratch

            arrays = getattr(self, "_arrays", None)
            yield Transaction(
                run,
                many=False,
                array_types=arrays,
                copy=copy if arrays is not None else None,
                copy_table=(
                    (lambda table, data, new: self._copy_table(connection, table, data, new))
                    if getattr(self, "_csv", False)
                    else None
                ),
            )

    @contextmanager
    def _driver(self, connection: Any) -> Iterator[Any]:
        """A cursor of the driver's own (psycopg2's, for COPY); its errors as `database_error`
        says, since their text may quote a row."""
        try:
            with connection.connection.dbapi_connection.cursor() as cursor:
                yield cursor
        except Exception as error:
            raise database_error(error, self._key) from None

    def _scratch(self, cursor: Any, table: str) -> str:
        """The name of a scratch table like `table`, made if need be: rows COPY into it, and an
        upsert takes them from there (emptied at each commit)."""
        scratch = f"cio_copy_{table}"
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {scratch}"
            f" (LIKE {self._names[table]}) ON COMMIT DELETE ROWS"
        )
        return scratch

    def _copy_table(self, connection: Any, table: str, data: pa.Table, new: bool) -> str | None:
        """COPY an Arrow table, in PostgreSQL's binary format (`copy_binary`), straight into
        `table` if its rows are `new` (None: done), else (or if a key was kept after all) into
        a scratch table like it, whose name it returns."""
        stream = copy_binary(data)
        # the stream is in memory: handed over in one piece, so the thread writing it takes
        # Python's lock back once, not once a megabyte (the load's other threads hold it)
        size = max(_COPY_READ, stream.getbuffer().nbytes)
        listed = ", ".join(data.column_names)
        copy = "COPY {} (" + listed + ") FROM STDIN WITH (FORMAT binary)"
        with self._driver(connection) as cursor:
            if new:
                cursor.execute("SAVEPOINT cio_copy")
                try:
                    cursor.copy_expert(copy.format(self._names[table]), stream, size)
                    cursor.execute("RELEASE SAVEPOINT cio_copy")
                    return None
                except Exception as error:
                    if getattr(error, "pgcode", None) != _UNIQUE_VIOLATION:
                        raise
                    cursor.execute("ROLLBACK TO SAVEPOINT cio_copy")
                    stream.seek(0)
            scratch = self._scratch(cursor, table)
            cursor.copy_expert(copy.format(scratch), stream, size)
        return scratch

    def _copy_out(self, sql: str, params: Sequence[Any], form: str) -> io.BytesIO:
        """The rows of one query, as one COPY of them in `form` (PostgreSQL's binary or csv)."""
        sink = io.BytesIO()
        with (
            self._database(),
            self._engine.begin() as connection,
            self._driver(connection) as cursor,
        ):
            query = cursor.mogrify(
                _to_paramstyle(sql.format_map(self._names), "format"), tuple(params)
            ).decode()
            cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT {form})", sink)
        return sink

    def read_blobs(self, sql: str, params: Sequence[Any]) -> list[tuple[int, bytes]]:
        if not self.arrays:
            return super().read_blobs(sql, params)
        # one binary COPY of the rows: a query's blob comes as hex text, twice its size
        stream = self._copy_out(sql, params, "binary").getbuffer()
        at = len(_COPY_SIGNATURE) + int.from_bytes(stream[15:19], "big")  # + its extension
        rows: list[tuple[int, bytes]] = []
        while stream[at : at + 2] != _COPY_END:  # 2 fields: 8 bytes (an int8), then the blob
            key = int.from_bytes(stream[at + 6 : at + 14], "big", signed=True)
            size = int.from_bytes(stream[at + 14 : at + 18], "big")
            rows.append((key, bytes(stream[at + 18 : at + 18 + size])))
            at += 18 + size
        return rows

    def read_table(self, sql: str, params: Sequence[Any], schema: pa.Schema) -> pa.Table:
        if not getattr(self, "_csv", False):
            return super().read_table(sql, params, schema)
        # one COPY of the rows as CSV, parsed by Arrow: no Python object per value
        sink = self._copy_out(sql, params, "csv")
        if not sink.getbuffer().nbytes:  # no row: Arrow's CSV reader refuses an empty file
            return schema.empty_table()
        return pa_csv.read_csv(
            pa.BufferReader(sink.getvalue()),
            read_options=pa_csv.ReadOptions(column_names=schema.names),
            convert_options=pa_csv.ConvertOptions(
                column_types=schema,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )

    def close(self) -> None:
        self._engine.dispose()


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # the signature, no flags, no extension
_COPY_END = b"\xff\xff"
_COPY_NULL = b"\xff\xff\xff\xff"  # a field's length of -1
_COPY_READ = 1 << 20
"""Bytes of a COPY's stream handed to the driver at a time, at least."""


def copy_binary(data: pa.Table) -> io.BytesIO:
    """The rows of `data` (text, binary and 64-bit integer columns) in PostgreSQL's binary COPY
    format: a row is its count of fields, then each field's length and bytes, big-endian (a
    length of -1: NULL). The server parses no text, nor an escaped blob. Written by one Arrow
    `take` that lays each row's pieces side by side: its data buffer is the stream (one row,
    of large blobs: joined as they are)."""
    if len(data) == 1:
        return io.BytesIO(b"".join([_COPY_SIGNATURE, *_row_fields(data), _COPY_END]))
    pieces: list[pa.Array] = [_constant(len(data.column_names).to_bytes(2, "big"))]
    for column in data.columns:
        values = column.combine_chunks()
        if pa.types.is_int64(values.type):
            head = _constant(b"\0\0\0\x08")
            body = _big_endian(values, 8)
        else:
            body = values.cast(pa.binary())
            head = _big_endian(pc.binary_length(body), 4)
        if values.null_count:
            valid = pc.is_valid(values)
            head = pc.if_else(valid, head if len(head) > 1 else head[0], _COPY_NULL)
            body = body.fill_null(b"")
        pieces += [head, body]
    rows = len(data)
    columns = tuple(len(piece) == rows for piece in pieces)
    taken = pc.take(pa.concat_arrays(pieces), _layout(columns, rows), boundscheck=False)
    stream = memoryview(taken.buffers()[2] or b"")[: _end_offset(taken)]
    return io.BytesIO(b"".join([_COPY_SIGNATURE, stream, _COPY_END]))


def _row_fields(data: pa.Table) -> Iterator[bytes | pa.Buffer]:
    """The one row of `data` in the binary COPY format (see `copy_binary`), piece by piece."""
    yield len(data.column_names).to_bytes(2, "big")
    for column in data.columns:
        value = column[0]
        if not value.is_valid:
            yield _COPY_NULL
        elif pa.types.is_int64(value.type):
            yield b"\0\0\0\x08" + value.as_py().to_bytes(8, "big", signed=True)
        else:
            body = value.cast(pa.binary()).as_buffer()
            yield body.size.to_bytes(4, "big")
            yield body


_layouts: dict[tuple[tuple[bool, ...], int], pa.Array] = {}


def _layout(columns: tuple[bool, ...], rows: int) -> pa.Array:
    """The index of each row's every piece, row after row, in pieces laid one after another
    (a column's `rows` values, or a constant's one); kept for the last layout (the same unit
    after unit)."""
    known = _layouts.get((columns, rows))
    if known is not None:
        return known
    count = len(columns)
    starts = list(accumulate((rows if column else 1 for column in columns[:-1]), initial=0))
    position = pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int32()), count * rows), start=-1)
    row = pc.divide(position, pa.scalar(count, pa.int32()))
    piece = pc.subtract(position, pc.multiply(row, pa.scalar(count, pa.int32())))
    indices = pc.add(
        pc.take(pa.array(starts, pa.int32()), piece),
        pc.multiply(pc.take(pa.array([int(c) for c in columns], pa.int32()), piece), row),
    )
    _layouts.clear()
    _layouts[(columns, rows)] = indices
    return indices


def _constant(value: bytes) -> pa.Array:
    return pa.array([value], pa.binary())


def _end_offset(array: pa.Array) -> int:
    """Where the last value of a binary array (of offset 0) ends in its data buffer."""
    ends = pa.Array.from_buffers(pa.int32(), len(array) + 1, [None, array.buffers()[1]])
    return int(ends[len(array)].as_py())


def _big_endian(numbers: pa.Array, size: int) -> pa.Array:
    """Each of `numbers` (integers of `size` bytes) as its big-endian bytes."""
    validity, values = numbers.buffers()[:2]
    raw = pa.Array.from_buffers(
        pa.binary(size), len(numbers), [validity, values], offset=numbers.offset
    )
    as_bytes = raw.cast(pa.binary())
    return pc.binary_reverse(as_bytes) if sys.byteorder == "little" else as_bytes


def copy_text(rows: Iterable[Sequence[Any]]) -> io.StringIO:
    """Rows in PostgreSQL's COPY text format (tab-separated, `\\N` for NULL)."""
    lines = io.StringIO()
    for row in rows:
        lines.write("\t".join(map(_copy_value, row)))
        lines.write("\n")
    lines.seek(0)
    return lines


def _on_conflict(columns: Sequence[str], keys: Sequence[str]) -> str:
    """The clause by which an insert of `columns` replaces the row kept under the same `keys`."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
    return f"ON CONFLICT ({', '.join(keys)}) DO " + (
        f"UPDATE SET {updates}" if updates else "NOTHING"
    )


def _copy_value(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bytes | memoryview):
        return "\\\\x" + bytes(value).hex()
    if isinstance(value, str):
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return repr(value) if isinstance(value, float) else str(value)


_stores: dict[tuple[str, str | None], SqlStore] = {}
_stores_lock = threading.Lock()


def sql_store(url: str, schema: str | None, tables: Iterable[str], key: str) -> SqlStore:
    """The one `SqlStore` of a URL and schema in this process (its engine pools connections)."""
    with _stores_lock:
        store = _stores.get((url, schema))
        if store is None:
            store = _stores[(url, schema)] = SqlStore(url, schema, tables, key)
        return store


def pipeline_scopes(pipeline_name: str) -> tuple[str, list[Any]]:
    """A condition (and its parameters) matching every `scope` (`<pipeline>/<table>`) of a
    pipeline: fingerprints and snapshots are kept per scope."""
    prefix = f"{pipeline_name}/"
    return "SUBSTR(scope, 1, ?) = ?", [len(prefix), prefix]


def now() -> float:
    """The time state rows are stamped with (unix seconds)."""
    return time.time()
