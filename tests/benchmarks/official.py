"""The `official` section: Customer.io's official Python client as the anchor, end to end.

From the same 1,000,000-row DuckDB table, side by side in one run:

* `official`: what a user writes with customerio-python 3.x: DuckDB's own fetch
  (`fetchmany`), one identify operation per row, chunks kept under 500 KB (measured on the JSON
  `requests` will send), `CustomerIO.batch()` from a pool of 32 threads, a 207's errors read;
* `pyarrow`: this destination reading the table through `sql_table(backend="pyarrow")` with the
  shipped warehouse sync's reader (`NativeArrowTableLoader`: DuckDB hands over Arrow), and the
  same with dlt's own reader (row tuples turned into Arrow in Python), as before that reader;
* `sqlalchemy`: the same through `sql_table(backend="sqlalchemy")`, dict rows through dlt's
  own extract and normalize (fewer rows: the rate is what counts), beside a do-nothing
  destination reading the same way, whose CPU per row is dlt's own cost.

Every run is a fresh process (`python -m tests.benchmarks.official '<spec>'`) and must deliver
one operation per row to the sink; this destination's runs must also account for every row in
their sync report (accepted + rejected = rows). The official client only speaks `https://` to
its host; on the loopback sink its session's adapter sends the same requests over `http://`
(`loopback_client`), nothing else of the client changes.

customerio-python is an optional extra (`pip install -e ".[bench]"`); without it the section
prints that the anchor was skipped, and why, and the rest of the benchmark runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

import json
import shutil
import sys
import tempfile
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dlt
import orjson

from cio_destination import customerio, customerio_adapter, sync_report
from cio_destination.arrow_reader import NativeArrowTableLoader
from tests.benchmarks import data
from tests.benchmarks.runs import build_warehouse, nothing, proc_status_kb, sink_stats

MODULE = "tests.benchmarks.official"
ROWS = 1_000_000
SQLALCHEMY_ROWS = 200_000
THREADS = 32
FETCH_ROWS = 10_000
MAX_BODY = 500_000
CHUNK_SIZE = 50_000
TARGETS = {"official_pyarrow_ratio": (">=", 3.0)}
"""The section's targets, merged into the benchmark's."""


def available() -> str | None:
    """None when customerio-python 3.x can run the anchor, else why not."""
    try:
        from importlib.metadata import version

        import customerio
    except ImportError:
        return 'customerio-python is not installed (pip install -e ".[bench]")'
    if not hasattr(customerio.CustomerIO, "batch"):
        return f"customerio-python {version('customerio')} has no batch() (3.0 added it)"
    return None


# -- the parent: the section of `python -m tests.benchmarks` ----------------------------------------


def section(bench: Any) -> None:
    """Measure the anchor and this destination side by side; figures into `bench`."""
    why = available()
    rows = ROWS // 10 if bench.args.quick else ROWS
    sa_rows = SQLALCHEMY_ROWS // 10 if bench.args.quick else SQLALCHEMY_ROWS
    print(
        f"\n[official] a {rows:,}-row DuckDB table: customerio-python batch() from {THREADS}"
        f" threads vs this destination (sql_table pyarrow; sqlalchemy on {sa_rows:,} rows)"
    )
    if why is not None:
        print(f"  official-client anchor skipped: {why}")
    scratch = tempfile.mkdtemp(prefix="cio-bench-official-")
    try:
        url = build_warehouse(str(Path(scratch) / "warehouse.duckdb"), rows)
        small = build_warehouse(str(Path(scratch) / "smaller.duckdb"), sa_rows)
        specs = {
            "pyarrow customerio": spec(bench, "customerio", "pyarrow", rows, url),
            "pyarrow customerio (dlt read)": spec(
                bench, "customerio", "pyarrow", rows, url, reader="dlt"
            ),
            "sqlalchemy customerio": spec(bench, "customerio", "sqlalchemy", sa_rows, small),
            "sqlalchemy do-nothing": spec(bench, "nothing", "sqlalchemy", sa_rows, small),
        }
        if why is None:
            specs = {"official client": spec(bench, "official", "fetch", rows, url), **specs}
        results = bench.side_by_side(specs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name in ("pyarrow customerio", "pyarrow customerio (dlt read)", "sqlalchemy customerio"):
        for result in results[name]:
            if result["accounted"] != result["spec"]["rows"]:
                bench.failures.append(
                    f"{result['label']}: the sync report accounts for {result['accounted']} of"
                    f" {result['spec']['rows']} rows"
                )
    record(bench, results, why)


def spec(bench: Any, target: str, read: str, rows: int, url: str, **extra: Any) -> dict[str, Any]:
    return bench.spec(target, read, rows, module=MODULE, warehouse=url, threads=THREADS, **extra)


def record(bench: Any, results: dict[str, list[dict[str, Any]]], why: str | None) -> None:
    def rate(name: str) -> float:
        return max(r["spec"]["rows"] / r["seconds"]["total"] for r in results[name])

    pyarrow, sqlalchemy = rate("pyarrow customerio"), rate("sqlalchemy customerio")
    idle = results["sqlalchemy do-nothing"]
    bench.figure("official_pyarrow_rows_per_s", pyarrow, "rows/s")
    best_run = min(results["pyarrow customerio"], key=lambda r: r["seconds"]["total"])
    fastest, fastest_rows = best_run["seconds"], best_run["spec"]["rows"]
    bench.figure(
        "official_pyarrow_source_seconds",
        fastest["extract"] + fastest["normalize"],
        "s",
        note="dlt reading the table (sql_table extract + normalize), before this destination",
    )
    bench.figure("official_pyarrow_load_seconds", fastest["load"], "s")
    dlt_reader = rate("pyarrow customerio (dlt read)")
    bench.figure("official_pyarrow_dlt_reader_rows_per_s", dlt_reader, "rows/s")
    slowest = min(results["pyarrow customerio (dlt read)"], key=lambda r: r["seconds"]["total"])
    bench.figure(
        "official_pyarrow_dlt_reader_source_seconds",
        slowest["seconds"]["extract"] + slowest["seconds"]["normalize"],
        "s",
        note="the same read with dlt's own reader (row tuples to Arrow in Python)",
    )
    bench.figure("official_sqlalchemy_rows_per_s", sqlalchemy, "rows/s")
    bench.figure(
        "official_do_nothing_sqlalchemy_rows_per_s", rate("sqlalchemy do-nothing"), "rows/s"
    )
    bench.figure(
        "official_do_nothing_sqlalchemy_cpu_us_per_row",
        min(r["cpu_seconds"] / r["spec"]["rows"] for r in idle) * 1e6,
        "us/row",
        note="dlt's own extract + normalize of sql_table(backend='sqlalchemy') rows",
    )
    if why is not None:
        return
    official = rate("official client")
    bench.figure("official_client_rows_per_s", official, "rows/s")
    bench.figure("official_pyarrow_ratio", pyarrow / official, "x")
    bench.figure(
        "official_pyarrow_dlt_reader_ratio",
        dlt_reader / official,
        "x",
        note="sql_table(backend='pyarrow') with dlt's own reader, as before NativeArrowTableLoader",
    )
    bench.figure(
        "official_pyarrow_load_step_ratio",
        fastest_rows / fastest["load"] / official,
        "x",
        note="this destination's own step (dlt's load) alone, against the whole official run",
    )
    bench.figure("official_sqlalchemy_ratio", sqlalchemy / official, "x")


# -- the child: one measured run --------------------------------------------------------------------


def run_official(spec: dict[str, Any]) -> dict[str, float]:
    """What a user writes with customerio-python 3.x, from the table to the last answer."""
    import duckdb

    client = loopback_client(spec["sink"], spec["site_id"], spec["api_key"])
    errors: list[dict[str, Any]] = []

    def send(operations: list[dict[str, Any]]) -> None:
        response = client.batch(operations)
        if response.status_code == 207:  # some operations refused: batch() does not say
            errors.extend(response.json().get("errors", []))

    started = time.perf_counter()
    path = spec["warehouse"].removeprefix("duckdb:///")
    with (
        duckdb.connect(path, read_only=True) as con,
        ThreadPoolExecutor(spec["threads"]) as pool,
    ):
        pending: deque[Future[None]] = deque()
        cursor = con.execute("SELECT * FROM people")
        names = [d[0] for d in cursor.description]
        while rows := cursor.fetchmany(FETCH_ROWS):
            for chunk in chunks_under(operations_of(names, rows), MAX_BODY):
                pending.append(pool.submit(send, chunk))
                while len(pending) > 2 * spec["threads"]:
                    pending.popleft().result()
        while pending:
            pending.popleft().result()
    client.close()
    return {"total": time.perf_counter() - started}


def operations_of(names: list[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Identify operations of DuckDB rows, with unix-second timestamps as the Track API takes."""
    operations = []
    for row in rows:
        record = dict(zip(names, row, strict=True))
        identifier = record.pop(data.IDENTIFIER)
        timestamp = record.pop(data.TIMESTAMP)
        operations.append(
            {
                "type": "person",
                "action": "identify",
                "identifiers": {"id": identifier},
                "attributes": record,
                "timestamp": int(timestamp.timestamp()),
            }
        )
    return operations


def chunks_under(operations: list[dict[str, Any]], limit: int) -> list[list[dict[str, Any]]]:
    """Operations in chunks whose body, as `requests` writes it (`json.dumps`, `", "`
    separators), stays under `limit` bytes: `{"batch": [` + ops + `]}`."""
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    used = len('{"batch": []}')
    for operation in operations:
        size = len(json.dumps(operation).encode()) + (2 if current else 0)
        if current and used + size > limit:
            chunks.append(current)
            current, used, size = [], len('{"batch": []}'), size - 2
        current.append(operation)
        used += size
    if current:
        chunks.append(current)
    return chunks


def loopback_client_class() -> type:
    """`customerio.CustomerIO` whose session sends its `https://` requests to the loopback sink
    over `http://`: the only change made to the client."""
    from customerio import CustomerIO
    from customerio.client_base import TCPKeepAliveHTTPAdapter

    class _Plain(TCPKeepAliveHTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            request.url = "http://" + request.url.removeprefix("https://")
            return super().send(request, **kwargs)

    class LoopbackCustomerIO(CustomerIO):
        def _build_session(self) -> Any:
            session = super()._build_session()
            retries = session.get_adapter("https://").max_retries
            session.mount("https://", _Plain(max_retries=retries))
            return session

    return LoopbackCustomerIO


def loopback_client(sink: str, site_id: str, api_key: str) -> Any:
    host, _, port = sink.removeprefix("http://").partition(":")
    return loopback_client_class()(site_id, api_key, host=host, port=int(port))


def run_sql_table(spec: dict[str, Any], pipelines_dir: str) -> tuple[dict[str, float], int]:
    """This destination (or the do-nothing one) reading the table through `sql_table`; returns
    the seconds and the rows its sync report accounts for."""
    from dlt.sources.sql_database import sql_table

    warnings.filterwarnings("ignore", module="duckdb_engine")
    if spec["target"] == "nothing":
        destination = nothing()
    else:
        destination = customerio(
            site_id=spec["site_id"],
            api_key=spec["api_key"],
            track_url=spec["sink"],
            requests_per_second=spec["requests_per_second"],
            max_request_bytes=spec["max_request_bytes"],
        )
    pipeline = dlt.pipeline(
        f"bench_{spec['target']}_{spec['kind']}",
        destination=destination,
        pipelines_dir=pipelines_dir,
        dev_mode=True,
    )
    native = spec["kind"] == "pyarrow" and spec.get("reader", "native") == "native"
    table = sql_table(
        credentials=spec["warehouse"],
        table="people",
        backend=spec["kind"],
        chunk_size=CHUNK_SIZE,
        table_loader_class=NativeArrowTableLoader if native else None,
    )
    resource = customerio_adapter(
        table, action="identify", identifier=data.IDENTIFIER, timestamp=data.TIMESTAMP
    )
    seconds = {}
    started = time.perf_counter()
    pipeline.extract(resource)
    seconds["extract"] = time.perf_counter() - started
    pipeline.normalize()
    seconds["normalize"] = time.perf_counter() - started - seconds["extract"]
    pipeline.load().raise_on_failed_jobs()
    seconds["total"] = time.perf_counter() - started
    seconds["load"] = seconds["total"] - seconds["extract"] - seconds["normalize"]
    if spec["target"] == "nothing":
        return seconds, 0
    tables = sync_report(pipeline).tables
    return seconds, sum(t.accepted + t.rejected for t in tables)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    pipelines_dir = tempfile.mkdtemp(prefix="cio-bench-")
    try:
        before = sink_stats(spec)
        cpu = time.process_time()
        accounted = 0
        if spec["target"] == "official":
            seconds = run_official(spec)
        else:
            seconds, accounted = run_sql_table(spec, pipelines_dir)
        cpu = time.process_time() - cpu
        after = sink_stats(spec)
    finally:
        shutil.rmtree(pipelines_dir, ignore_errors=True)
    keys = ("batch_requests", "v1_requests", "region_requests", "ops", "body_bytes")
    delta = {key: after[key] - before[key] for key in keys}
    for key in ("unauthorized", "not_found", "malformed"):
        delta[key] = after[key] - before[key]
    delta["max_body_bytes"] = after["max_body_bytes"]
    return {
        "spec": spec,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "accounted": accounted,
        "sink": delta,
        "peak_rss_kb": proc_status_kb("VmHWM"),
    }


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    result = measure(spec)
    sys.stdout.write("\n" + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
