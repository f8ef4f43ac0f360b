"""Mirror syncs (`mirror="delete"` or `"suppress"` on an identify table read in full every run).

When a load starts, the identifiers of the table's rows in the whole load package are read from
its job files: that is this run's snapshot. People in the last recorded snapshot but not in this
one have left the table and are deleted (or suppressed) in Customer.io. If that would remove more
than `max_removed_fraction` of the last snapshot, which almost always means a broken or partial
source, the load stops before any request. The new snapshot is recorded once the removals are
delivered, so a crash in between only repeats idempotent deletes.
"""

from __future__ import annotations

import gzip
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from cio_destination.entries import Entry
from cio_destination.exceptions import MappingError
from cio_destination.limits import identifier_or_none
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.state.snapshots import MirrorSnapshots
from cio_destination.values import ValueProblem, parse_json_text, python_values


class MirrorGuardError(MappingError):
    """A mirror sync would remove more of the table's people than `max_removed_fraction` allows."""

    def __init__(self, table: str, removed: int, previous: int, fraction: float) -> None:
        super().__init__(
            table,
            "max_removed_fraction",
            f"this run would remove {removed} of the {previous} people of the last complete"
            f" snapshot ({removed / previous:.0%}), over the {fraction:.0%} allowed; nothing was"
            " sent. Check the source; raise max_removed_fraction if the removal is real",
        )


@dataclass
class MirrorPlan:
    """What a load does for one mirror table: the removals to send and the snapshot to record."""

    table: str
    scope: str
    action: str
    identifier_type: str
    current: set[str]
    removed: list[str]
    taken: bool = False

    column: str = ""

    def removal_entries(self) -> list[Entry]:
        entries = []
        for identifier in self.removed:
            op = {
                "type": "person",
                "action": self.action,
                "identifiers": {self.identifier_type: identifier},
            }
            # the "row" of a removal, should Customer.io reject it: the identifier that left
            entries.append(Entry(orjson.dumps(op), identifier, [{self.column: identifier}]))
        return entries


class MirrorPlans:
    """The mirror plans of one load, each handed out to one call at a time (a table's removals
    go out with one batch of it, and are recorded once they are delivered)."""

    def __init__(self) -> None:
        self._plans: dict[str, MirrorPlan] = {}
        self._lock = threading.Lock()

    def add(self, plan: MirrorPlan) -> None:
        with self._lock:
            self._plans[plan.table] = plan

    def take(self, table: str) -> MirrorPlan | None:
        """The table's plan, handed out once (given back with `give_back` on failure)."""
        with self._lock:
            plan = self._plans.get(table)
            if plan is None or plan.taken:
                return None
            plan.taken = True
            return plan

    def give_back(self, plan: MirrorPlan) -> None:
        with self._lock:
            plan.taken = False


def _job_rows(path: str, column: str) -> Iterator[Any]:
    """The values of `column` in one load-package job file (typed-jsonl, gzipped or not, or parquet)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        if column not in pq.read_schema(path).names:
            return
        for chunk in pq.read_table(path, columns=[column]).column(column).chunks:
            yield from python_values(chunk)
        return
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            parsed = orjson.loads(line)
            # dlt writes one object per line, or a list of objects per line
            for row in parsed if isinstance(parsed, list) else (parsed,):
                if isinstance(row, dict):
                    yield row.get(column)


def snapshot_of(
    context: Any,
    table: str,
    identifier: str,
    *variants: str,
    json: tuple[bool, bool] = (False, False),
) -> set[str]:
    """The identifiers of every row of `table` in the load package, as the mapper writes them.

    `variants`: dlt's variant columns of the identifier, where it kept values that did not fit
    the column's type (the mapper reads them as the identifier). `json`: whether text in the
    identifier's column, and in its variants, is JSON (`RowReader.decoded` reads it so).
    """
    storage, load_id = context.storage, context.load_id
    root = storage.storage.storage_path
    found: set[str] = set()
    for state, job in storage.list_all_jobs_with_states(load_id):
        if job.table_name != table:
            continue
        path = os.path.join(root, storage.get_job_file_path(load_id, state, job.file_name()))
        for read_json, column in ((json[0], identifier), *((json[1], v) for v in variants)):
            for value in _job_rows(path, column):
                if read_json and isinstance(value, str):
                    try:
                        value = parse_json_text(value)
                    except ValueProblem:
                        continue  # the mapper rejects the row (invalid_json)
                if value is None or (isinstance(value, str) and not value.strip()):
                    continue
                text = identifier_or_none(value)
                if text is not None:
                    found.add(text)
    return found


def plan_mirror(
    compiled: CompiledMapping, context: Any, snapshots: MirrorSnapshots, pipeline_name: str
) -> MirrorPlan | None:
    """Compare this package's snapshot with the last one; raise when the guard trips."""
    mapping = compiled.mapping
    if mapping.mirror is None or mapping.identifier is None:
        return None
    scope = f"{pipeline_name}/{compiled.table}"
    try:
        variants = [v for v, column in compiled.variants if column == mapping.identifier]
        json = (
            mapping.identifier in compiled.json_columns,
            mapping.identifier in compiled.declared_json,
        )
        current = snapshot_of(context, compiled.table, mapping.identifier, *variants, json=json)
    except (OSError, ValueError, ImportError) as exc:
        raise MappingError(
            compiled.table,
            "mirror",
            f"the load package's rows could not be read for the snapshot ({type(exc).__name__})",
        ) from None
    previous = snapshots.snapshot_of(scope)
    removed = sorted(previous - current)
    if previous and len(removed) > mapping.max_removed_fraction * len(previous):
        raise MirrorGuardError(
            compiled.table, len(removed), len(previous), mapping.max_removed_fraction
        )
    return MirrorPlan(
        table=compiled.table,
        scope=scope,
        action=mapping.mirror,
        identifier_type=mapping.identifier_type,
        current=current,
        removed=removed,
        column=mapping.identifier,
    )
