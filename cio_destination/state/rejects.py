"""Rejected rows: every row Customer.io or local validation rejected, with the reason.

Read back by `cio_destination.rejected_rows`. A replayed batch rewrites its records instead of
doubling them: a rejection's id is made of the load, the table, the reason, the field and the
row.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from cio_destination.entries import Rejection
from cio_destination.framing import frame
from cio_destination.state.backend import StateFile
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

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS rejected_rows (
            reject_id TEXT PRIMARY KEY,
            load_id TEXT NOT NULL,
            table_name TEXT NOT NULL,
            action TEXT NOT NULL,
            row_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            field TEXT,
            message TEXT NOT NULL,
            row_json BLOB NOT NULL,
            rejected_at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS rejected_rows_load ON rejected_rows (load_id, table_name);
    """
    """The tables it keeps."""

    def __init__(self, backend: StateFile) -> None:
        self._backend = backend

    def record(
        self, load_id: str, table: str, action: str, rejections: Sequence[Rejection]
    ) -> None:
        """Store rejections; a replayed batch rewrites the same records instead of doubling them."""
        if not rejections:
            return
        now = time.time()
        records = []
        for rejection in rejections:
            row_json = row_to_json(rejection.row)
            records.append(
                (
                    reject_id(load_id, table, rejection.reason, rejection.field, row_json),
                    load_id,
                    table,
                    action,
                    rejection.row_key,
                    rejection.reason,
                    rejection.field,
                    rejection.message,
                    row_json,
                    now,
                )
            )
        with self._backend.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO rejected_rows VALUES (?,?,?,?,?,?,?,?,?,?)", records
            )

    def rows(
        self, load_id: str | None = None, table: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The rejections recorded (of one load, of one table), oldest first, each as
        `rejected_rows` yields it."""
        query = "SELECT * FROM rejected_rows"
        clauses, params = [], []
        if load_id is not None:
            clauses.append("load_id = ?")
            params.append(load_id)
        if table is not None:
            clauses.append("table_name = ?")
            params.append(table)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY rejected_at, reject_id"
        with self._backend.connection() as db:
            rows = db.execute(query, params).fetchall()
        for row in rows:
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
