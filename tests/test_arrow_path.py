"""The columnar identify path gives exactly what the row path gives, for any batch."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest

from cio_destination.arrow_path import map_identify_batch
from cio_destination.mapping import compile_mapping, parse_mapping
from cio_destination.operations import LazyRow, RowMapper, rows_from_arrow

UTC = dt.timezone.utc
TEXTS = ["plain", 'quo"te', "back\\slash", "ctrl\x01\n", "ünïcødé ✓", "😀" * 300, "x" * 1_200, ""]
FLOATS = [1.5, -0.0, 3.0, 1e300, float("nan"), float("inf")]


def random_rows(rng: random.Random, count: int, identifier: str) -> list[dict]:
    rows = []
    for i in range(count):
        if identifier == "email":
            ident = rng.choice(
                [f"u{i}@example.com", f"u{i % 7}@example.com", "bad", "", None, "a" * 160 + "@x.io"]
            )
        else:
            ident = rng.choice([f"id-{i}", f"id-{i % 5}", "", "  ", None, "i" * 151, "ü" * 80])
        rows.append(
            {
                "ident": ident,
                "name": rng.choice([*TEXTS, None]),
                "score": rng.choice([i, -i, 2**62, None]),
                "ratio": rng.choice([*FLOATS, None]),
                "active": rng.choice([True, False, None]),
                "seen": rng.choice(
                    [
                        dt.datetime(2024, 5, 1, 12, 30, 15, 999_999, tzinfo=UTC),
                        dt.datetime(1960, 1, 1, tzinfo=UTC),
                        dt.datetime(2030, 1, 1, tzinfo=UTC),
                        None,
                    ]
                ),
                "born": rng.choice([dt.date(1990, 7, 4), dt.date(1969, 12, 31), None]),
                "updated": rng.choice(
                    [dt.datetime(2024, 1, 1, 0, 0, 0, 1), dt.datetime(1950, 6, 1), None]
                ),
            }
        )
    return rows


SCHEMA = pa.schema(
    [
        ("ident", pa.string()),
        ("name", pa.string()),
        ("score", pa.int64()),
        ("ratio", pa.float64()),
        ("active", pa.bool_()),
        ("seen", pa.timestamp("us", tz="UTC")),
        ("born", pa.date32()),
        ("updated", pa.timestamp("ns")),
    ]
)


def mapper_for(batch: pa.RecordBatch, **mapping) -> RowMapper:
    columns = {name: {"name": name} for name in batch.schema.names}
    declared = {"action": "identify", "identifier": "ident", **mapping}
    return RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))


def outcome(mapped) -> tuple[list, list]:
    entries = sorted(
        (
            e.data,
            e.row_key,
            tuple(
                orjson.dumps(r.materialize() if isinstance(r, LazyRow) else r, default=str)
                for r in e.rows
            ),
        )
        for e in mapped.entries
    )
    rejections = sorted(
        (r.row_key, r.reason, r.field or "", orjson.dumps(r.row, default=str))
        for r in mapped.rejections
    )
    return entries, rejections


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    "mapping",
    [
        {},
        {"identifier_type": "email", "timestamp": "updated"},
        {"timestamp": "seen", "attributes": ["name", "ratio", "born"]},
        {"attributes": []},
    ],
    ids=["defaults", "email-timestamp", "chosen-attributes", "no-attributes"],
)
def test_columnar_identify_equals_the_row_path(seed: int, mapping: dict):
    rng = random.Random(seed)
    kind = mapping.get("identifier_type", "id")
    batch = pa.RecordBatch.from_pylist(random_rows(rng, 300, kind), schema=SCHEMA)
    mapper = mapper_for(batch, **mapping)

    fast = map_identify_batch(mapper, batch)
    slow = mapper.map_rows(rows_from_arrow(batch, frozenset()))

    assert fast.rows_in == slow.rows_in == 300
    assert outcome(fast) == outcome(slow)
    assert fast.entries and fast.rejections  # the data exercises both


def test_integer_identifiers_and_unconverted_types_take_the_right_path():
    rows = [{"ident": i, "amount": Decimal("1.50") if i % 2 else None} for i in range(10)]
    batch = pa.RecordBatch.from_pylist(
        rows, schema=pa.schema([("ident", pa.int64()), ("amount", pa.decimal128(10, 2))])
    )
    mapper = mapper_for(batch)

    assert outcome(map_identify_batch(mapper, batch)) == outcome(
        mapper.map_rows(rows_from_arrow(batch, frozenset()))
    )
    assert orjson.loads(map_identify_batch(mapper, batch).entries[1].data) == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "1"},
        "attributes": {"amount": 1.5},
    }


def test_rows_of_accepted_entries_are_built_only_when_rejected():
    batch = pa.RecordBatch.from_pylist([{"ident": "a", "n": 1}, {"ident": "b", "n": 2}])
    mapper = mapper_for(batch)

    mapped = map_identify_batch(mapper, batch)

    assert all(isinstance(row, LazyRow) for e in mapped.entries for row in e.rows)
    rejection = mapped.entries[1].reject("invalid", "identifiers", "no")[0]
    assert rejection.row == {"ident": "b", "n": 2}


def test_arrow_rows_rejected_by_customerio_come_back_whole(httpx_mock, tmp_path):
    import dlt
    import httpx

    from cio_destination import customerio, customerio_adapter, rejected_rows

    from .conftest import with_region

    def answer(request: httpx.Request) -> httpx.Response:
        batch = orjson.loads(request.content)["batch"]
        errors = [
            {"batch_index": i, "reason": "invalid", "field": "identifiers", "message": "no"}
            for i, op in enumerate(batch)
            if op["identifiers"]["id"] in {"u-2", "u-5"}
        ]
        return httpx.Response(207 if errors else 200, json={"errors": errors} if errors else {})

    httpx_mock.add_callback(with_region(answer), is_reusable=True)
    table = pa.table(
        {
            "uid": [f"u-{i}" for i in range(8)],
            "plan": ["pro", None] * 4,
            "seen": pa.array(
                [dt.datetime(2024, 1, 1, i, tzinfo=UTC) for i in range(8)],
                pa.timestamp("us", "UTC"),
            ),
        }
    )
    resource = customerio_adapter(
        dlt.resource([table], name="people"), action="identify", identifier="uid", timestamp="seen"
    )
    pipeline = dlt.pipeline(
        "arrow207",
        destination=customerio(site_id="s", api_key="k", track_url="http://127.0.0.1:1"),
        pipelines_dir=str(tmp_path),
        dev_mode=True,
    )

    pipeline.run(resource)

    rejected = sorted(rejected_rows(pipeline), key=lambda r: r["row_key"])
    assert [(r["row_key"], r["reason"], r["row"]) for r in rejected] == [
        ("u-2", "invalid", {"uid": "u-2", "plan": "pro", "seen": "2024-01-01T02:00:00+00:00"}),
        ("u-5", "invalid", {"uid": "u-5", "seen": "2024-01-01T05:00:00+00:00"}),
    ]
    sent = [
        op
        for request in httpx_mock.get_requests(method="POST")
        for op in orjson.loads(request.content)["batch"]
    ]
    assert sent[0] == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "u-0"},
        "attributes": {"plan": "pro"},
        "timestamp": 1704067200,
    }
