"""Throughput and memory benchmark of the `customerio` destination: `python -m tests.benchmarks`.

Run it from the repository root (it is not part of the default pytest run)::

    .venv/bin/python -m tests.benchmarks            # full sizes, about 10 minutes on 2 cores
    .venv/bin/python -m tests.benchmarks --quick    # 10x smaller, a smoke check
    .venv/bin/python -m tests.benchmarks --only arrow --only latency --json /tmp/bench.json

Sections (`--only NAME`, repeatable):

* `dict`: 200,000 identify rows as dicts through a whole dlt pipeline (extract, normalize, load)
  into this destination and into a do-nothing `@dlt.destination(batch_size=10_000)`; their ratio.
* `arrow`: 1,000,000 identify rows yielded as Arrow tables into this destination, into the
  do-nothing destination, and through the kernel floor (`tests/benchmarks/floor.py`: the same
  operations written by Arrow kernels, packed without a per-entry Python loop and posted to the
  same sink within the same rate limit, no dlt), side by side: rows/s, MB/s, CPU-us/row and
  requests of each; the ratios to the floor and to do-nothing, this destination's CPU per row
  over dlt's own, and its requests against the floor's.
* `events`: 1,000,000 event rows (one purchase event per row, de-duplicated by person and time)
  as Arrow tables, the same three sides as `arrow`; and 200,000 as dicts, against the
  do-nothing destination.
* `memory`: peak RSS (VmHWM) of 100,000- and 1,000,000-row runs, Arrow and dict, this destination
  and the do-nothing one, each in a fresh process with the rows built while they are consumed;
  the 1M ratio to the do-nothing destination and the 1M/100k growth ("flat" = at most 1.2x).
* `latency`: Customer.io's default budget (`requests_per_second=100`, bodies up to 500 KB) with a
  sink that answers after 0, 50, 200 and 500 ms (`--latencies`): 1,000,000 Arrow identify rows in
  one table, and in four tables of 250,000 loaded in parallel, against a paced floor (the same
  bodies posted by 64 threads within the same rate, no dlt), side by side at each latency. The
  share of the budget, MB/s and the ratio to the floor are over the batch requests' span at the
  sink (first batch request to last answer); the seconds from the run's start to the first batch
  request and the most requests in flight are figures of their own. Then 200,000 dict rows at 0
  and 200 ms (the load step's rows/s: latency hidden when they are about equal), and the peak
  memory of the 1M-row run at 500 ms against the do-nothing destination.
* `state`: a 1,000,000-row DuckDB table synced plainly, against `changes_only` with `state_url`
  on PostgreSQL: the first sync, a re-sync with nothing changed and one with 1% changed (see
  `tests/benchmarks/state.py`).
* `shared`: four sync processes sharing one `rate_limit_url` budget (Redis, then PostgreSQL) at
  20 requests/s: the share of the budget they used (see `tests/benchmarks/shared.py`).
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
in one invocation (best of `--repeat`, default 3), because the machine is shared and noisy. Each
run also reports its process CPU (every thread, from after its data is built and its warm-up run
is done), printed as CPU-us/row beside its wall rate: CPU time moves far less with the machine's
load than wall time. Every ratio is printed with its target and PASS or MISS. The
lean sink (`tests.benchmarks.sink`) is an asyncio server in its own process on 127.0.0.1; it counts
operations, and every run asserts that the operations it received equal the rows sent.

Throughput runs use `requests_per_second=1000` (`--rps`): the default 100/s at 500 KB a body caps
any sender at 50 MB/s, so the payload target could not be measured above the rate limit.

`python -m tests.benchmarks.instructions` counts, under valgrind's callgrind, the instructions
of the load step per Arrow identify and event row, this destination's and the do-nothing
destination's: a figure no other process on the machine moves, to compare commits by.

Figures go to `tests/benchmarks/results/latest.json` (git-ignored; `--json PATH` to choose),
with the commit, so runs can be compared across commits.
"""
