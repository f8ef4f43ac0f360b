"""A pipeline's runs in a shared state store (`state_url`): the lease that lets one run at a time,
and the dlt pipeline state (the incremental cursors) of its last completed load.

`cio_destination.restore` takes, beats and gives back the lease, and saves and restores the dlt
state; this module only keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cio_destination.state.backend import StateStore, now


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a pipeline's lease."""

    holder: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class SavedDltState:
    """The dlt state of a pipeline's last completed load, as dlt writes it to a destination."""

    version: int
    version_hash: str
    state: str
    """dlt's compressed state (`state_doc(...)["state"]`)."""
    schemas: str
    """The pipeline's schemas, a JSON list of `Schema.to_dict()`."""


class PipelineRuns:
    """The lease and the saved dlt state of one pipeline."""

    TABLES = (
        """CREATE TABLE IF NOT EXISTS {cio_leases} (
            pipeline_name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            host TEXT NOT NULL,
            pid BIGINT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL,
            timeout_seconds DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS {cio_dlt_state} (
            pipeline_name TEXT PRIMARY KEY,
            version BIGINT NOT NULL,
            version_hash TEXT NOT NULL,
            state TEXT NOT NULL,
            schemas TEXT NOT NULL,
            saved_at DOUBLE PRECISION NOT NULL
        )""",
    )
    """The tables it keeps."""

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self._store = store
        self._pipeline = pipeline_name

    def take_lease(self, holder: str, host: str, pid: int, timeout: float) -> LeaseHolder:
        """Take the lease for `holder` unless another holder beat within its own `timeout`
        (the one it took the lease with, which sets how often it beats).

        Returns the lease's holder after the attempt: `holder` itself, or the live one that
        keeps it. One statement decides, so two runs starting at once never both get it.
        """
        at = now()
        with self._store.transaction(durable=True) as tx:
            tx.execute(
                "INSERT INTO {cio_leases} AS lease (pipeline_name, holder, host, pid, started_at,"
                " heartbeat_at, timeout_seconds) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (pipeline_name) DO UPDATE SET holder = excluded.holder,"
                " host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,"
                " heartbeat_at = excluded.heartbeat_at, timeout_seconds = excluded.timeout_seconds"
                " WHERE lease.holder = excluded.holder"
                " OR lease.heartbeat_at + lease.timeout_seconds < ?",
                [self._pipeline, holder, host, pid, at, at, timeout, at],
            )
            rows = tx.execute(
                "SELECT holder, host, pid, started_at, heartbeat_at FROM {cio_leases}"
                " WHERE pipeline_name = ?",
                [self._pipeline],
            )
        return LeaseHolder(*rows[0])

    def beat(self, holder: str) -> bool:
        """Note that `holder` is alive; False when the lease is no longer its own."""
        with self._store.transaction() as tx:
            tx.execute(
                "UPDATE {cio_leases} SET heartbeat_at = ? WHERE pipeline_name = ? AND holder = ?",
                [now(), self._pipeline, holder],
            )
            rows = tx.execute(
                "SELECT holder FROM {cio_leases} WHERE pipeline_name = ?", [self._pipeline]
            )
        return bool(rows) and rows[0][0] == holder

    def release(self, holder: str) -> None:
        """Give the lease back (if `holder` still has it)."""
        with self._store.transaction(durable=True) as tx:
            tx.execute(
                "DELETE FROM {cio_leases} WHERE pipeline_name = ? AND holder = ?",
                [self._pipeline, holder],
            )

    def save_dlt_state(self, saved: SavedDltState) -> None:
        """Keep the dlt state of a completed load, unless a newer one is kept already."""
        row = [self._pipeline, saved.version, saved.version_hash, saved.state, saved.schemas]
        with self._store.transaction(durable=True) as tx:
            tx.execute(
                "INSERT INTO {cio_dlt_state} AS saved (pipeline_name, version, version_hash, state,"
                " schemas, saved_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline_name) DO"
                " UPDATE SET version = excluded.version, version_hash = excluded.version_hash,"
                " state = excluded.state, schemas = excluded.schemas,"
                " saved_at = excluded.saved_at WHERE saved.version <= excluded.version",
                [*row, now()],
            )

    def dlt_state(self) -> SavedDltState | None:
        """The dlt state of the pipeline's last completed load, if one was kept."""
        rows = self._store.read(
            "SELECT version, version_hash, state, schemas FROM {cio_dlt_state}"
            " WHERE pipeline_name = ?",
            [self._pipeline],
        )
        return SavedDltState(*rows[0]) if rows else None
