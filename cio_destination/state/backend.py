"""The backend every state repository goes through: one SQLite file in the pipeline's working
directory (`<working_dir>/customerio/state.sqlite`).

A repository (`cio_destination.state.rejects`, `.reports`, `.ledger`, `.fingerprints`,
`.snapshots`) declares its tables and reaches the file only through `connection()` and
`transaction()`, so the file can give way to another backend without the repositories knowing.
Any SQLite failure surfaces as a `StateFileError` naming the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cio_destination.exceptions import StateFileError

STATE_DIR = "customerio"
STATE_FILE = "state.sqlite"


def state_path(working_dir: str | Path) -> Path:
    """Where the state file of a pipeline working directory lives."""
    return Path(working_dir) / STATE_DIR / STATE_FILE


class StateFile:
    """One SQLite state file, opened once and shared by every repository and thread.

    Writes are synced to disk (`synchronous=FULL`): a send ledger entry must be on disk before
    the send it guards leaves the machine.
    """

    def __init__(self, path: str | Path, schemas: Iterable[str]) -> None:
        """Open (or create) the file and every table `schemas` declare."""
        self.path = Path(path)
        self._lock = threading.Lock()
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            for schema in schemas:
                db.executescript(schema)
            stat = self.path.stat()
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise StateFileError.unusable(self.path, exc) from None
        self._db = db
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

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, for this thread alone while the block runs."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StateFileError.unusable(self.path, exc) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed (and synced) as a whole, or rolled back."""
        with self.connection() as db, atomic(db):
            yield db


@contextmanager
def atomic(db: sqlite3.Connection) -> Iterator[None]:
    """A transaction on a connection already held (see `StateFile.connection`)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
