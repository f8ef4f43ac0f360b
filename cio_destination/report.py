"""Per-load sync reports: what each table sent, what Customer.io accepted, what was rejected and why.

Every call of the destination records its batch's counters in the local state; `sync_report`
adds them up per table and action. Payload samples (kept for dry runs) have every value masked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dlt

from cio_destination.limits import ATTRIBUTE_DROPPED
from cio_destination.store import release_store, state_path, store_for

__all__ = ["SyncReport", "TableReport", "dry_run", "mask_payload", "sync_report"]

MAX_SAMPLES = 3
# Keys whose values are structure, not customer data: kept in masked samples.
_STRUCTURAL = frozenset({"type", "action", "name", "id", "transactional_message_id", "platform"})


def mask_payload(operation: dict[str, Any]) -> dict[str, Any]:
    """A copy of an operation with every customer value replaced by its type, e.g. `<str>`.

    Only the operation's own top-level structure (type, action, event name, event id, ...) is
    kept as it is.
    """
    return {
        key: value if key in _STRUCTURAL and isinstance(value, str | int) else _mask(value)
        for key, value in operation.items()
    }


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if value is None:
        return None
    return f"<{type(value).__name__}>"


@dataclass
class TableReport:
    """One table and action of one load."""

    table: str
    action: str
    dry_run: bool = False
    rows_in: int = 0
    operations: int = 0
    """Operations sent (or, in a dry run, that would be sent)."""
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    attributes_dropped: int = 0
    """Attribute values left out of rows that were sent (`oversized_attribute =
    "drop_attribute"`). Those rows count as accepted, not rejected; each dropped value is in
    `rejected_rows` with reason `attribute_dropped`."""
    skipped: int = 0
    """Rows not sent: already sent (transactional sends) or unchanged (`changes_only`)."""
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    """Answers of 429."""
    throttled_seconds: float = 0.0
    seconds: float = 0.0
    samples: list[Any] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SyncReport:
    """The report of one load; `str(report)` is a table for humans."""

    load_id: str | None
    tables: list[TableReport] = field(default_factory=list)

    @property
    def dry_run(self) -> bool:
        return any(t.dry_run for t in self.tables)

    def __str__(self) -> str:
        if not self.tables:
            return f"Customer.io sync report: nothing recorded for load {self.load_id}"
        title = "dry run: nothing was sent" if self.dry_run else f"load {self.load_id}"
        lines = [f"Customer.io sync report ({title})"]
        header = (
            f"{'table':<24} {'action':<20} {'rows in':>9} {'sent':>9} {'accepted':>9}"
            f" {'rejected':>9} {'skipped':>8} {'requests':>9} {'retries':>8} {'429s':>6}"
            f" {'throttled s':>11} {'req/s':>7}"
        )
        lines.append(header)
        for t in self.tables:
            lines.append(
                f"{t.table:<24} {t.action:<20} {t.rows_in:>9} {t.operations:>9}"
                f" {t.accepted:>9} {t.rejected:>9} {t.skipped:>8} {t.requests:>9}"
                f" {t.retries:>8} {t.throttled:>6} {t.throttled_seconds:>11.1f}"
                f" {t.requests_per_second:>7.1f}"
            )
            for reason, count in sorted(t.rejected_by_reason.items()):
                lines.append(f"    rejected {count} x {reason}")
            if t.attributes_dropped:
                lines.append(
                    f"    sent {t.attributes_dropped} x without an attribute over the value limit"
                    f" ({ATTRIBUTE_DROPPED})"
                )
            if t.dry_run:
                for sample in t.samples:
                    lines.append(f"    would send: {json.dumps(sample, sort_keys=True)}")
        return "\n".join(lines)


def build_report(load_id: str | None, records: list[dict[str, Any]]) -> SyncReport:
    tables: dict[tuple[str, str], TableReport] = {}
    spans: dict[tuple[str, str], tuple[float, float]] = {}
    for record in records:
        key = (record["table_name"], record["action"])
        report = tables.setdefault(key, TableReport(table=key[0], action=key[1]))
        report.dry_run = report.dry_run or bool(record["dry_run"])
        for name in (
            "rows_in",
            "operations",
            "accepted",
            "rejected",
            "skipped",
            "requests",
            "retries",
            "throttled",
        ):
            setattr(report, name, getattr(report, name) + record[name])
        report.throttled_seconds += record["throttled_seconds"]
        reasons = Counter(report.rejected_by_reason)
        # the batch's records by reason: rejected rows, and attributes dropped from sent rows
        counts = json.loads(record["reasons"])
        report.attributes_dropped += counts.pop(ATTRIBUTE_DROPPED, 0)
        reasons.update(counts)
        report.rejected_by_reason = dict(reasons)
        if len(report.samples) < MAX_SAMPLES:
            report.samples.extend(
                json.loads(record["samples"])[: MAX_SAMPLES - len(report.samples)]
            )
        start, end = spans.get(key, (record["started_at"], record["finished_at"]))
        spans[key] = (min(start, record["started_at"]), max(end, record["finished_at"]))
    for key, (start, end) in spans.items():
        tables[key].seconds = end - start
    return SyncReport(load_id=load_id, tables=[tables[k] for k in sorted(tables)])


def sync_report(pipeline: dlt.Pipeline, load_id: str | None = None) -> SyncReport:
    """The sync report of a load of `pipeline` (default: its latest load to Customer.io)."""
    if not state_path(pipeline.working_dir).exists():
        return SyncReport(load_id=load_id)
    store = store_for(pipeline.working_dir)
    load_id = load_id or store.latest_load_id()
    if load_id is None:
        return SyncReport(load_id=None)
    return build_report(load_id, store.batch_records(load_id))


# Keys of the user's destination config carried over to a dry run's copy.
_CONFIG_KEYS = (
    "destination_name",
    "site_id",
    "api_key",
    "app_api_key",
    "region",
    "track_url",
    "app_url",
    "requests_per_second",
    "app_requests_per_second",
    "max_attempts",
    "timeout",
    "max_request_bytes",
    "max_concurrent_requests",
    "resend_uncertain",
    "accept_new_send_ledger",
    "tables",
)


def dry_run(pipeline: dlt.Pipeline, data: Any = None, **run_kwargs: Any) -> SyncReport:
    """Run `data` through `pipeline` to Customer.io without sending anything or spending state.

    The pipeline's working directory (incremental cursors, pending packages, the send ledger) is
    copied into a scratch directory and the run happens there with `dry_run=True`: every row is
    mapped, validated and batched, nothing is sent, and the real pipeline's state is untouched,
    so a later real run sends exactly what it would have sent anyway.

    Returns the report: per table and action, what would be sent and rejected (with reasons) and
    a few sample payloads with every value masked.
    """
    from cio_destination.destination import customerio

    params: dict[str, Any] = {}
    if pipeline.destination is not None:
        configured = getattr(pipeline.destination, "config_params", {}) or {}
        params = {k: v for k, v in configured.items() if k in _CONFIG_KEYS}
    with tempfile.TemporaryDirectory(prefix="cio-dry-run-") as scratch:
        if os.path.isdir(pipeline.working_dir):
            shutil.copytree(pipeline.working_dir, os.path.join(scratch, pipeline.pipeline_name))
        clone = dlt.pipeline(
            pipeline.pipeline_name,
            destination=customerio(**params, dry_run=True),
            pipelines_dir=scratch,
            dataset_name=pipeline.dataset_name,
        )
        try:
            info = clone.run(data, **run_kwargs)
            load_id = info.loads_ids[-1] if info.loads_ids else None
            report = sync_report(clone, load_id)
        finally:
            release_store(clone.working_dir)
            pipeline.activate()
    return report
