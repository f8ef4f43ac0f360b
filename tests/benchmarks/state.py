"""The `state` section: `changes_only` syncs with every piece of state in PostgreSQL (`state_url`).

A DuckDB table of people is read with `sql_table(backend="pyarrow")` and synced:

* `plain`: a plain identify sync of the table (no `changes_only`), as the yardstick;
* `state`: with `changes_only` and `state_url` on PostgreSQL: the first sync (every fingerprint
  written), a re-sync with nothing changed, and a re-sync with 1% of the rows changed.

Each side runs in a fresh process (`python -m tests.benchmarks.state --run SPEC`), interleaved.
Figures: the first sync's load time against the plain sync's (target <= 2x), the unchanged
re-sync's destination time against the plain sync's (<= 0.3x), and the 1%-changed re-sync's
destination time against its reading of the source (< 1x). PostgreSQL is
`CIO_TEST_POSTGRES_URL`, or a throwaway server started as tests/test_postgres.py does.

`python -m tests.benchmarks --only state`, or on its own: `python -m tests.benchmarks.state
[--rows N] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import orjson

TARGETS = {
    "state_first_sync_ratio": ("<=", 2.0),
    "state_unchanged_ratio": ("<=", 0.3),
    "state_changed_share": ("<", 1.0),
}


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, str | None]]:
    """A PostgreSQL URL: the one given, or a throwaway server's; and the server's data directory
    where known (a throwaway server's), to count its CPU."""
    given = os.environ.get("CIO_TEST_POSTGRES_URL")
    if given:
        yield given, None
        return
    from tests.test_postgres import ThrowawayPostgres

    server = ThrowawayPostgres()
    try:
        yield server.start(), str(server.data)
    finally:
        server.stop()


def server_cpu(data: str | None) -> float:
    """CPU seconds used so far by the processes of the PostgreSQL server of data directory
    `data` (its postmaster and the backends it started); 0 where not known."""
    if data is None:
        return 0.0
    with open(os.path.join(data, "postmaster.pid")) as pid_file:
        postmaster = int(pid_file.readline())
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if postmaster in (int(pid), int(fields[1])):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _timed(pipeline: Any, resource: Any, data: str | None = None) -> dict[str, float]:
    """Seconds reading the source (extract + normalize) and in the destination (load), and the
    load's CPU seconds: this process's and the PostgreSQL server's (0 where not known)."""
    started = time.perf_counter()
    pipeline.extract(resource)
    pipeline.normalize()
    source = time.perf_counter() - started
    cpu, server, mark = time.process_time(), server_cpu(data), time.perf_counter()
    pipeline.load().raise_on_failed_jobs()
    return {
        "source": source,
        "load": time.perf_counter() - mark,
        "load_cpu": time.process_time() - cpu,
        "server_cpu": server_cpu(data) - server,
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One side, in this process: the plain sync, or the three syncs with `state_url`."""
    import dlt
    import duckdb
    from dlt.sources.sql_database import sql_table

    from cio_destination import customerio, customerio_adapter
    from tests.benchmarks import data
    from tests.benchmarks.runs import build_warehouse, sink_stats

    warnings.filterwarnings("ignore", module="duckdb_engine")
    directory = tempfile.mkdtemp(prefix="cio-bench-state-")
    try:
        path = os.path.join(directory, "warehouse.duckdb")
        url = build_warehouse(path, spec["rows"])
        keys: dict[str, Any] = {}
        if spec["side"] == "state":
            keys = {"state_url": spec["postgres"], "state_schema": f"bench_{uuid.uuid4().hex[:8]}"}
        destination = customerio(
            site_id=spec["site_id"],
            api_key=spec["api_key"],
            track_url=spec["sink"],
            requests_per_second=spec["requests_per_second"],
            **keys,
        )
        pipeline = dlt.pipeline("bench_state", destination=destination, pipelines_dir=directory)

        def resource() -> Any:
            table = sql_table(credentials=url, table="people", backend="pyarrow", chunk_size=50_000)
            return customerio_adapter(
                table,
                action="identify",
                identifier=data.IDENTIFIER,
                timestamp=data.TIMESTAMP,
                changes_only=spec["side"] == "state",
            )

        before = sink_stats(spec)["ops"]
        result: dict[str, Any] = {"first": _timed(pipeline, resource(), spec.get("data"))}
        result["first"]["ops"] = sink_stats(spec)["ops"] - before
        if spec["side"] == "state":
            for name in ("unchanged", "changed"):
                if name == "changed":
                    with duckdb.connect(path) as con:
                        con.execute(
                            "UPDATE people SET plan = 'changed'"
                            " WHERE CAST(substr(uid, 6) AS BIGINT) % 100 = 0"
                        )
                before = sink_stats(spec)["ops"]
                result[name] = _timed(pipeline, resource(), spec.get("data"))
                result[name]["ops"] = sink_stats(spec)["ops"] - before
        return result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One side in a fresh process."""
    process = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.state", "--run", orjson.dumps(spec).decode()],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if process.returncode != 0:
        sys.stderr.write(process.stderr[-4000:])
        raise SystemExit(f"state benchmark side {spec['side']} failed")
    return orjson.loads(process.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def section(spec: dict[str, Any], repeat: int) -> tuple[dict[str, float], list[str]]:
    """Both sides `repeat` times, interleaved; the figures (best of each) and any failed check."""
    rows = spec["rows"]
    print(
        f"\n[state] a {rows:,}-row DuckDB table (sql_table, pyarrow): a plain identify sync,"
        " against changes_only with state_url on PostgreSQL (first sync, unchanged, 1% changed)"
    )
    plain: list[dict[str, Any]] = []
    state: list[dict[str, Any]] = []
    failures = []
    with postgres() as (url, data):
        for round_ in range(1, repeat + 1):
            for side, runs in (("plain", plain), ("state", state)):
                result = measure({**spec, "side": side, "postgres": url, "data": data})
                runs.append(result)
                print(
                    f"  {side} #{round_}: "
                    + ", ".join(
                        f"{name} source {r['source']:.2f} s load {r['load']:.2f} s"
                        f" (CPU {r['load_cpu']:.2f} s, server {r['server_cpu']:.2f} s)"
                        f" {r['ops']:,} ops"
                        for name, r in result.items()
                    ),
                    flush=True,
                )
    for name, runs in (("plain first", plain), ("state first", state)):
        for result in runs:
            if result["first"]["ops"] != rows:
                failures.append(f"{name}: {result['first']['ops']} ops for {rows} rows")
    for result in state:
        if result["unchanged"]["ops"] != 0 or result["changed"]["ops"] != (rows + 99) // 100:
            failures.append(
                f"state re-syncs sent {result['unchanged']['ops']} and {result['changed']['ops']} ops"
            )
    plain_load = min(r["first"]["load"] for r in plain)
    figures = {
        "state_plain_load_seconds": plain_load,
        "state_first_load_seconds": min(r["first"]["load"] for r in state),
        "state_unchanged_load_seconds": min(r["unchanged"]["load"] for r in state),
        "state_changed_load_seconds": min(r["changed"]["load"] for r in state),
        "state_changed_source_seconds": min(r["changed"]["source"] for r in state),
        "state_first_load_cpu_seconds": min(r["first"]["load_cpu"] for r in state),
        "state_first_server_cpu_seconds": min(r["first"]["server_cpu"] for r in state),
    }
    figures["state_first_sync_ratio"] = figures["state_first_load_seconds"] / plain_load
    figures["state_unchanged_ratio"] = figures["state_unchanged_load_seconds"] / plain_load
    figures["state_changed_share"] = min(
        r["changed"]["load"] / r["changed"]["source"] for r in state
    )
    return figures, failures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.state")
    parser.add_argument("--run", help="one side, in this process (internal)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.run:
        sys.stdout.write("\n" + orjson.dumps(run(orjson.loads(args.run))).decode() + "\n")
        return
    from tests.benchmarks.sink import SinkProcess, terminate_as_exit

    terminate_as_exit()

    with SinkProcess("bench-site", "bench-key") as sink:
        spec = {
            "rows": args.rows,
            "sink": sink.url,
            "site_id": "bench-site",
            "api_key": "bench-key",
            "requests_per_second": 1000.0,
        }
        figures, failures = section(spec, args.repeat)
    for name, value in figures.items():
        comparison, threshold = TARGETS.get(name, ("", None))
        target = f"  (target {comparison} {threshold:g})" if threshold is not None else ""
        print(f"  {name:<32} {value:8.3f}{target}")
    for failure in failures:
        print(f"  CHECK FAILED {failure}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
