"""Throughput and memory benchmark of the `customerio` destination: `python -m tests.benchmarks`.

Run it from the repository root (it is not part of the default pytest run)::

    .venv/bin/python -m tests.benchmarks            # full sizes, about 10 minutes on 2 cores
    .venv/bin/python -m tests.benchmarks --quick    # 10x smaller, a smoke check
    .venv/bin/python -m tests.benchmarks --only arrow --only latency --json /tmp/bench.json

Sections (`--only NAME`, repeatable):

* `dict`: 200,000 identify rows as dicts through a whole dlt pipeline (extract, normalize, load)
  into this destination and into a do-nothing `@dlt.destination(batch_size=10_000)`; their ratio.
* `arrow`: 1,000,000 identify rows yielded as Arrow tables into this destination, against a
  hand-written floor (Arrow -> orjson -> httpx posting the same <= 500 KB bodies, no dlt); the ratio
  and the payload MB/s. The do-nothing destination's Arrow rate is printed for context.
* `events`: 1,000,000 event rows (one purchase event per row, de-duplicated by person and time)
  as Arrow tables, rows/s and payload MB/s against Customer.io's 50 MB/s budget; and 200,000 as
  dicts, against the do-nothing destination.
* `memory`: peak RSS (VmHWM) of 100,000- and 1,000,000-row runs, Arrow and dict, this destination
  and the do-nothing one, each in a fresh process with the rows built while they are consumed;
  the 1M ratio to the do-nothing destination and the 1M/100k growth ("flat" = at most 1.2x).
* `latency`: a sink that answers after 200 ms, `requests_per_second=50` and
  `max_request_bytes=1000`, so the sync needs ~500 requests: achieved requests/s and its share of
  the 50/s budget (the load step's time).
* `official`: the anchor, Customer.io's official Python client (customerio-python 3.x,
  `pip install -e ".[bench]"`) end to end from a 1,000,000-row DuckDB table: DuckDB's fetch,
  operations chunked under 500 KB, `batch()` from 32 threads; against this destination reading
  the same table through `sql_table(backend="pyarrow")` with the shipped sync's reader (target:
  at least 3x; dlt's own reader beside it) and, on 200,000
  rows, `backend="sqlalchemy"` beside a do-nothing destination (dlt's own CPU per row). Without
  the client it prints that the anchor was skipped and why (`tests/benchmarks/official.py`).
* `profile`: cProfile of every thread of smaller destination runs, top functions in
  cio_destination's own code. Runs by itself when a throughput target is missed.

Every measured run is a fresh process (`tests.benchmarks.runs`); ratios come from runs interleaved
in one invocation (best of `--repeat`, default 3), because the machine is shared and noisy. The
lean sink (`tests.benchmarks.sink`) is an asyncio server in its own process on 127.0.0.1; it counts
operations, and every run asserts that the operations it received equal the rows sent.

Throughput runs use `requests_per_second=1000` (`--rps`): the default 100/s at 500 KB a body caps
any sender at 50 MB/s, so the payload target could not be measured above the rate limit.

Figures go to `tests/benchmarks/results/latest.json` (git-ignored; `--json PATH` to choose),
with the commit, so runs can be compared across commits.
"""
