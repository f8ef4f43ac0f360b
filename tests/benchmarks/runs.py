"""One measured run, in a fresh process: `python -m tests.benchmarks.runs '<spec as JSON>'`.

The parent (`python -m tests.benchmarks`) starts one of these per measurement, so runs never share
a heap, a GC state or a peak RSS. The spec names the run:

* `target`: `customerio` (this destination), `nothing` (a do-nothing `@dlt.destination`),
  `floor` (the kernel floor of `tests.benchmarks.floor`, no dlt) or `paced_floor` (the same
  bodies posted by a thread pool within `requests_per_second`, for the latency runs);
* `kind`: `dict` or `arrow` rows; `rows`; `action`: `identify` (default) or `event`; `lazy` (build the data while it is consumed, for memory
  runs) or not (build it all before the clock starts);
* `tables`: the rows split into this many tables (`people_0`, ...) loaded in parallel (default 1);
* `sink`, `site_id`, `api_key`, `requests_per_second`, `max_request_bytes`;
* `latency`: seconds the sink waits before each answer (set, and its counters zeroed, before the
  warm-up and again before the measured run, so its counters are the measured run's alone);
* `warmup`: rows of an unmeasured run first (imports, first-call set-up, the credential probe);
* `profile`: a path to write cProfile stats of the measured run to (every thread);
* `count_instructions`: the process runs under callgrind, which counts the instructions of the
  measured run's load step only (`tests.benchmarks.instructions`).

The last line on stdout is the result as JSON: seconds per step (wall, and `<step>_cpu`: the
process's CPU seconds, every thread), `cpu_seconds` of the whole measured run (after the data is
built and the warm-up run is done), the sink's counters for the measured run only, the seconds
from the run's start to the sink's first batch request, and the
process's peak RSS (VmHWM).
"""

from __future__ import annotations

import os

os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

import contextlib
import cProfile
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dlt
import httpx
import orjson

from cio_destination import customerio, customerio_adapter
from tests.benchmarks import data, floor

DICT_CHUNK = 10_000
ARROW_CHUNK = 50_000


@dlt.destination(batch_size=10_000, name="nothing")
def nothing(items: Any, table: Any) -> None:
    """The do-nothing destination: dlt's own cost of extract, normalize and load, and no more."""


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def process_cpu() -> float:
    """CPU seconds (user + system) of this process's every thread, and of its waited-for children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def sink_stats(spec: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(httpx.get(spec["sink"] + "/_sink/stats", timeout=10).content)


def sink_reset(spec: dict[str, Any]) -> None:
    latency = spec.get("latency", 0.0)
    httpx.post(f"{spec['sink']}/_sink/reset?latency={latency}", timeout=10).raise_for_status()


# -- data ------------------------------------------------------------------------------------------


def source_chunks(kind: str, rows: int, lazy: bool, start: int = 0) -> Callable[[], Iterator[Any]]:
    """A factory of the chunks a resource yields: lists of dicts or Arrow tables, of the people
    numbered `start` to `start + rows`."""
    chunk = DICT_CHUNK if kind == "dict" else ARROW_CHUNK
    build = data.dict_rows if kind == "dict" else data.arrow_table
    bounds = [(start + a, start + b) for a, b in data.chunk_bounds(rows, chunk)]
    if lazy:
        return lambda: (build(a, b) for a, b in bounds)
    built = [build(a, b) for a, b in bounds]
    return lambda: iter(built)


def table_chunks(
    kind: str, rows: int, lazy: bool, tables: int
) -> list[Callable[[], Iterator[Any]]]:
    """The chunk factories of `tables` tables sharing `rows` people between them."""
    share = rows // tables
    return [
        source_chunks(kind, share if t < tables - 1 else rows - share * t, lazy, share * t)
        for t in range(tables)
    ]


def resource_of(
    chunks: Callable[[], Iterator[Any]], action: str = "identify", name: str = data.TABLE
) -> Any:
    resource = dlt.resource(chunks(), name=name)
    if action == "event":  # one event per row, keyed (de-duplicated) by person and time
        return customerio_adapter(
            resource,
            action="event",
            identifier=data.IDENTIFIER,
            timestamp=data.TIMESTAMP,
            event_name="purchase",
            event_id=[data.IDENTIFIER, data.TIMESTAMP],
        )
    return customerio_adapter(
        resource, action="identify", identifier=data.IDENTIFIER, timestamp=data.TIMESTAMP
    )


# -- pipelines ---------------------------------------------------------------------------------------


def destination_of(spec: dict[str, Any]) -> Any:
    if spec["target"] == "nothing":
        return nothing()
    return customerio(
        site_id=spec["site_id"],
        api_key=spec["api_key"],
        track_url=spec["sink"],
        requests_per_second=spec["requests_per_second"],
        max_request_bytes=spec["max_request_bytes"],
    )


def run_pipeline(
    spec: dict[str, Any], chunks: list[Callable[[], Iterator[Any]]], pipelines_dir: str
):
    pipeline = dlt.pipeline(
        f"bench_{spec['target']}",
        destination=destination_of(spec),
        pipelines_dir=pipelines_dir,
        dev_mode=True,
    )
    action = spec.get("action", "identify")
    names = [data.TABLE] if len(chunks) == 1 else [f"{data.TABLE}_{t}" for t in range(len(chunks))]
    steps: dict[str, float] = {}
    started = time.perf_counter()
    steps["started_monotonic"] = time.monotonic()
    cpu = process_cpu()
    pipeline.extract([resource_of(c, action, n) for c, n in zip(chunks, names, strict=True)])
    cpu = _step(steps, "extract", started, cpu)
    mark = time.perf_counter()
    pipeline.normalize()
    cpu = _step(steps, "normalize", mark, cpu)
    mark = time.perf_counter()
    with instructions_counted(spec.get("count_instructions", False)):
        info = pipeline.load()
    _step(steps, "load", mark, cpu)
    steps["total"] = time.perf_counter() - started
    info.raise_on_failed_jobs()
    return steps


@contextlib.contextmanager
def instructions_counted(on: bool) -> Iterator[None]:
    """Have callgrind (the process runs under it: `tests.benchmarks.instructions`) count the
    instructions of the block only, every thread's."""
    if on:
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True)
    try:
        yield
    finally:
        if on:
            subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True)


def _step(steps: dict[str, float], name: str, mark: float, cpu: float) -> float:
    """Record a step's wall seconds (`name`) and process CPU seconds (`name_cpu`)."""
    now = process_cpu()
    steps[name] = time.perf_counter() - mark
    steps[f"{name}_cpu"] = now - cpu
    return now


# -- the floor: the same operations written by Arrow kernels, packed and sent, no dlt ----------------


def operations_of(spec: dict[str, Any]) -> Callable[[Any], Any]:
    """The kernel floor's writer of the run's action."""
    return floor.event_operations if spec.get("action") == "event" else floor.identify_operations


def run_floor(spec: dict[str, Any], chunks: Callable[[], Iterator[Any]]) -> dict[str, float]:
    """The same bodies the destination sends, from the same Arrow tables (`floor`)."""
    started = time.perf_counter()
    floor.run(spec, [chunks], operations_of(spec))
    return {"total": time.perf_counter() - started}


def run_paced_floor(
    spec: dict[str, Any], chunks: list[Callable[[], Iterator[Any]]]
) -> dict[str, float]:
    """The kernel floor's bodies, from the same Arrow tables, posted by 64 threads within
    `requests_per_second`, with as many requests in flight as the rate and the latency need:
    what a hand-written sender that hides latency achieves, with no dlt."""
    started = time.perf_counter()
    steps = {"started_monotonic": time.monotonic()}
    floor.run(spec, chunks, operations_of(spec), threads=64, queued=8)
    steps["total"] = time.perf_counter() - started
    return steps


# -- Customer.io's official client's pattern: one v1 identify per row ---------------------------------


# -- profiling every thread -------------------------------------------------------------------------


class ThreadProfiles:
    """cProfile of the calling thread and of every thread started while it is on."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def _start_in_thread(self, *_: Any) -> None:
        profile = cProfile.Profile()
        with self.lock:
            self.profiles.append(profile)
        profile.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._start_in_thread)
        self._start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]
        self.profiles[0].disable()

    def dump(self, path: str) -> None:
        merged = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            try:
                merged.add(profile)
            except TypeError:
                continue  # a thread that recorded nothing
        merged.dump_stats(path)


# -- change detection: a second run over a table with 1% of its rows changed ------------------------


def build_warehouse(path: str, rows: int) -> str:
    """A DuckDB table of `rows` people, as the other runs' rows; returns its SQLAlchemy URL."""
    import duckdb

    with duckdb.connect(path) as con:
        con.execute(
            f"""CREATE OR REPLACE TABLE people AS SELECT
                'user-' || lpad(i::VARCHAR, 9, '0') AS uid,
                'user' || i || '@example.com' AS email,
                'Person ' || i AS name,
                ['free', 'pro', 'team', 'enterprise'][i % 4 + 1] AS plan,
                (i % 100000) / 8.0 AS ltv,
                i % 977 AS logins,
                i % 3 <> 0 AS active,
                TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(i) AS updated_at
            FROM range({rows}) AS t(i)"""
        )
    return f"duckdb:///{path}"


def run_changes(spec: dict[str, Any], pipelines_dir: str) -> tuple[dict[str, float], dict]:
    """Sync a DuckDB table once with changes_only, change 1% of its rows, and measure the re-sync:
    reading the source (extract + normalize) against the diff and the sends (load).

    Returns the second run's seconds and the sink's counters before it."""
    import warnings

    import duckdb
    from dlt.sources.sql_database import sql_table

    warnings.filterwarnings("ignore", module="duckdb_engine")
    path = os.path.join(pipelines_dir, "warehouse.duckdb")
    url = build_warehouse(path, spec["rows"])
    destination = customerio(
        site_id=spec["site_id"],
        api_key=spec["api_key"],
        track_url=spec["sink"],
        requests_per_second=spec["requests_per_second"],
        max_request_bytes=spec["max_request_bytes"],
    )
    pipeline = dlt.pipeline("bench_changes", destination=destination, pipelines_dir=pipelines_dir)

    def resource() -> Any:
        table = sql_table(credentials=url, table="people", backend="pyarrow", chunk_size=50_000)
        return customerio_adapter(
            table,
            action="identify",
            identifier=data.IDENTIFIER,
            timestamp=data.TIMESTAMP,
            changes_only=True,
        )

    pipeline.run(resource())
    with duckdb.connect(path) as con:
        con.execute(
            "UPDATE people SET plan = 'changed' WHERE CAST(substr(uid, 6) AS BIGINT) % 100 = 0"
        )
    first = sink_stats(spec)
    steps = {}
    started = time.perf_counter()
    pipeline.extract(resource())
    pipeline.normalize()
    steps["source"] = time.perf_counter() - started
    mark = time.perf_counter()
    pipeline.load().raise_on_failed_jobs()
    steps["load"] = time.perf_counter() - mark
    steps["total"] = time.perf_counter() - started
    return steps, first


# -- one run ----------------------------------------------------------------------------------------


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    target, kind = spec["target"], spec["kind"]
    pipelines_dir = tempfile.mkdtemp(prefix="cio-bench-")
    try:
        sink_reset(spec)
        if spec.get("warmup"):
            warm = source_chunks(kind, spec["warmup"], lazy=True)
            if target == "floor":
                run_floor(spec, warm)
            elif target == "paced_floor":
                run_paced_floor(spec, [warm])
            else:
                run_pipeline({**spec, "count_instructions": False}, [warm], pipelines_dir)
        lazy = spec.get("lazy", False)
        chunks = table_chunks(kind, spec["rows"], lazy, spec.get("tables", 1))
        rss_before = proc_status_kb("VmRSS")
        sink_reset(spec)
        before = sink_stats(spec)
        if target == "changes":
            steps, before = run_changes(spec, pipelines_dir)
        profiles = ThreadProfiles() if spec.get("profile") else None
        if profiles is not None:
            profiles.__enter__()
        cpu_before = process_cpu()
        if target == "changes":
            pass  # measured above
        elif target == "floor":
            steps = run_floor(spec, chunks[0])
        elif target == "paced_floor":
            steps = run_paced_floor(spec, chunks)
        else:
            steps = run_pipeline(spec, chunks, pipelines_dir)
        cpu = process_cpu() - cpu_before
        if profiles is not None:
            profiles.__exit__(None, None, None)
            profiles.dump(spec["profile"])
        after = sink_stats(spec)
    finally:
        shutil.rmtree(pipelines_dir, ignore_errors=True)
    delta = {
        key: after[key] - before[key]
        for key in (
            "batch_requests",
            "v1_requests",
            "region_requests",
            "ops",
            "body_bytes",
            "unauthorized",
            "not_found",
            "malformed",
        )
    }
    delta["max_body_bytes"] = after["max_body_bytes"]
    delta["max_in_flight"] = after["max_in_flight"]
    if after["first_request"] is not None and after["last_answer"] is not None:
        delta["sink_span"] = after["last_answer"] - after["first_request"]
    started = steps.pop("started_monotonic", None)
    if after["first_batch"] is not None and after["last_answer"] is not None:
        # the batch requests' span: from the first one's arrival to the last answer
        delta["batch_span"] = after["last_answer"] - after["first_batch"]
        if started is not None:
            delta["first_batch_after"] = after["first_batch"] - started
    return {
        "spec": spec,
        "seconds": steps,
        "cpu_seconds": cpu,
        "sink": delta,
        "rss_before_kb": rss_before,
        "peak_rss_kb": proc_status_kb("VmHWM"),
    }


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    result = measure(spec)
    sys.stdout.write("\n" + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
