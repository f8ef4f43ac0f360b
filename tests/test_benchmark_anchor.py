"""The benchmark's anchor, Customer.io's official Python client (`tests/benchmarks/official.py`):
its bodies stay under 500 KB as `requests` writes them, every row reaches the sink, and without
the client the anchor is skipped with the reason."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from requests.compat import json as requests_json

from tests.benchmarks import official
from tests.benchmarks.runs import build_warehouse
from tests.benchmarks.sink import SinkProcess

REPO = Path(__file__).resolve().parent.parent


def operation(i: int) -> dict:
    return {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": f"user-{i}"},
        "attributes": {"note": "é" * (i % 300), "n": i, "ok": i % 2 == 0, "x": i / 7},
        "timestamp": 1_700_000_000 + i,
    }


def body(chunk: list[dict]) -> bytes:
    """The body `requests` sends for `CustomerIO.batch(chunk)`."""
    return requests_json.dumps({"batch": chunk}, allow_nan=False).encode()


def test_chunks_fill_bodies_up_to_the_limit_as_requests_writes_them():
    operations = [operation(i) for i in range(3_000)]
    limit = 20_000

    chunks = official.chunks_under(operations, limit)

    assert [op for chunk in chunks for op in chunk] == operations  # all of them, in order
    for chunk, following in itertools.pairwise(chunks):
        assert len(body(chunk)) <= limit
        assert len(body([*chunk, following[0]])) > limit  # as full as it could be
    assert len(body(chunks[-1])) <= limit


def test_without_the_official_client_the_anchor_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "customerio", None)  # import customerio fails

    assert official.available() == (
        'customerio-python is not installed (pip install -e ".[bench]")'
    )


@pytest.mark.slow
def test_the_official_client_anchor_delivers_every_row_to_the_sink(tmp_path, monkeypatch):
    assert official.available() is None
    monkeypatch.chdir(REPO)
    rows = 6_000  # about 800 KB of operations: two bodies at least
    url = build_warehouse(str(tmp_path / "warehouse.duckdb"), rows)
    with SinkProcess("bench-site", "bench-key") as sink:
        sink.reset()
        spec = {
            "target": "official",
            "kind": "fetch",
            "rows": rows,
            "sink": sink.url,
            "site_id": "bench-site",
            "api_key": "bench-key",
            "warehouse": url,
            "threads": official.THREADS,
        }
        result = official.measure(spec)

    counts = result["sink"]
    assert counts["ops"] == rows
    assert counts["batch_requests"] >= 2
    assert 400_000 < counts["max_body_bytes"] <= official.MAX_BODY
    assert counts["unauthorized"] == counts["not_found"] == counts["malformed"] == 0
