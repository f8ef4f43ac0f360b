"""Rejected rows: every row Customer.io or local validation rejected, with the reason.

Read back by `cio_destination.rejected_rows`. A replayed batch rewrites its records instead of
doubling them: a rejection's id is made of the load, the table, the reason, the field and the
row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import orjson

from cio_destination.entries import Rejection
from cio_destination.framing import frame
from cio_destination.limits import identifier_or_none
from cio_destination.state.backend import StateStore, now
from cio_destination.values import recordable_json


def row_to_json(row: dict[str, Any]) -> bytes:
    """The JSON a rejected row is kept as: any row can be recorded (see `recordable_json`)."""
    return recordable_json(row)


def reject_id(load_id: str, table: str, reason: str, field: str | None, row_json: bytes) -> str:
    """The same rejection of the same row in the same load gets the same id; any other, another.

    Ids were first made by joining the parts with \\x00. That join is unambiguous while no part
    but the row holds \\x00 and no field is "" (it stood for None): load ids and reasons never
    do, so the join is kept for those ids, and a rejection recorded before an upgrade is
    replaced, not doubled, when its batch is replayed. A table or column name holding \\x00
    (dlt's direct naming keeps one) or an empty field name is framed instead
    (`cio_destination.framing`), behind a byte that never starts the joined form.
    """
    head = [load_id.encode(), table.encode(), reason.encode()]
    if field == "" or any(b"\x00" in part for part in head) or (field and "\x00" in field):
        data = b"\xff" + frame([*head, None if field is None else field.encode(), row_json])
    else:
        data = b"\x00".join([*head, (field or "").encode(), row_json])
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class RejectedRows:
    """The rejected rows of one pipeline, per load and table."""

    TABLES = (
        """CREATE TABLE IF NOT EXISTS {cio_rejected_rows} (
            pipeline_name TEXT NOT NULL,
            reject_id TEXT NOT NULL,
            load_id TEXT NOT NULL,
            table_name TEXT NOT NULL,
            action TEXT NOT NULL,
            row_key TEXT NOT NULL,
            person TEXT,
            reason TEXT NOT NULL,
            field TEXT,
            message TEXT NOT NULL,
            row_json {blob} NOT NULL,
            rejected_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (pipeline_name, reject_id)
        )""",
        "CREATE INDEX IF NOT EXISTS cio_rejected_rows_load"
        " ON {cio_rejected_rows} (pipeline_name, load_id, table_name)",
        "CREATE INDEX IF NOT EXISTS cio_rejected_rows_person"
        " ON {cio_rejected_rows} (pipeline_name, person)",
    )
    """The tables it keeps."""
    _COLUMNS = (
        "pipeline_name",
        "reject_id",
        "load_id",
        "table_name",
        "action",
        "row_key",
        "person",
        "reason",
        "field",
        "message",
        "row_json",
        "rejected_at",
    )

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self._store = store
        self._pipeline = pipeline_name

    def record(
        self,
        load_id: str,
        table: str,
        action: str,
        rejections: Sequence[Rejection],
        *,
        person_column: str | None = None,
        keep_columns: Collection[str] | None = None,
    ) -> None:
        """Store rejections; a replayed batch rewrites the same records instead of doubling them.

        `person_column`: the column holding the person a row is about (an erasure purges their
        records by it); `keep_columns`: with `rejected_row_payload = "keys_only"`, the only
        columns of the row that are kept (None: the whole row).
        """
        if not rejections:
            return
        at = now()
        records = []
        for rejection in rejections:
            row_json = row_to_json(rejection.row)
            kept = row_json
            if keep_columns is not None:
                kept = row_to_json({k: v for k, v in rejection.row.items() if k in keep_columns})
            person = rejection.row.get(person_column) if person_column else None
            records.append(
                (
                    self._pipeline,
                    reject_id(load_id, table, rejection.reason, rejection.field, row_json),
                    load_id,
                    table,
                    action,
                    rejection.row_key,
                    None if person is None else identifier_or_none(person),
                    rejection.reason,
                    rejection.field,
                    rejection.message,
                    kept,
                    at,
                )
            )
        with self._store.transaction() as tx:
            tx.upsert("cio_rejected_rows", self._COLUMNS, ("pipeline_name", "reject_id"), records)

    def rows(
        self, load_id: str | None = None, table: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The rejections recorded (of one load, of one table), oldest first, each as
        `rejected_rows` yields it."""
        query = (
            "SELECT reject_id, load_id, table_name, action, row_key, reason, field, message,"
            " row_json, rejected_at FROM {cio_rejected_rows} WHERE pipeline_name = ?"
        )
        params: list[Any] = [self._pipeline]
        if load_id is not None:
            query += " AND load_id = ?"
            params.append(load_id)
        if table is not None:
            query += " AND table_name = ?"
            params.append(table)
        query += " ORDER BY rejected_at, reject_id"
        for row in self._store.read(query, params):
            (rid, load, table_name, action, row_key, reason, field, message, row_json, at) = row
            yield {
                "reject_id": rid,
                "load_id": load,
                "table": table_name,
                "action": action,
                "row_key": row_key,
                "reason": reason,
                "field": field,
                "message": message,
                "row": orjson.loads(row_json),
                "rejected_at": at,
            }

    def purge_older_than(self, cutoff: float) -> None:
        """Drop the records made before `cutoff` (unix seconds): `state_retention_days`."""
        with self._store.transaction() as tx:
            tx.execute(
                "DELETE FROM {cio_rejected_rows} WHERE pipeline_name = ? AND rejected_at < ?",
                [self._pipeline, cutoff],
            )

    def erase(self, identifiers: Sequence[str]) -> None:
        """Drop every record of these people (the row's person, or its row key)."""
        with self._store.transaction() as tx:
            for column in ("person", "row_key"):
                tx.delete_in(
                    "cio_rejected_rows", "pipeline_name = ?", [self._pipeline], column, identifiers
                )
