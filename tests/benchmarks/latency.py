"""The benchmark's latency section: Customer.io's default budget at real latencies.

`python -m tests.benchmarks --only latency [--latencies 0,50,200,500]`. At each sink latency,
side by side: this destination with one table of all the Arrow identify rows, with four tables
sharing them (loaded in parallel), and the paced floor (`runs.run_paced_floor`: the same bodies
posted by a thread pool within the same rate, no dlt). Rates are over the batch requests' span
at the sink (first batch request to last answer); the seconds from the run's start to the first
batch request (dlt's extract and normalize, the credential check) are a figure of their own.
Then dict rows at 0 and 200 ms (latency hidden: about equal rates over the batch requests' span,
enough rows that the budget, not a load's fixed round trips, sets the pace), and the peak memory
of the 1M-row run at 500 ms against the do-nothing destination.
"""

from __future__ import annotations

from typing import Any

LATENCIES = (0.0, 0.05, 0.2, 0.5)
RPS = 100.0
# Dict rows: since dict jobs are read straight into Arrow, 200k rows load in about a second at
# 0 ms, so the two or three round trips every load waits for at 200 ms (the credential check's,
# the last answers') were a third of the load step and the ratio measured them, not how well
# the latency is hidden. 500k rows take 2.5 s of the budget.
SIZES = {"latency_rows": 1_000_000, "latency_dict_rows": 500_000}
TARGETS = {
    **{
        f"latency_{tables}_{ms}ms_{figure}": target
        for tables in ("1x1M", "4x250k")
        for ms in (0, 50, 200, 500)
        for figure, target in (
            ("budget_share", (">=", 0.85)),
            ("mb_per_s", (">=", 42.0)),
            ("vs_floor", (">=", 0.9)),
        )
    },
    "latency_dict_200ms_vs_0ms": (">=", 0.85),
    "memory_ratio_arrow_500ms": ("<=", 1.5),
}


def requests_per_s(result: dict[str, Any]) -> float:
    """Batch requests a second over the batch requests' span at the sink."""
    sink = result["sink"]
    return sink["batch_requests"] / sink["batch_span"]


def paced(result: dict[str, Any]) -> str:
    """The request rate and the most requests in flight, for a run's line (latency runs)."""
    sink = result["sink"]
    if result["spec"].get("latency") is None or not sink.get("batch_span"):
        return ""
    return f"  {requests_per_s(result):5.1f} req/s, {sink['max_in_flight']:>3} in flight"


def section(bench: Any) -> None:
    """Arrow rows at every latency, then dict rows, then memory (see the module docstring)."""
    rows, warm = bench.sizes["latency_rows"], bench.sizes["warmup_rows"]
    latencies = bench.args.latencies
    print(
        f"\n[latency] {rows:,} Arrow identify rows, requests_per_second={RPS:g},"
        " max_request_bytes=500000; sink latency "
        + ", ".join(f"{s * 1000:.0f}" for s in latencies)
        + " ms; destination vs paced floor"
    )
    for latency in latencies:
        arrow_at(bench, rows, warm, latency)
    dict_rows(bench)
    memory(bench)


def arrow_at(bench: Any, rows: int, warm: int, latency: float) -> None:
    ms = round(latency * 1000)
    common = {"requests_per_second": RPS, "latency": latency, "warmup": warm}
    results = bench.side_by_side(
        {
            f"{ms}ms customerio 1x1M": bench.spec("customerio", "arrow", rows, **common),
            f"{ms}ms customerio 4x250k": bench.spec(
                "customerio", "arrow", rows, tables=4, **common
            ),
            f"{ms}ms paced floor": bench.spec("paced_floor", "arrow", rows, **common),
        }
    )
    floor = max(results[f"{ms}ms paced floor"], key=requests_per_s)
    bench.figure(f"latency_floor_{ms}ms_req_per_s", requests_per_s(floor), "req/s")
    bench.figure(f"latency_floor_{ms}ms_in_flight", floor["sink"]["max_in_flight"], "requests")
    for tables in ("1x1M", "4x250k"):
        ours = max(results[f"{ms}ms customerio {tables}"], key=requests_per_s)
        name = f"latency_{tables}_{ms}ms"
        sink = ours["sink"]
        achieved = requests_per_s(ours)
        bench.figure(f"{name}_req_per_s", achieved, "req/s")
        bench.figure(f"{name}_budget_share", achieved / RPS, "of budget")
        bench.figure(f"{name}_mb_per_s", sink["body_bytes"] / 1e6 / sink["batch_span"], "MB/s")
        bench.figure(f"{name}_vs_floor", achieved / requests_per_s(floor), "x")
        bench.figure(f"{name}_requests", sink["batch_requests"], "requests")
        bench.figure(f"{name}_in_flight", sink["max_in_flight"], "requests")
        bench.figure(f"{name}_first_request_s", sink["first_batch_after"], "s")
    bench.figure(f"latency_floor_{ms}ms_requests", floor["sink"]["batch_requests"], "requests")


def dict_rows(bench: Any) -> None:
    rows, warm = bench.sizes["latency_dict_rows"], bench.sizes["warmup_rows"]
    print(
        f"\n[latency:dict] {rows:,} dict identify rows at 0 and 200 ms (rows/s over the batch span)"
    )
    specs = {
        f"{ms}ms dict customerio": bench.spec(
            "customerio", "dict", rows, requests_per_second=RPS, latency=ms / 1000, warmup=warm
        )
        for ms in (0, 200)
    }
    results = bench.side_by_side(specs)
    load_rate = {
        ms: max(rows / r["seconds"]["load"] for r in results[f"{ms}ms dict customerio"])
        for ms in (0, 200)
    }
    span_rate = {  # as the Arrow figures above: over the batch requests' span at the sink
        ms: max(rows / r["sink"]["batch_span"] for r in results[f"{ms}ms dict customerio"])
        for ms in (0, 200)
    }
    bench.figure("latency_dict_0ms_load_rows_per_s", load_rate[0], "rows/s")
    bench.figure("latency_dict_200ms_load_rows_per_s", load_rate[200], "rows/s")
    bench.figure("latency_dict_200ms_vs_0ms_load_step", load_rate[200] / load_rate[0], "x")
    bench.figure("latency_dict_0ms_rows_per_s", span_rate[0], "rows/s")
    bench.figure("latency_dict_200ms_rows_per_s", span_rate[200], "rows/s")
    bench.figure("latency_dict_200ms_vs_0ms", span_rate[200] / span_rate[0], "x")


def memory(bench: Any) -> None:
    rows = bench.sizes["latency_rows"]
    print(f"\n[latency:memory] peak RSS of {rows:,} Arrow rows at 500 ms, data built lazily")
    ours = bench.measure(
        bench.spec("customerio", "arrow", rows, lazy=True, requests_per_second=RPS, latency=0.5),
        "500ms memory customerio",
    )
    nothing = bench.measure(bench.spec("nothing", "arrow", rows, lazy=True), "memory do-nothing")
    bench.figure("memory_peak_arrow_500ms", ours["peak_rss_kb"] / 1024, "MB")
    bench.figure("memory_ratio_arrow_500ms", ours["peak_rss_kb"] / nothing["peak_rss_kb"], "x")
