"""Fingerprints of the people `changes_only` tables sent, to send next time only what changed.

A fingerprint is `{"r": hash of the whole operation, "a": {attribute: hash of its value},
"s": hash of the source row or None}` (see `cio_destination.diff.changes`). They live in the
state store (`StoredFingerprints`): the pipeline's state file, or the database of `state_url`,
so runners with no persistent disk keep them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from cio_destination.state.backend import StateStore, pipeline_scopes

Fingerprint = dict[str, Any]


class Fingerprints(Protocol):
    """Where fingerprints are kept, per scope (`<pipeline>/<table>`) and identifier."""

    def fingerprints_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, Fingerprint]:
        """The fingerprints of those `identifiers` that have one."""
        ...

    def holds_any(self, scope: str) -> bool:
        """Whether any fingerprint of `scope` is kept (none: a first sync, nothing to look up)."""
        ...

    def source_hashes_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        """The source-row hashes kept with the fingerprints of `identifiers`, where known."""
        ...

    def changed_sources(self, scope: str, pairs: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Those (identifier, source-row hash) `pairs` whose hash is not the one kept with the
        identifier's fingerprint (or that have none)."""
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


class StoredFingerprints:
    """Fingerprints in the state store (local, or behind `state_url`)."""

    TABLES = (
        """CREATE TABLE IF NOT EXISTS {cio_fingerprints} (
            scope TEXT NOT NULL,
            identifier TEXT NOT NULL,
            row_hash BIGINT NOT NULL,
            attributes {blob} NOT NULL,
            source_hash BIGINT,
            PRIMARY KEY (scope, identifier)
        )""",
    )
    """The tables it keeps."""
    _COLUMNS = ("scope", "identifier", "row_hash", "attributes", "source_hash")

    def __init__(self, store: StateStore, pipeline_name: str) -> None:
        self._store = store
        self._pipeline = pipeline_name

    def fingerprints_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, Fingerprint]:
        """The attribute hashes are parsed lazily: most people are settled by the row hash."""
        return {
            identifier: _LazyFingerprint(row_hash, blob)
            for identifier, row_hash, blob in self._store.read_in(
                "SELECT identifier, row_hash, attributes FROM {{cio_fingerprints}}"
                " WHERE scope = ? AND identifier IN ({marks})",
                [scope],
                identifiers,
            )
        }

    def holds_any(self, scope: str) -> bool:
        return bool(
            self._store.read("SELECT 1 FROM {cio_fingerprints} WHERE scope = ? LIMIT 1", [scope])
        )

    def source_hashes_of(self, scope: str, identifiers: Sequence[str]) -> dict[str, int]:
        return dict(
            self._store.read_in(  # type: ignore[arg-type]
                "SELECT identifier, source_hash FROM {{cio_fingerprints}} WHERE scope = ?"
                " AND source_hash IS NOT NULL AND identifier IN ({marks})",
                [scope],
                identifiers,
            )
        )

    def changed_sources(self, scope: str, pairs: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        if self._store.arrays:  # compared by the database: only what changed comes back
            identifiers = [i for i, _ in pairs]
            hashes = ",".join(str(h) for _, h in pairs)
            if any("\n" in i for i in identifiers):  # as an array of texts, each adapted
                keys, given = "?::text[]", [identifiers, hashes]
            else:  # as one text, split by the database: about half the time
                keys, given = "string_to_array(?, E'\\n')", ["\n".join(identifiers), hashes]
            return set(
                self._store.read(
                    # one index probe per pair: a join would read the whole table's scope
                    f"SELECT k.identifier, k.source_hash FROM unnest({keys},"
                    " string_to_array(?, ',')::bigint[]) AS k(identifier, source_hash)"
                    " WHERE k.source_hash IS DISTINCT FROM (SELECT f.source_hash FROM"
                    " {cio_fingerprints} f WHERE f.scope = ? AND f.identifier = k.identifier)",
                    [*given, scope],
                )
            )
        known = self.source_hashes_of(scope, [identifier for identifier, _ in pairs])
        return {(i, h) for i, h in pairs if known.get(i) != h}

    def remember(self, scope: str, fingerprints: Mapping[str, Fingerprint]) -> None:
        if not fingerprints:
            return
        rows = [
            (scope, k, v["r"], orjson.dumps(v["a"]), v.get("s")) for k, v in fingerprints.items()
        ]
        with self._store.transaction() as tx:
            keys = ("scope", "identifier")
            tx.upsert("cio_fingerprints", self._COLUMNS, keys, rows, distinct=True)  # a dict's

    def forget(self, scope: str, identifiers: Sequence[str]) -> None:
        with self._store.transaction() as tx:
            tx.delete_in("cio_fingerprints", "scope = ?", [scope], "identifier", identifiers)

    def erase(self, identifiers: Sequence[str]) -> None:
        """Drop these people's fingerprints from every table of the pipeline (an erasure)."""
        where, params = pipeline_scopes(self._pipeline)
        with self._store.transaction() as tx:
            tx.delete_in("cio_fingerprints", where, params, "identifier", identifiers)
