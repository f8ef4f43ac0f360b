"""Per-load sync reports: what each table sent, what Customer.io accepted, what was rejected and why.

Every call of the destination records its batch (`record_batch`, the glue's last stage): its
rejections, and its counters in the state's batch reports; `sync_report` adds them up per
table and action. Payload samples (kept for dry runs) have every value masked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from array import array
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain, islice
from typing import Any

import dlt
import orjson
from dlt.extract import DltResource

from cio_destination.entries import (
    DATA_KEYS,
    Entry,
    EntryBlock,
    Mapped,
    Rejection,
    entry_size_bytes,
)
from cio_destination.framing import frame_into, texts_layout
from cio_destination.limits import ATTRIBUTE_DROPPED
from cio_destination.mapping_keys import CompiledMapping
from cio_destination.state import PipelineState, stored_state
from cio_destination.state.reports import COUNTERS
from cio_destination.transport.results import SendResult

__all__ = ["SyncReport", "TableReport", "mask_payload", "sync_report", "sync_reports"]

logger = logging.getLogger("cio_destination")

MAX_SAMPLES = 3
# Top-level keys whose values are the action's, never a row's: kept in masked samples.
_STRUCTURAL = frozenset({"type", "action", "id"})
# Top-level keys the mapping may give as a literal (`event_name`, `transactional_message_id`)
# instead of a column: a literal is the mapping's, and kept.
_LITERALS = {"name": "event_name", "transactional_message_id": "transactional_message_id"}


def mask_payload(
    operation: dict[str, Any],
    *,
    columns: Collection[str] = (),
    literals: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of an operation with every customer value replaced by its type, e.g. `<str>`.

    Kept as they are: the operation's structure (its type, action and event id), a top-level
    value that equals the mapping's literal for that key (`literals`, e.g. `{"name": "signed_up"}`:
    a name from `event_name_column`, such as a page's URL, is the row's), Customer.io's field
    names, and, in the objects that carry a row's data (`attributes`, `message_data`,
    `relationship_attributes`), the names of the mapping's attribute `columns`. Every other key
    there, and every key below them (the row's JSON data may be keyed by anything, an e-mail
    address included), becomes `<key>`, `<key 2>`, ...
    """
    literals = literals or {}
    return {
        key: value
        if _kept(key, value, literals)
        else _mask(value, columns if key in DATA_KEYS else None, columns)
        for key, value in operation.items()
    }


def _kept(key: str, value: Any, literals: Mapping[str, Any]) -> bool:
    if key in _STRUCTURAL:
        return isinstance(value, str | int) and not isinstance(value, bool)
    literal = literals.get(key)
    return literal is not None and type(literal) is type(value) and literal == value


def _mask(value: Any, names: Collection[str] | None, columns: Collection[str]) -> Any:
    """`names` None: `value` is the operation's structure, whose keys are Customer.io's;
    else it is a row's data, where only keys in `names` are kept."""
    if isinstance(value, dict):
        masked: dict[str, Any] = {}
        hidden = 0
        for key, item in value.items():
            if names is None:
                masked[key] = _mask(item, columns if key in DATA_KEYS else None, columns)
            elif key in names:
                masked[key] = _mask(item, (), columns)
            else:
                hidden += 1
                masked["<key>" if hidden == 1 else f"<key {hidden}>"] = _mask(item, (), columns)
        return masked
    if isinstance(value, list):
        return [_mask(item, names, columns) for item in value]
    if value is None:
        return None
    return f"<{type(value).__name__}>"


def payload_sample(mapping: CompiledMapping, data: bytes) -> dict[str, Any]:
    """One operation of the table `mapping` maps, masked for a report (see `mask_payload`)."""
    literals = {
        key: getattr(mapping.mapping, source)
        for key, source in _LITERALS.items()
        if getattr(mapping.mapping, source) is not None
    }
    return mask_payload(orjson.loads(data), columns=mapping.attribute_columns, literals=literals)


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
    started_at: float = 0.0
    """When its first batch started (unix seconds)."""
    finished_at: float = 0.0
    """When its last batch finished (unix seconds)."""
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
    """The report of one load from its batch records."""
    tables: dict[tuple[str, str], TableReport] = {}
    spans: dict[tuple[str, str], tuple[float, float]] = {}
    for record in records:
        key = (record["table_name"], record["action"])
        report = tables.setdefault(key, TableReport(table=key[0], action=key[1]))
        report.dry_run = report.dry_run or bool(record["dry_run"])
        for name in COUNTERS:
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
        tables[key].started_at, tables[key].finished_at = start, end
    return SyncReport(load_id=load_id, tables=[tables[k] for k in sorted(tables)])


def sync_report(pipeline: dlt.Pipeline, load_id: str | None = None) -> SyncReport:
    """The sync report of a load of `pipeline` (default: its latest load to Customer.io)."""
    state = stored_state(pipeline)
    if state is None:
        return SyncReport(load_id=load_id)
    reports = state.reports
    load_id = load_id or reports.latest_load_id()
    if load_id is None:
        return SyncReport(load_id=None)
    return build_report(load_id, reports.of_load(load_id))


def sync_reports(
    pipeline: dlt.Pipeline,
    load_id: str | None = None,
    table: str | None = None,
    *,
    table_name: str = "customerio_sync_reports",
) -> DltResource:
    """A dlt resource of `pipeline`'s sync reports as data: one item per load and table.

    Each item has `load_id`, `table`, `action`, `dry_run`, the figures of `sync_report`
    (`rows_in`, `operations`, `accepted`, `rejected`, `attributes_dropped`, `skipped`,
    `requests`, `retries`, `throttled`, `throttled_seconds`, `seconds`,
    `requests_per_second`), `rejected_by_reason` (a JSON object of counts) and `started_at` /
    `finished_at` (UTC). No value of a row is in it. Load it into any dlt destination: it
    merges on (`load_id`, `table`), so loading it after every sync adds each load once and
    updates a load a later run resumed.

    Args:
        pipeline: the pipeline that loaded to the `customerio` destination.
        load_id: only this load.
        table: only this source table.
        table_name: the name of the resource and of the table it loads into.
    """

    def _rows() -> Iterator[dict[str, Any]]:
        state = stored_state(pipeline)
        if state is None:
            return
        reports = state.reports
        for load in [load_id] if load_id else reports.load_ids():
            for report in build_report(load, reports.of_load(load)).tables:
                if table is None or report.table == table:
                    yield _report_row(load, report)

    return dlt.resource(
        _rows,
        name=table_name,
        write_disposition="merge",
        primary_key=("load_id", "table"),
        max_table_nesting=0,
        columns={"rejected_by_reason": {"data_type": "json"}},
    )


def _report_row(load_id: str, report: TableReport) -> dict[str, Any]:
    return {
        "load_id": load_id,
        "table": report.table,
        "action": report.action,
        "dry_run": report.dry_run,
        **{name: getattr(report, name) for name in COUNTERS},
        "attributes_dropped": report.attributes_dropped,
        "rejected_by_reason": report.rejected_by_reason,
        "throttled_seconds": report.throttled_seconds,
        "seconds": report.seconds,
        "requests_per_second": report.requests_per_second,
        "started_at": datetime.fromtimestamp(report.started_at, timezone.utc),
        "finished_at": datetime.fromtimestamp(report.finished_at, timezone.utc),
    }


def record_batch(
    state: PipelineState,
    *,
    load_id: str,
    mapping: CompiledMapping,
    dry_run: bool,
    keys_only: bool = False,
    mapped: Mapped,
    parts: list[Sequence[Entry]],
    result: SendResult,
    skipped: int,
    source_hashes: Sequence[int] | bytes | None,
    started: float,
) -> None:
    """Record one call of the table `mapping` maps: its rejections (none in a dry run), its
    batch's counters (with masked samples in a dry run), a log line.

    `keys_only`: rejected rows keep only the columns that identify them
    (`rejected_row_payload`). `mapped` is what the rows mapped to, `parts` what was sent of it, `skipped` how many rows
    were not sent (unchanged, or already sent); `source_hashes` were hashed before mapping (or
    the digest of the rows' values, `cio_destination.diff.source_rows.unit_digest`).
    """
    table, action = mapping.table, mapping.action
    rejections = mapped.rejections + result.rejections
    # rows sent without an oversized attribute: recorded with the rejections, counted apart
    records = rejections + mapped.dropped
    if not dry_run:
        state.rejects.record(
            load_id,
            table,
            action,
            records,
            person_column=mapping.mapping.identifier,
            keep_columns=key_columns(mapping) if keys_only else None,
        )
    operations = sum(len(part) for part in parts)
    samples = (
        [payload_sample(mapping, e.data) for e in islice(chain.from_iterable(parts), MAX_SAMPLES)]
        if dry_run
        else []
    )
    state.reports.record(
        {
            "load_id": load_id,
            "table_name": table,
            "action": action,
            "batch_id": batch_id(mapped.parts(), rejections, source_hashes),
            "dry_run": int(dry_run),
            "rows_in": mapped.rows_in,
            "operations": operations,
            "accepted": result.stats.accepted,
            "rejected": len(rejections),
            "skipped": skipped,
            "requests": result.stats.requests,
            "retries": result.stats.retries,
            "throttled": result.stats.throttled,
            "throttled_seconds": result.stats.throttled_seconds,
            "started_at": started,
            "finished_at": time.time(),
            "reasons": orjson.dumps(Counter(r.reason for r in records)).decode(),
            "samples": orjson.dumps(samples).decode(),
        }
    )
    logger.info(
        "customerio: table %s (%s)%s: %d rows in, %d operations, %d accepted, %d rows rejected,"
        " %d skipped (already sent or unchanged), %d requests, %d retries",
        table,
        action,
        " [dry run]" if dry_run else "",
        mapped.rows_in,
        operations,
        result.stats.accepted,
        len(rejections),
        skipped,
        result.stats.requests,
        result.stats.retries,
    )


def key_columns(mapping: CompiledMapping) -> set[str]:
    """The columns that identify a row: what `rejected_row_payload = "keys_only"` keeps."""
    keys = mapping.mapping
    named = (keys.identifier, keys.secondary_identifier, keys.object_id, keys.device_token)
    return {c for c in named if c} | set(mapping.event_id_columns) | set(mapping.primary_key)


def _rows_hashed(source_hashes: Sequence[int] | bytes | None) -> bytes | None:
    if not source_hashes:
        return None
    if isinstance(source_hashes, bytes):
        return b"d" + source_hashes
    return array("q", source_hashes).tobytes()


def batch_id(
    parts: list[Sequence[Entry]],
    rejections: list[Rejection],
    source_hashes: Sequence[int] | bytes | None,
) -> str:
    """The same rows give the same id, so a replayed batch replaces its record in the report.

    Every piece is framed by its length (`cio_destination.framing`), and the number of parts
    leads, so two different batches never read alike, whatever bytes their row keys hold. A
    block's keys and sizes are hashed straight from its Arrow buffers.
    """
    pieces: list[bytes | memoryview | None] = [
        # rows skipped before mapping are part of the batch too: their hashes, or a digest
        # of their values behind a mark (17 bytes, never a whole number of 8-byte hashes)
        _rows_hashed(source_hashes),
        b"%d" % len(parts),
    ]
    for part in parts:
        # the row keys and sizes of the entries tell a batch apart, without hashing every payload
        if isinstance(part, EntryBlock):
            pieces += part.key_layout()
        else:
            pieces += texts_layout(entry.row_key for entry in part)
        pieces.append(entry_size_bytes(part))
    for rejection in rejections:
        pieces += [rejection.row_key.encode(), rejection.reason.encode()]
    digest = hashlib.sha256(b"cio-batch-id-3:")  # SHA-256: CPUs hash it in hardware
    frame_into(digest, pieces)
    return digest.hexdigest()[:32]
