"""Mirror snapshots: the identifiers of each mirror table's last complete, delivered snapshot
(see `cio_destination.diff.mirror`)."""

from __future__ import annotations

from cio_destination.state.backend import StateFile


class MirrorSnapshots:
    """The last snapshot of every mirror table of one pipeline, per scope (`<pipeline>/<table>`)."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS mirror_members (
            scope TEXT NOT NULL,
            identifier TEXT NOT NULL,
            PRIMARY KEY (scope, identifier)
        );
    """
    """The tables it keeps."""

    def __init__(self, backend: StateFile) -> None:
        self._backend = backend

    def snapshot_of(self, scope: str) -> set[str]:
        """The identifiers of the last recorded complete snapshot of a mirror table."""
        with self._backend.connection() as db:
            rows = db.execute(
                "SELECT identifier FROM mirror_members WHERE scope = ?", (scope,)
            ).fetchall()
        return {row[0] for row in rows}

    def record(self, scope: str, members: set[str]) -> None:
        """Replace the table's snapshot with `members`, once its removals are delivered."""
        with self._backend.transaction() as db:
            db.execute("DELETE FROM mirror_members WHERE scope = ?", (scope,))
            db.executemany(
                "INSERT INTO mirror_members VALUES (?, ?)", [(scope, m) for m in members]
            )
