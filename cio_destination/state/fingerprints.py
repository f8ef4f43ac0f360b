"""Fingerprints of the people `changes_only` tables sent, to send next time only what changed.

A fingerprint is `{"r": hash of the whole operation, "a": {attribute: hash of its value},
"s": hash of the source row or None}` (see `cio_destination.diff.changes`). They live in the
pipeline's state file (`LocalFingerprints`) or, with `fingerprints_url`, in any database
SQLAlchemy reaches (`SqlFingerprints`), so runners with no persistent disk keep them; both
answer to `Fingerprints`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import orjson

from cio_destination.exceptions import (
    CustomerioError,
    CustomerioTerminalError,
    CustomerioTransientError,
)
from cio_destination.state.backend import StateFile

Fingerprint = dict[str, Any]


class Fingerprints(Protocol):
    """Where fingerprints are kept, per scope (`<pipeline>/<table>`) and identifier."""

    def fingerprints_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, Fingerprint]:
        """The fingerprints of those `identifiers` that have one."""
        ...

    def source_hashes_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        """The source-row hashes kept with the fingerprints of `identifiers`, where known."""
        ...

    def remember(self, scope: str, fingerprints: Mapping[str, Fingerprint]) -> None:
        """Keep these fingerprints (of people Customer.io accepted), replacing earlier ones."""
        ...

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        """Drop fingerprints (the people were removed from Customer.io)."""
        ...


class _LazyFingerprint(dict):  # type: ignore[type-arg]
    """A stored fingerprint whose attribute hashes are parsed only when asked for."""

    def __init__(self, row_hash: int, blob: bytes) -> None:
        super().__init__(r=row_hash)
        self._blob = blob

    def get(self, key: str, default: Any = None) -> Any:
        if key == "a" and "a" not in self:
            self["a"] = orjson.loads(self._blob)
        return super().get(key, default)


class LocalFingerprints:
    """Fingerprints in the pipeline's state file (the default)."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS fingerprints (
            scope TEXT NOT NULL,
            identifier TEXT NOT NULL,
            row_hash INTEGER NOT NULL,
            attributes BLOB NOT NULL,
            source_hash INTEGER,
            PRIMARY KEY (scope, identifier)
        );
    """
    """The tables it keeps."""

    def __init__(self, backend: StateFile) -> None:
        self._backend = backend

    def fingerprints_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, Fingerprint]:
        """The attribute hashes are parsed lazily: most people are settled by the row hash."""
        found: dict[str, Fingerprint] = {}
        with self._backend.connection() as db:
            for start in range(0, len(identifiers), 5_000):
                chunk = list(identifiers[start : start + 5_000])
                marks = ",".join("?" * len(chunk))
                for identifier, row_hash, blob in db.execute(
                    "SELECT identifier, row_hash, attributes FROM fingerprints"
                    f" WHERE scope = ? AND identifier IN ({marks})",
                    [scope, *chunk],
                ):
                    found[identifier] = _LazyFingerprint(row_hash, blob)
        return found

    def source_hashes_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._backend.connection() as db:
            for start in range(0, len(identifiers), 5_000):
                chunk = list(identifiers[start : start + 5_000])
                marks = ",".join("?" * len(chunk))
                found.update(
                    db.execute(
                        "SELECT identifier, source_hash FROM fingerprints WHERE scope = ?"
                        f" AND identifier IN ({marks}) AND source_hash IS NOT NULL",
                        [scope, *chunk],
                    ).fetchall()
                )
        return found

    def remember(self, scope: str, fingerprints: Mapping[str, Fingerprint]) -> None:
        if not fingerprints:
            return
        with self._backend.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO fingerprints VALUES (?,?,?,?,?)",
                [
                    (scope, k, v["r"], orjson.dumps(v["a"]), v.get("s"))
                    for k, v in fingerprints.items()
                ],
            )

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        with self._backend.transaction() as db:
            db.executemany(
                "DELETE FROM fingerprints WHERE scope = ? AND identifier = ?",
                [(scope, i) for i in identifiers],
            )


_URL_KEY = "destination.customerio.fingerprints_url"


def database_error(error: BaseException) -> CustomerioError:
    """The error to raise for a failure of the `fingerprints_url` database: it names the key
    and the kinds of error only. SQLAlchemy's text holds the statement and its parameters
    (identifiers of people) and a driver's may quote the URL, so neither is kept.

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
            f"{_URL_KEY} cannot be used ({kind}): check that it is a SQLAlchemy URL and that"
            " its dialect and driver are installed"
        )
    return CustomerioTransientError(
        f"the changes_only fingerprints database of {_URL_KEY} failed ({kind}); the load"
        " package stays pending: run again once it answers, or check the setting"
    )


class SqlFingerprints:
    """Fingerprints in a SQL database reached through SQLAlchemy (any dialect it supports).

    Every failure of the database surfaces as `database_error` says: naming
    `fingerprints_url`, never a statement, a parameter or the URL.
    """

    TABLE = "customerio_fingerprints"

    def __init__(self, url: str) -> None:
        try:
            import sqlalchemy as sa
        except ImportError:  # pragma: no cover - dlt's sql extras bring it
            raise CustomerioTerminalError(
                f"{_URL_KEY} needs SQLAlchemy: pip install sqlalchemy"
            ) from None
        self._sa = sa
        with self._database(connecting=True):
            self._engine = sa.create_engine(url, pool_pre_ping=True)
            metadata = sa.MetaData()
            self._table = sa.Table(
                self.TABLE,
                metadata,
                sa.Column("scope", sa.String(300), primary_key=True),
                sa.Column("identifier", sa.String(300), primary_key=True),
                sa.Column("fingerprint", sa.Text, nullable=False),
            )
            metadata.create_all(self._engine, checkfirst=True)

    @contextmanager
    def _database(self, *, connecting: bool = False) -> Iterator[None]:
        """SQLAlchemy's errors (and, while `connecting`, a driver that cannot be imported) as
        `database_error` makes them."""
        caught: tuple[type[BaseException], ...] = (self._sa.exc.SQLAlchemyError,)
        if connecting:
            caught += (ImportError,)
        try:
            yield
        except caught as error:
            raise database_error(error) from None

    def fingerprints_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, Fingerprint]:
        table, found = self._table, {}
        with self._database(), self._engine.connect() as connection:
            for start in range(0, len(identifiers), 500):
                chunk = list(identifiers[start : start + 500])
                query = self._sa.select(table.c.identifier, table.c.fingerprint).where(
                    table.c.scope == scope, table.c.identifier.in_(chunk)
                )
                for identifier, blob in connection.execute(query):
                    found[identifier] = orjson.loads(blob)
        return found

    def source_hashes_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        return {
            k: v["s"]
            for k, v in self.fingerprints_of(scope, identifiers).items()
            if v.get("s") is not None
        }

    def remember(self, scope: str, fingerprints: Mapping[str, Fingerprint]) -> None:
        if not fingerprints:
            return
        table = self._table
        rows = [
            {"scope": scope, "identifier": k, "fingerprint": orjson.dumps(v).decode()}
            for k, v in fingerprints.items()
        ]
        with self._database(), self._engine.begin() as connection:
            keys = list(fingerprints)
            for start in range(0, len(keys), 500):
                connection.execute(
                    table.delete().where(
                        table.c.scope == scope, table.c.identifier.in_(keys[start : start + 500])
                    )
                )
            connection.execute(table.insert(), rows)

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        table = self._table
        with self._database(), self._engine.begin() as connection:
            for start in range(0, len(identifiers), 500):
                chunk = list(identifiers[start : start + 500])
                connection.execute(
                    table.delete().where(table.c.scope == scope, table.c.identifier.in_(chunk))
                )


_sql_stores: dict[str, SqlFingerprints] = {}
_sql_lock = threading.Lock()


def sql_fingerprints(url: str) -> SqlFingerprints:
    """The one `SqlFingerprints` of a database URL in this process (its engine pools)."""
    with _sql_lock:
        store = _sql_stores.get(url)
        if store is None:
            store = _sql_stores[url] = SqlFingerprints(url)
        return store
