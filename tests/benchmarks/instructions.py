"""Instructions per row of the load step, which no other process on the machine changes:
`python -m tests.benchmarks.instructions [--rows N] [--action identify|event ...]`.

CPU time per row moves with the machine's load (other processes evict caches and take turns on
the cores), by a fifth or more on a shared 2-core machine; the instructions a run executes do
not. Each side runs in a fresh process under valgrind's callgrind, counting only while
`pipeline.load()` runs (`runs.instructions_counted`), every thread's, after an uncounted
warm-up run: this destination and the do-nothing destination on the same Arrow rows as the
`arrow` and `events` sections. Instructions are not time (a kernel's copy and Python's
interpreter loop run at very different instructions per cycle), so compare a side with itself
across commits, or this destination with the do-nothing one; each run takes about a minute per
100,000 rows. Needs `valgrind` on the PATH.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import orjson

from tests.benchmarks.sink import SinkProcess, terminate_as_exit

REPO = Path(__file__).resolve().parents[2]
_COLLECTED = re.compile(r"Collected : (\d+)")


def count(spec: dict[str, object]) -> int:
    """The instructions callgrind counted in one run of `spec` (its load step)."""
    process = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "tests.benchmarks.runs",
            orjson.dumps({**spec, "count_instructions": True}).decode(),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    found = _COLLECTED.search(process.stderr)
    if process.returncode != 0 or found is None:
        sys.stderr.write(process.stderr[-4000:])
        raise SystemExit(f"the run under callgrind failed (exit {process.returncode})")
    result = orjson.loads(process.stdout.strip().splitlines()[-1])
    if result["sink"]["ops"] != (0 if spec["target"] == "nothing" else spec["rows"]):
        raise SystemExit(f"the sink counted {result['sink']['ops']} operations")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per run (200,000)")
    parser.add_argument(
        "--action", action="append", choices=("identify", "event"), help="repeatable; both"
    )
    args = parser.parse_args()
    terminate_as_exit()
    with SinkProcess("bench-site", "bench-key") as sink:
        for action in args.action or ["identify", "event"]:
            per_row = {}
            for target in ("customerio", "nothing"):
                spec = {
                    "target": target,
                    "kind": "arrow",
                    "rows": args.rows,
                    "action": action,
                    "sink": sink.url,
                    "site_id": "bench-site",
                    "api_key": "bench-key",
                    "requests_per_second": 100_000,
                    "max_request_bytes": 500_000,
                    "warmup": 500,
                }
                per_row[target] = count(spec) / args.rows
                print(f"  {action:<9} {target:<11} {per_row[target]:9,.0f} instructions/row")
            over = per_row["customerio"] - per_row["nothing"]
            print(f"  {action:<9} over dlt's own: {over:,.0f} instructions/row", flush=True)


if __name__ == "__main__":
    main()
