"""Mirror snapshots: the identifiers of each mirror table's last complete, delivered snapshot
(see `cio_destination.diff.mirror`)."""

from __future__ import annotations

from collections.abc import Sequence

from cio_destination.state.backend import StateStore, pipeline_scopes


class MirrorSnapshots:
    """The last snapshot of every mirror table of one pipeline, per scope (`<pipeline>/<table>`)."""

    TABLES = (
        """CREATE TABLE IF NOT EXISTS {cio_mirror_members} (
            scope TEXT NOT NULL,
            identifier TEXT NOT NULL,
            PRIMARY KEY (scope, identifier)
        )""",
    )
    """The tables it keeps."""

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self._store = store
        self._pipeline = pipeline_name

    def snapshot_of(self, scope: str) -> set[str]:
        """The identifiers of the last recorded complete snapshot of a mirror table."""
        rows = self._store.read(
            "SELECT identifier FROM {cio_mirror_members} WHERE scope = ?", [scope]
        )
        return {row[0] for row in rows}

    def record(self, scope: str, members: set[str]) -> None:
        """Replace the table's snapshot with `members`, once its removals are delivered."""
        with self._store.transaction() as tx:
            tx.execute("DELETE FROM {cio_mirror_members} WHERE scope = ?", [scope])
            tx.upsert(
                "cio_mirror_members",
                ("scope", "identifier"),
                ("scope", "identifier"),
                [(scope, member) for member in members],
            )

    def erase(self, identifiers: Sequence[str]) -> None:
        """Drop these people from every snapshot of the pipeline (an erasure)."""
        with self._store.transaction() as tx:
            where, params = pipeline_scopes(self._pipeline)
            tx.delete_in("cio_mirror_members", where, params, "identifier", identifiers)
