"""Batch reports: the counters of every call of the destination, read by `sync_report`.

A call records one batch; a replayed batch (the same rows: the same `batch_id`) replaces its
earlier record instead of being counted twice.
"""

from __future__ import annotations

from typing import Any

from cio_destination.state.backend import StateStore

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

    TABLES = (
        """CREATE TABLE IF NOT EXISTS {cio_batch_reports} (
            pipeline_name TEXT NOT NULL,
            load_id TEXT NOT NULL,
            table_name TEXT NOT NULL,
            action TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            dry_run INTEGER NOT NULL,
            rows_in BIGINT NOT NULL,
            operations BIGINT NOT NULL,
            accepted BIGINT NOT NULL,
            rejected BIGINT NOT NULL,
            skipped BIGINT NOT NULL,
            requests BIGINT NOT NULL,
            retries BIGINT NOT NULL,
            throttled BIGINT NOT NULL,
            throttled_seconds DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION NOT NULL,
            reasons TEXT NOT NULL,
            samples TEXT NOT NULL,
            PRIMARY KEY (pipeline_name, load_id, table_name, batch_id)
        )""",
    )
    """The tables it keeps."""

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self._store = store
        self._pipeline = pipeline_name

    def record(self, batch: dict[str, Any]) -> None:
        """Store one batch's counters; a replayed batch (same id) replaces its earlier record."""
        row = [self._pipeline, *(batch[c] for c in COLUMNS)]
        keys = ("pipeline_name", "load_id", "table_name", "batch_id")
        with self._store.transaction() as tx:
            tx.upsert("cio_batch_reports", ("pipeline_name", *COLUMNS), keys, [row])

    def of_load(self, load_id: str) -> list[dict[str, Any]]:
        """The batch records of one load, by table, in the order they started."""
        rows = self._store.read(
            f"SELECT {', '.join(COLUMNS)} FROM {{cio_batch_reports}}"
            " WHERE pipeline_name = ? AND load_id = ? ORDER BY table_name, started_at",
            [self._pipeline, load_id],
        )
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    def load_ids(self) -> list[str]:
        """Every load that recorded a batch, in the order they started."""
        rows = self._store.read(
            "SELECT load_id FROM {cio_batch_reports} WHERE pipeline_name = ?"
            " GROUP BY load_id ORDER BY MIN(started_at)",
            [self._pipeline],
        )
        return [row[0] for row in rows]

    def latest_load_id(self) -> str | None:
        """The load that recorded a batch last, if any did."""
        rows = self._store.read(
            "SELECT load_id FROM {cio_batch_reports} WHERE pipeline_name = ?"
            " ORDER BY finished_at DESC LIMIT 1",
            [self._pipeline],
        )
        return rows[0][0] if rows else None

    def purge_older_than(self, cutoff: float) -> None:
        """Drop the records of batches finished before `cutoff`: `state_retention_days`."""
        with self._store.transaction() as tx:
            tx.execute(
                "DELETE FROM {cio_batch_reports} WHERE pipeline_name = ? AND finished_at < ?",
                [self._pipeline, cutoff],
            )
