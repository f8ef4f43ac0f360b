"""The benchmark's rows: identify rows as dicts or Arrow tables, and the hand-written floor's serializer.

Every run uses the same people: `uid` (the identifier), six attribute columns of the usual kinds
(strings, a float, an int, a bool) and `updated_at` (the timestamp), unique per row, no NULLs, so
each row is exactly one operation and the sink's op count must equal the row count.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

TABLE = "people"
IDENTIFIER = "uid"
TIMESTAMP = "updated_at"
PLANS = ("free", "pro", "team", "enterprise")
_BASE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
_BASE_US = int(_BASE.timestamp()) * 1_000_000

ARROW_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("email", pa.string()),
        ("name", pa.string()),
        ("plan", pa.string()),
        ("ltv", pa.float64()),
        ("logins", pa.int64()),
        ("active", pa.bool_()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


def dict_rows(start: int, stop: int) -> list[dict[str, Any]]:
    return [
        {
            "uid": f"user-{i:09d}",
            "email": f"user{i}@example.com",
            "name": f"Person {i}",
            "plan": PLANS[i % 4],
            "ltv": (i % 100_000) / 8,
            "logins": i % 977,
            "active": i % 3 != 0,
            "updated_at": _BASE + dt.timedelta(seconds=i),
        }
        for i in range(start, stop)
    ]


def arrow_table(start: int, stop: int) -> pa.Table:
    numbers = pa.array(range(start, stop), pa.int64())
    text = pc.cast(numbers, pa.string())
    padded = pc.utf8_lpad(text, 9, "0")
    return pa.table(
        [
            pc.binary_join_element_wise("user-", padded, ""),
            pc.binary_join_element_wise("user", text, "@example.com", ""),
            pc.binary_join_element_wise("Person ", text, ""),
            pc.take(pa.array(PLANS), pc.bit_wise_and(numbers, 3)),
            pc.divide(pc.cast(_mod(numbers, 100_000), pa.float64()), 8.0),
            _mod(numbers, 977),
            pc.not_equal(_mod(numbers, 3), 0),
            pc.cast(pc.add(pc.multiply(numbers, 1_000_000), _BASE_US), pa.timestamp("us", "UTC")),
        ],
        schema=ARROW_SCHEMA,
    )


def _mod(numbers: pa.Array, divisor: int) -> pa.Array:
    return pc.subtract(numbers, pc.multiply(pc.divide(numbers, divisor), divisor))


def chunk_bounds(rows: int, chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, rows, chunk):
        yield start, min(start + chunk, rows)
