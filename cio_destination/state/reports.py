"""Batch reports: the counters of every call of the destination, read by `sync_report`.

A call records one batch; a replayed batch (the same rows: the same `batch_id`) replaces its
earlier record instead of being counted twice.
"""

from __future__ import annotations

from typing import Any

from cio_destination.state.backend import StateFile

COUNTERS = (
    "rows_in",
    "operations",
    "accepted",
    "rejected",
    "skipped",
    "requests",
    "retries",
    "throttled",
)
"""The whole-number counters of a batch record, added up per table by the report."""
COLUMNS = (
    "load_id",
    "table_name",
    "action",
    "batch_id",
    "dry_run",
    *COUNTERS,
    "throttled_seconds",
    "started_at",
    "finished_at",
    "reasons",
    "samples",
)
"""The fields of a batch record (see `cio_destination.report.batch_record`)."""


class BatchReports:
    """The batch records of one pipeline, per load."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS batch_stats (
            load_id TEXT NOT NULL,
            table_name TEXT NOT NULL,
            action TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            dry_run INTEGER NOT NULL,
            rows_in INTEGER NOT NULL,
            operations INTEGER NOT NULL,
            accepted INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            skipped INTEGER NOT NULL,
            requests INTEGER NOT NULL,
            retries INTEGER NOT NULL,
            throttled INTEGER NOT NULL,
            throttled_seconds REAL NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL,
            reasons TEXT NOT NULL,
            samples TEXT NOT NULL,
            PRIMARY KEY (load_id, table_name, batch_id)
        );
    """
    """The tables it keeps."""

    def __init__(self, backend: StateFile) -> None:
        self._backend = backend

    def record(self, batch: dict[str, Any]) -> None:
        """Store one batch's counters; a replayed batch (same id) replaces its earlier record."""
        values = [batch[c] for c in COLUMNS]
        with self._backend.connection() as db:
            db.execute(
                f"INSERT OR REPLACE INTO batch_stats ({','.join(COLUMNS)})"
                f" VALUES ({','.join('?' * len(COLUMNS))})",
                values,
            )

    def of_load(self, load_id: str) -> list[dict[str, Any]]:
        """The batch records of one load, by table, in the order they started."""
        with self._backend.connection() as db:
            cursor = db.execute(
                "SELECT * FROM batch_stats WHERE load_id = ? ORDER BY table_name, started_at",
                (load_id,),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def load_ids(self) -> list[str]:
        """Every load that recorded a batch, in the order they started."""
        with self._backend.connection() as db:
            rows = db.execute(
                "SELECT load_id FROM batch_stats GROUP BY load_id ORDER BY MIN(started_at)"
            ).fetchall()
        return [row[0] for row in rows]

    def latest_load_id(self) -> str | None:
        """The load that recorded a batch last, if any did."""
        with self._backend.connection() as db:
            row = db.execute(
                "SELECT load_id FROM batch_stats ORDER BY finished_at DESC LIMIT 1"
            ).fetchone()
        return row[0] if row else None
