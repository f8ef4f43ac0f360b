"""The columnar identify path gives exactly what the row path gives, for any batch."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cio_destination.actions.identify import repeated_values
from cio_destination.entries import LazyRow, rows_from_arrow
from cio_destination.mapper import COLUMNAR_PATH, RowMapper, datetime_array, map_items
from cio_destination.mapping import compile_mapping, parse_mapping

from .conftest import mapped_outcome as outcome

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

    fast = map_items(mapper, batch)
    slow = mapper.map_rows(rows_from_arrow(batch))

    assert fast.rows_in == slow.rows_in == 300
    assert outcome(fast) == outcome(slow)
    assert fast.all_entries() and fast.rejections  # the data exercises both
    # most rows repeat a person or break a check, but the people seen once are written by Arrow
    assert fast.block is not None and len(fast.block) >= 5


def test_integer_identifiers_and_unconverted_types_take_the_right_path():
    rows = [{"ident": i, "amount": Decimal("1.50") if i % 2 else None} for i in range(10)]
    batch = pa.RecordBatch.from_pylist(
        rows, schema=pa.schema([("ident", pa.int64()), ("amount", pa.decimal128(10, 2))])
    )
    mapper = mapper_for(batch)

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert fast.block is not None and len(fast.block) == 10
    assert orjson.loads(fast.all_entries()[1].data) == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "1"},
        "attributes": {"amount": 1.5},
    }


def test_rows_of_accepted_entries_are_built_only_when_rejected():
    batch = pa.RecordBatch.from_pylist([{"ident": "a", "n": 1}, {"ident": "b", "n": 2}])
    mapper = mapper_for(batch)

    mapped = map_items(mapper, batch)

    assert mapped.block is not None and len(mapped.block) == 2
    assert all(isinstance(row, LazyRow) for e in mapped.all_entries() for row in e.rows)
    rejection = mapped.all_entries()[1].reject("invalid", "identifiers", "no")[0]
    assert rejection.row == {"ident": "b", "n": 2}


@pytest.mark.slow
def test_arrow_rows_rejected_by_customerio_come_back_whole(httpx_mock, tmp_path):
    import dlt
    import httpx

    from cio_destination import customerio, customerio_adapter, rejected_rows
    from cio_destination.mapper import COLUMNAR_PATH

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
    written = COLUMNAR_PATH.rows

    pipeline.run(resource)

    assert COLUMNAR_PATH.rows - written == 8  # every row's operation was written by Arrow
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


# -- batches the columnar path serializes itself (mostly valid rows) ---------------------------

FAST_TEXTS = ["plain", "Person 7", "ünïcødé ✓", 'quo"te', "back\\slash", "tab\tand\nnewline", ""]
FAST_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -7.0,
    12.5,
    0.1,
    1e15,
    1e16,
    123456789012345.6,
    1e-4,
    5e-5,
    1e-6,
    1.5e-7,
    2.0**53,
    1e22,
    1e300,
    5e-324,
    1 / 3,
]
FAST_SCHEMA = pa.schema(
    [
        ("ident", pa.string()),
        ("name", pa.string()),
        ("note", pa.large_string()),
        ("score", pa.int64()),
        ("big", pa.uint64()),
        ("ratio", pa.float64()),
        ("small", pa.float32()),
        ("active", pa.bool_()),
        ("seen", pa.timestamp("ms", tz="UTC")),
        ("born", pa.date32()),
        ("updated", pa.timestamp("s")),
        ("price", pa.decimal128(38, 10)),
    ]
)
DECIMALS = [
    Decimal("12.50"),
    Decimal("-0.10"),
    Decimal("100"),
    Decimal("0.00"),
    Decimal("-0.00"),
    Decimal("123456789012345678.99"),
    Decimal("999999999999999999"),  # 18 digits: still an integer
    Decimal("99999999999999999999"),  # 20 digits: the row path decides
    Decimal("0.0000000001"),
    Decimal("3.1415926535"),
]


def fast_rows(rng: random.Random, count: int, nulls: str, bad_share: float) -> list[dict]:
    """Rows with unique identifiers; `nulls`: "none", "some" (in some columns) or "all" (in
    every attribute column, some rows without any attribute); a few bad rows if asked."""

    def maybe(value, column: str):
        if nulls == "none" or (nulls == "some" and column in ("name", "score", "seen")):
            return value if nulls != "some" or rng.random() > 0.3 else None
        if nulls == "all":
            return None if rng.random() < 0.5 else value
        return value

    rows = []
    for i in range(count):
        row = {
            "ident": f"id-{i}" if rng.random() >= bad_share else rng.choice(["", " \u3000", None]),
            "name": maybe(rng.choice(FAST_TEXTS), "name"),
            "note": maybe(rng.choice(FAST_TEXTS), "note"),
            "score": maybe(rng.randint(-(2**63), 2**63 - 1), "score"),
            "big": maybe(rng.choice([0, 2**64 - 1, rng.randint(0, 2**64 - 1)]), "big"),
            "ratio": maybe(
                rng.choice(
                    [
                        rng.choice(FAST_FLOATS),
                        rng.uniform(-1e6, 1e6),
                        rng.uniform(-1, 1) * 10.0 ** rng.randint(-12, 20),
                    ]
                ),
                "ratio",
            ),
            "small": maybe(rng.choice([0.5, 1.1, 3.0, 1e10, 16777217.0, -2.75]), "small"),
            "active": maybe(rng.random() < 0.5, "active"),
            "seen": maybe(
                dt.datetime(2024, 1, 1, tzinfo=UTC)
                + dt.timedelta(milliseconds=rng.randint(0, 10**11)),
                "seen",
            ),
            "born": maybe(dt.date(1970, 1, 1) + dt.timedelta(days=rng.randint(0, 30000)), "born"),
            "updated": maybe(dt.datetime(2020, 1, 1) + dt.timedelta(seconds=i), "updated"),
            "price": maybe(rng.choice(DECIMALS), "price"),
        }
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nulls", ["none", "some", "all"])
@pytest.mark.parametrize(
    "mapping",
    [{}, {"timestamp": "updated"}, {"attributes": ["ratio"]}],
    ids=["defaults", "timestamp", "one-attribute"],
)
def test_columnar_serialization_equals_the_row_path(seed: int, nulls: str, mapping: dict):
    rng = random.Random(seed)
    rows = fast_rows(rng, 400, nulls, bad_share=0.02)
    batch = pa.RecordBatch.from_pylist(rows, schema=FAST_SCHEMA)
    mapper = mapper_for(batch, **mapping)

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert fast.block is not None and len(fast.block) >= 300  # serialized by Arrow kernels
    assert fast.rejections  # the bad identifiers still come back as rejections


def test_a_sliced_batch_maps_as_its_rows():
    batch = pa.RecordBatch.from_pylist(
        fast_rows(random.Random(9), 300, "some", 0.0), schema=FAST_SCHEMA
    )
    part = batch.slice(100, 120)
    mapper = mapper_for(part)

    fast = map_items(mapper, part)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(part)))
    assert fast.block is not None and len(fast.block) >= 100  # a few rows break a check
    keys = sorted((e.row_key for e in fast.all_entries()), key=lambda k: int(k[3:]))
    assert keys == [f"id-{i}" for i in range(100, 220)]


def test_identifier_kinds_checked_on_columns_as_in_the_row_path():
    identifiers = ["a@x.io", "no-at", "+14155550100", "+0123", "+1415\n", "b@y.io", "  ", "\u2003"]
    batch = pa.RecordBatch.from_pylist([{"ident": i, "n": 1} for i in identifiers])
    # the identifiers each kind's column checks pass, written by Arrow; the row path decides the rest
    passed = {"email": 2, "phone": 1, "id": 6, "cio_id": 6}
    for kind in ("email", "phone", "id", "cio_id"):
        mapper = mapper_for(batch, identifier_type=kind)
        fast = map_items(mapper, batch)
        assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
        assert fast.block is not None and len(fast.block) == passed[kind], kind


def test_columns_without_a_value_and_odd_timestamps_match_the_row_path():
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(["a", "b", "c", "d"]),
            pa.array([None] * 4, pa.null()),
            pa.array([None, None, None, None], pa.string()),
            pa.array(["2024-01-01T00:00:00Z", "not a date", None, "1700000000000"]),
        ],
        names=["ident", "empty", "blank", "when"],
    )
    mapper = mapper_for(batch, timestamp="when")

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert fast.block is not None and len(fast.block) == 3
    assert [r.reason for r in fast.rejections] == ["invalid_timestamp"]
    assert orjson.loads(fast.all_entries()[0].data) == {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "a"},
        "timestamp": 1704067200,
    }


# -- dict rows (typed-jsonl) made columnar first -------------------------------------------------

DLT_TYPES = {
    "ident": "text",
    "name": "text",
    "note": "text",
    "score": "bigint",
    "ratio": "double",
    "active": "bool",
    "seen": "timestamp",
    "born": "date",
    "updated": "timestamp",
    "price": "decimal",
}


def dict_mapper(columns: dict[str, dict], **mapping) -> RowMapper:
    declared = {"action": "identify", "identifier": "ident", **mapping}
    return RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))


def dlt_rows(rng: random.Random, count: int, nulls: str) -> list[dict]:
    """Rows as dlt's typed-jsonl gives them: nulls left out, uint64 and float32 columns gone."""
    return [
        {k: v for k, v in row.items() if v is not None and k not in ("big", "small")}
        for row in fast_rows(rng, count, nulls, bad_share=0.02)
    ]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("nulls", ["none", "some", "all"])
@pytest.mark.parametrize("mapping", [{}, {"timestamp": "updated"}], ids=["defaults", "timestamp"])
def test_dict_rows_through_the_columnar_path_equal_the_row_path(
    seed: int, nulls: str, mapping: dict
):
    rows = dlt_rows(random.Random(seed), 400, nulls)
    columns = {name: {"name": name, "data_type": kind} for name, kind in DLT_TYPES.items()}
    mapper = dict_mapper(columns, **mapping)

    fast = map_items(mapper, rows, columns)

    assert outcome(fast) == outcome(mapper.map_rows(rows))
    assert fast.block is not None and len(fast.block) >= 300
    # an entry's source row is the dict itself, not a copy rebuilt from Arrow
    first = fast.block[0]
    assert any(first.rows[0] is row for row in rows)


@given(
    zone=st.sampled_from(["utc", "naive", "plus_two", "mixed"]),
    stamps=st.lists(st.datetimes(), max_size=20),
    null_at=st.none() | st.integers(0, 20),
)
def test_timestamps_of_dict_rows_become_the_array_pyarrow_makes(zone, stamps, null_at):
    utc, plus_two = dt.timezone.utc, dt.timezone(dt.timedelta(hours=2))
    zones = {"utc": [utc], "naive": [None], "plus_two": [plus_two], "mixed": [utc, None]}[zone]
    values: list = [s.replace(tzinfo=zones[i % len(zones)]) for i, s in enumerate(stamps)]
    if null_at is not None:
        values.insert(min(null_at, len(values)), None)

    fast = datetime_array(values)

    if zone in ("utc", "naive") and values and null_at is None:
        assert fast is not None  # the fast way ran: dlt's reader gives these
    if fast is not None:
        slow = pa.array(values)
        assert fast.type == slow.type and fast.equals(slow)


@pytest.mark.parametrize(
    ("kind", "value", "plain"),
    [
        ("bigint", 2.5, 2),  # pyarrow would truncate it to 2
        ("bigint", 2**64 - 1, 2**63 - 1),  # over int64
        ("bool", 1, True),
        ("text", b"bytes", "bytes"),  # pyarrow would decode it
        ("json", {"a": 1}, None),  # not a plain type
        ("time", dt.time(12, 30), None),  # no columnar form
        ("decimal", Decimal("NaN"), Decimal("1.5")),  # pyarrow has no decimal NaN
    ],
)
def test_dict_rows_the_columnar_path_cannot_hold_take_the_row_path(kind: str, value, plain):
    rows = [{"ident": "a", "x": value}, {"ident": "b", "x": value}]
    columns = {
        "ident": {"name": "ident", "data_type": "text"},
        "x": {"name": "x", "data_type": kind},
    }
    mapper = dict_mapper(columns)

    mapped = map_items(mapper, rows, columns)

    assert mapped.block is None
    assert outcome(mapped) == outcome(mapper.map_rows(rows))
    if plain is not None:  # the same column with a value of its own type is written by Arrow
        rows = [{"ident": "a", "x": plain}, {"ident": "b", "x": plain}]
        mapped = map_items(mapper, rows, columns)
        assert mapped.block is not None and len(mapped.block) == 2
        assert outcome(mapped) == outcome(mapper.map_rows(rows))


@pytest.mark.parametrize(
    "kind", [pa.decimal128(2, 2), pa.decimal128(5, 0), pa.decimal128(38, 38), pa.decimal256(40, 3)]
)
def test_decimals_of_any_precision_map_as_the_row_path_maps_them(kind):
    values = {
        2: [Decimal("0.5"), Decimal("0.00"), Decimal("-0.99")],
        0: [Decimal("12345"), Decimal("-7"), Decimal("0")],
        38: [Decimal("0.1"), Decimal("0." + "9" * 38)],
        3: [Decimal("5.000"), Decimal("1.5"), Decimal("-123456789012345678901.125")],
    }[kind.scale]
    batch = pa.RecordBatch.from_arrays(
        [pa.array([f"p{i}" for i in range(len(values))]), pa.array(values, kind)],
        names=["ident", "amount"],
    )
    mapper = mapper_for(batch)

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert fast.block is not None


def _one_row(ident: str = "a", **columns: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"ident": pa.array([ident]), **columns})


def source_row_hashes(mapper: RowMapper, batch: Any) -> tuple[list, list] | None:
    """`cio_destination.diff.source_rows.source_row_hashes`, its two arrays as lists."""
    from cio_destination.diff.source_rows import source_row_hashes as hashed

    found = hashed(mapper, batch)
    return None if found is None else (found[0].to_pylist(), found[1].to_pylist())


@pytest.mark.parametrize(
    ("first", "second", "mappings"),
    [
        (  # a value holding the old column separator
            _one_row(p=pa.array(["x\x1f\x01y"]), q=pa.array(["z"])),
            _one_row(p=pa.array(["x"]), q=pa.array(["y\x1f\x01z"])),
            ({}, {}),
        ),
        (  # a value holding the old null marker
            _one_row(
                p=pa.array(["a"]), q=pa.array([None], pa.string()), r=pa.array(["b\x1f\x01c"])
            ),
            _one_row(p=pa.array(["a\x1f\x00"]), q=pa.array(["b"]), r=pa.array(["c"])),
            ({}, {}),
        ),
        (_one_row(n=pa.array([0])), _one_row(n=pa.array(["0"])), ({}, {})),
        (_one_row(n=pa.array([1.0])), _one_row(n=pa.array([1])), ({}, {})),
        (_one_row(n=pa.array([Decimal(1)])), _one_row(n=pa.array([1])), ({}, {})),
        (_one_row(n=pa.array([Decimal("1.5")])), _one_row(n=pa.array(["1.5"])), ({}, {})),
        (_one_row(n=pa.array([True])), _one_row(n=pa.array(["true"])), ({}, {})),
        (
            _one_row(t=pa.array([1_000], pa.timestamp("s"))),
            _one_row(t=pa.array([1_000], pa.timestamp("ms"))),
            ({}, {}),
        ),
        (_one_row(p=pa.array(["q"])), _one_row(r=pa.array(["q"])), ({}, {})),
        (  # texts are written back to back: their lengths tell them apart
            _one_row(p=pa.array(["ab"]), q=pa.array(["c,1"])),
            _one_row(p=pa.array(["abc"]), q=pa.array([",1"])),
            ({}, {}),
        ),
        (_one_row(p=pa.array([""])), _one_row(p=pa.array([None], pa.string())), ({}, {})),
        (  # a null among the numbers, which follow the texts joined by commas
            _one_row(n=pa.array([1]), m=pa.array([None], pa.int64())),
            _one_row(n=pa.array([None], pa.int64()), m=pa.array([1])),
            ({}, {}),
        ),
        (
            _one_row(n=pa.array([12]), m=pa.array([3])),
            _one_row(n=pa.array([1]), m=pa.array([23])),
            ({}, {}),
        ),
        (
            _one_row(p=pa.array(["q"])),
            _one_row(p=pa.array(["q"])),
            ({}, {"identifier_type": "email"}),
        ),
    ],
    ids=[
        "separator",
        "null-marker",
        "int-or-text",
        "float-or-int",
        "decimal-or-int",
        "decimal-or-its-text",
        "bool-or-text",
        "seconds-or-millis",
        "other-column",
        "texts-back-to-back",
        "empty-or-null-text",
        "null-among-numbers",
        "digits-across-numbers",
        "other-mapping",
    ],
)
def test_source_row_hashes_tell_apart_rows_whose_text_once_read_alike(first, second, mappings):
    """`changes_only` skips a row whose source hash matches the stored one: rows that differ
    in a value, its type, its column or their mapping must never hash alike."""
    one = source_row_hashes(mapper_for(first, **mappings[0]), first)
    other = source_row_hashes(mapper_for(second, **mappings[1]), second)

    assert one is not None and other is not None
    assert one[1] != other[1]


HASHED_SCHEMA = pa.schema(
    [
        ("ident", pa.string()),
        ("name", pa.string()),
        ("note", pa.large_string()),
        ("n", pa.int64()),
        ("small", pa.int8()),
        ("f", pa.float64()),
        ("yes", pa.bool_()),
        ("at", pa.timestamp("ms", "UTC")),
    ]
)
HASHED_ROWS = st.fixed_dictionaries(
    {
        "name": st.one_of(st.none(), st.text(max_size=4)),
        "note": st.one_of(st.none(), st.text(max_size=4)),
        "n": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "small": st.one_of(st.none(), st.integers(-128, 127)),
        "f": st.one_of(st.none(), st.floats(allow_nan=False)),
        "yes": st.one_of(st.none(), st.booleans()),
        "at": st.one_of(
            st.none(), st.datetimes(timezones=st.just(dt.timezone.utc)).map(lambda d: d)
        ),
    }
)


@given(
    rows=st.lists(HASHED_ROWS, min_size=1, max_size=12),
    split=st.integers(0, 12),
    changed=st.lists(st.sampled_from(HASHED_SCHEMA.names[1:]), min_size=12, max_size=12),
)
def test_source_row_hashes_are_each_rows_own_and_tell_rows_apart(
    rows: list[dict], split: int, changed: list[str]
):
    """A row's hash is the row's alone (the same in any batch, split anywhere), and rows that
    differ in any value (as their column's type holds it) hash apart: the first row, and the
    others as it with one value changed."""
    people = pa.Table.from_pylist(
        [{"ident": f"p{at}", **row} for at, row in enumerate(rows)], schema=HASHED_SCHEMA
    )
    mapper = mapper_for(people.to_batches()[0])
    split_up = pa.Table.from_batches(
        [*people.slice(0, split).to_batches(), *people.slice(split).to_batches()]
    )
    together = source_row_hashes(mapper, split_up)
    assert together is not None
    assert together[1] == [
        source_row_hashes(mapper, people.slice(at, 1))[1][0] for at in range(len(rows))
    ]
    edited = [rows[0]] + [
        {**rows[0], c: row[c]} for row, c in zip(rows[1:], changed[: len(rows) - 1], strict=True)
    ]
    one_person = pa.Table.from_pylist(
        [{"ident": "p", **row} for row in edited], schema=HASHED_SCHEMA
    )
    held: dict[int, bytes] = {}
    for at, row in enumerate(one_person.to_pylist()):
        hashed = source_row_hashes(mapper, one_person.slice(at, 1))[1][0]
        key = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        assert held.setdefault(hashed, key) == key


def test_source_row_hashes_tell_apart_rows_whose_changes_could_cancel_out():
    """Two values changed at once: 64 float columns, c31 and c63 null in one row, 0.0 and -0.0
    in the other. -0.0 differs from 0.0 in the top bit alone, and both change the flags word:
    a hash that took in word by word with a multiply and a shift (an earlier draft) let those
    differences cancel; XXH3 over all the row's bytes does not."""

    def row(c31: float | None, c63: float | None) -> pa.RecordBatch:
        values = {at: 1.5 for at in range(64)} | {31: c31, 63: c63}
        columns = {"ident": pa.array(["p1"])}
        columns |= {f"c{at:02d}": pa.array([values[at]], pa.float64()) for at in range(64)}
        return pa.RecordBatch.from_pydict(columns)

    before, after = row(None, None), row(0.0, -0.0)
    mapper = mapper_for(before)

    assert source_row_hashes(mapper, before)[1] != source_row_hashes(mapper, after)[1]


def test_source_row_hashes_are_the_stored_form():
    """The form stored with fingerprints (`cio-source-row-5`): XXH3-64, unseeded, of a digest
    of the mapping and the columns' names and types in order, the row's text values back to
    back, then 64-bit words of 8 little-endian bytes each: the texts' byte lengths two to a
    word, each number's bits (a null number 0), one word of which numbers have a value; read
    as a signed number. The same row hashes alike in any batch, as string or large_string,
    whether or not other rows have nulls; it hashes otherwise than the forms stored before
    (`-3`, `-4`)."""
    import hashlib
    import struct

    import xxhash

    batch = pa.RecordBatch.from_pylist(
        [
            {"ident": "a", "n": 1, "s": "x", "f": 2.5},
            {"ident": "b", "n": None, "s": "ü", "f": None},
        ]
    )
    mapper = mapper_for(batch)

    identifiers, hashes = source_row_hashes(mapper, batch)

    layout = [["ident", "text"], ["n", "int64"], ["s", "text"], ["f", "double"]]

    def seed(layout: list, person: bytes) -> int:
        settings = orjson.dumps([{"action": "identify", "identifier": "ident"}, [], layout])
        return int.from_bytes(hashlib.blake2b(settings, digest_size=8, person=person).digest())

    def finished(z: int) -> int:
        z ^= z >> 30
        z = z * 0xBF58476D1CE4E5B9 % 2**64
        z ^= z >> 27
        z = z * 0x94D049BB133111EB % 2**64
        return z ^ z >> 31

    def signed(h: int) -> int:
        return h - 2**64 if h >= 2**63 else h

    def hashed(text: str, words: list[int]) -> int:
        head = seed(layout, b"cio-source-row-5").to_bytes(8, "big")  # the digest's bytes
        tail = b"".join(word.to_bytes(8, "little") for word in words)
        return signed(xxhash.xxh3_64_intdigest(head + text.encode() + tail))

    bits = struct.unpack("<Q", struct.pack("<d", 2.5))[0]
    expected = [
        hashed("ax", [1 | 1 << 32, 1, bits, 0b11]),
        hashed("bü", [1 | 2 << 32, 0, 0, 0b00]),
    ]
    assert identifiers == ["a", "b"]
    assert hashes == expected
    assert source_row_hashes(mapper, batch.slice(0, 1))[1] == expected[:1]  # no null there
    assert source_row_hashes(mapper, batch.slice(1, 1))[1] == expected[1:]
    large = pa.RecordBatch.from_arrays(
        [batch.column(0).cast(pa.large_string()), *batch.columns[1:]],
        names=batch.schema.names,
    )
    assert source_row_hashes(mapper, large) == (identifiers, expected)

    def column_wise(text: str, words: list[int]) -> int:  # cio-source-row-4
        h = xxhash.xxh3_64_intdigest(text.encode(), seed(layout, b"cio-source-row-4"))
        for word in words:
            h = finished(h ^ word)
        return signed(h)

    before = [["ident", "text"], ["s", "text"], ["n", "int64"], ["f", "double"]]
    older = [
        signed(int.from_bytes(xxhash.xxh3_64_digest(t.encode(), seed(before, b"cio-source-row-3"))))
        for t in ["ax,1,1,1,2.5", "bü,1,2,~,~"]
    ]
    older += [column_wise("ax", [1, 1, 1, bits, 0b11]), column_wise("bü", [1, 0, 2, 0, 0b00])]
    assert not set(older) & set(hashes)


@st.composite
def _hashable_batches(draw: Any) -> pa.RecordBatch:
    """A batch of distinct identifiers and text and number columns, nulls anywhere but the
    identifier, as string or large_string, perhaps a slice of a larger one."""
    rows = draw(st.integers(1, 6))
    texts = st.one_of(st.none(), st.text(max_size=4))
    kinds = {"t": pa.string(), "u": pa.large_string(), "n": pa.int64(), "f": pa.float64()}
    values = {
        "t": texts,
        "u": texts,
        "n": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "f": st.one_of(st.none(), st.floats(allow_nan=False)),
    }
    names = draw(st.lists(st.sampled_from("tunf"), max_size=5))
    skip = draw(st.integers(0, 2))
    ident = draw(st.sampled_from([pa.string(), pa.large_string()]))
    arrays = [pa.array([f"p{i}" for i in range(skip + rows)], ident)]
    for name in names:
        column = draw(st.lists(values[name], min_size=skip + rows, max_size=skip + rows))
        arrays.append(pa.array(column, kinds[name]))
    labels = ["ident", *(f"{name}{at}" for at, name in enumerate(names))]
    return pa.RecordBatch.from_arrays(arrays, names=labels).slice(skip)


@given(batch=_hashable_batches())
def test_source_row_hashes_are_each_rows_documented_bytes(batch: pa.RecordBatch):
    """Each row's hash is XXH3-64 of the bytes `source_row_hashes` documents, built here row by
    row: whatever the nulls, the text types, the count of texts (odd: a lone length word) and
    the batch's offset."""
    import hashlib
    import struct

    import xxhash

    mapper = mapper_for(batch)
    names = ["ident", *mapper.compiled.attribute_columns]
    kinds = {name: batch.schema.field(name).type for name in names}
    texts = [name for name in names if kinds[name] in (pa.string(), pa.large_string())]
    numbers = [name for name in names if name not in texts]
    layout = [[name, "text" if name in texts else str(kinds[name])] for name in names]
    settings = orjson.dumps([{"action": "identify", "identifier": "ident"}, [], layout])
    head = hashlib.blake2b(settings, digest_size=8, person=b"cio-source-row-5").digest()

    def expected(row: dict) -> int:
        lengths = [len(row[n].encode()) if row[n] is not None else 2**32 - 1 for n in texts]
        words = [
            lengths[at] | (lengths[at + 1] << 32 if at + 1 < len(lengths) else 0)
            for at in range(0, len(lengths), 2)
        ]
        for name in numbers:
            value = row[name]
            if value is None:
                words.append(0)
            elif kinds[name] == pa.float64():
                words.append(struct.unpack("<Q", struct.pack("<d", value))[0])
            else:
                words.append(value % 2**64)
        if numbers:
            words.append(sum(1 << bit for bit, n in enumerate(numbers) if row[n] is not None))
        body = b"".join((row[n] or "").encode() for n in texts)
        tail = b"".join(word.to_bytes(8, "little") for word in words)
        digest = xxhash.xxh3_64_intdigest(head + body + tail)
        return digest - 2**64 if digest >= 2**63 else digest

    identifiers, hashes = source_row_hashes(mapper, batch)

    assert identifiers == batch.column("ident").to_pylist()
    assert hashes == [expected(row) for row in batch.to_pylist()]


def test_a_chunked_table_maps_as_its_rows_and_an_empty_one_as_nothing():
    first = pa.RecordBatch.from_pylist([{"ident": "a", "n": 1}])
    table = pa.Table.from_batches([first, pa.RecordBatch.from_pylist([{"ident": "b", "n": 2}])])
    mapper = mapper_for(first)

    mapped = map_items(mapper, table)

    assert outcome(mapped) == outcome(mapper.map_rows(rows_from_arrow(table)))
    assert mapped.rows_in == 2 and mapped.block is not None
    assert map_items(mapper, table.slice(0, 0)).rows_in == 0


@pytest.mark.parametrize("phone", ["+14155550100\n", "\n+14155550100", "+1415555\n0100"])
def test_phone_with_a_newline_is_rejected_on_both_paths(phone: str):
    batch = pa.RecordBatch.from_pylist(
        [{"ident": "+14155550100", "name": "ok"}, {"ident": phone, "name": "bad"}],
        schema=pa.schema([("ident", pa.string()), ("name", pa.string())]),
    )
    mapper = mapper_for(batch, identifier_type="phone")

    fast = map_items(mapper, batch)

    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert fast.block is not None and len(fast.block) == 1  # the good phone, written by Arrow
    assert [(r.reason, r.field, r.row["name"]) for r in fast.rejections] == [
        ("invalid_identifier", "ident", "bad")
    ]
    assert [orjson.loads(e.data)["identifiers"] for e in fast.all_entries()] == [
        {"phone": "+14155550100"}
    ]


@pytest.mark.parametrize(
    "mapping",
    [
        {"attributes": ["name", "plan"]},
        {"timestamp": "seen_at"},
        {"identifier": "email", "identifier_type": "email"},
    ],
    ids=["attribute", "timestamp", "identifier"],
)
def test_a_mapped_column_missing_from_the_batch_maps_as_null(mapping: dict):
    """dlt leaves a column out of the schema (and the batch) while it is NULL in every row."""
    batch = pa.RecordBatch.from_pylist(
        [{"ident": "a", "name": "Ann"}, {"ident": "b", "name": None}],
        schema=pa.schema([("ident", pa.string()), ("name", pa.string())]),
    )
    columns = {"ident": {"name": "ident"}, "name": {"name": "name"}}
    declared = {"action": "identify", "identifier": "ident", **mapping}
    mapper = RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))

    fast = map_items(mapper, batch)
    rows = [{k: v for k, v in row.items() if v is not None} for row in batch.to_pylist()]
    from_dicts = map_items(mapper, rows, columns)

    slow = mapper.map_rows(rows_from_arrow(batch))
    assert outcome(fast) == outcome(from_dicts) == outcome(slow)
    assert len(fast.all_entries()) + len(fast.rejections) == 2
    if "attributes" in mapping:  # an absent attribute column: Arrow writes the rest
        assert fast.block is not None and len(fast.block) == 2


def test_source_row_hashes_without_the_identifier_column_hash_nothing():
    batch = pa.RecordBatch.from_pylist([{"name": "Ann"}])
    columns = {"name": {"name": "name"}}
    declared = {"action": "identify", "identifier": "ident", "changes_only": True}
    mapper = RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))

    assert source_row_hashes(mapper, batch) is None


def test_dict_rows_with_a_variant_column_take_the_row_path_and_fold_it():
    columns = {
        "ident": {"name": "ident", "data_type": "text"},
        "age": {"name": "age", "data_type": "bigint"},
        "age\u25b6v_text": {"name": "age\u25b6v_text", "data_type": "text", "variant": True},
    }
    rows = [{"ident": "a", "age": 5}, {"ident": "b", "age\u25b6v_text": "unknown"}]
    declared = {"action": "identify", "identifier": "ident", "attributes": ["age"]}
    mapper = RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))

    mapped = map_items(mapper, rows, columns)

    assert outcome(mapped) == outcome(mapper.map_rows(rows))
    assert [orjson.loads(e.data)["attributes"] for e in mapped.all_entries()] == [
        {"age": 5},
        {"age": "unknown"},
    ]


AGED_COLUMNS = {
    "ident": {"name": "ident", "data_type": "text"},
    "age": {"name": "age", "data_type": "bigint"},
    "age\u25b6v_text": {"name": "age\u25b6v_text", "data_type": "text", "variant": True},
}
"""A table whose `age` dlt typed bigint, with the variant column it keeps text ages in."""
AGED_SCHEMA = pa.schema(
    [("ident", pa.string()), ("age", pa.int64()), ("age\u25b6v_text", pa.string())]
)


@pytest.mark.parametrize(
    "declared",
    [
        {"action": "identify", "identifier": "ident", "attributes": ["age"]},
        {"action": "event", "identifier": "ident", "event_name": "seen"},
    ],
    ids=["identify", "event"],
)
def test_an_arrow_batch_with_a_value_in_a_variant_column_maps_as_its_rows_do(declared):
    """Dict rows loaded as parquet reach the destination as Arrow with dlt's variant columns:
    the value there is its column's, so the batch takes the row path, which reads it back."""
    columns = AGED_COLUMNS
    rows = [
        {"ident": "a", "age": 5, "age\u25b6v_text": None},
        {"ident": "b", "age": None, "age\u25b6v_text": "unknown"},
    ]
    mapper = RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))

    batch = pa.RecordBatch.from_pylist(rows, schema=AGED_SCHEMA)

    mapped = map_items(mapper, batch, columns)

    assert outcome(mapped) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    assert b'"unknown"' in mapped.all_entries()[1].data


def test_an_arrow_batch_whose_variant_column_is_empty_stays_on_the_columnar_path():
    columns = AGED_COLUMNS
    batch = pa.RecordBatch.from_pylist(
        [{"ident": "a", "age": 5, "age\u25b6v_text": None}], schema=AGED_SCHEMA
    )
    declared = {"action": "identify", "identifier": "ident", "attributes": ["age"]}
    mapper = RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))
    before = COLUMNAR_PATH.rows

    mapped = map_items(mapper, batch, columns)

    assert COLUMNAR_PATH.rows == before + 1
    assert orjson.loads(mapped.all_entries()[0].data)["attributes"] == {"age": 5}


def test_source_row_hashes_cover_the_variant_columns_of_the_columns_read():
    declared = {"action": "identify", "identifier": "ident", "changes_only": True}
    mapper = RowMapper(compile_mapping("people", parse_mapping("people", declared), AGED_COLUMNS))

    def hashed(text: str | None) -> int:
        batch = pa.RecordBatch.from_pylist(
            [{"ident": "b", "age": None, "age\u25b6v_text": text}], schema=AGED_SCHEMA
        )
        found = source_row_hashes(mapper, batch)
        assert found is not None
        return found[1][0]

    assert len({hashed("unknown"), hashed("ninety"), hashed(None)}) == 3


def test_drop_attribute_on_the_columnar_path_is_the_row_path_s():
    long = "y" * 1_001
    batch = pa.RecordBatch.from_pylist(
        [{"ident": "a", "name": long}, {"ident": "b", "name": "ok"}, {"ident": "c", "name": None}],
        schema=pa.schema([("ident", pa.string()), ("name", pa.string())]),
    )
    mapper = mapper_for(batch, oversized_attribute="drop_attribute")

    fast = map_items(mapper, batch)
    slow = mapper.map_rows(rows_from_arrow(batch))

    assert outcome(fast) == outcome(slow)
    assert fast.block is not None and len(fast.block) == 2  # b and c; the row path decides a
    assert [(d.row_key, d.reason, d.field) for d in fast.dropped] == [
        ("a", "attribute_dropped", "name")
    ]
    assert [(d.row_key, d.field) for d in fast.dropped] == [
        (d.row_key, d.field) for d in slow.dropped
    ]


_IDENTS = st.lists(st.one_of(st.none(), st.sampled_from(["", "a", "b", "b ", "c", "ü", "z"])))


@given(_IDENTS, st.sampled_from(["as drawn", "increasing", "decreasing"]))
def test_repeated_values_are_those_that_occur_twice(values, order):
    if order != "as drawn":
        values = sorted(values, key=lambda v: (v is None, v), reverse=order == "decreasing")
    repeated = repeated_values(pa.array(values, pa.string()))
    found = set() if repeated is None else set(repeated.to_pylist())
    assert found == {value for value, count in Counter(values).items() if count > 1}


def test_a_column_in_key_order_is_found_unrepeated_without_hashing(monkeypatch):
    def hashed(*_: object, **__: object) -> None:
        raise AssertionError("value_counts ran")

    monkeypatch.setattr(pc, "value_counts", hashed)
    for ordered in (["a", "b", "c"], ["c", "b", "a"]):
        assert repeated_values(pa.array(ordered)) is None


@given(
    st.lists(st.sampled_from(["u1", "u2", "u3", "u4", None]), min_size=1, max_size=12),
    st.booleans(),
)
def test_identifiers_in_key_order_map_as_the_row_path_maps_them(idents, descending):
    """Sorted identifiers, repeated or not (then the row path collapses their rows): the
    columnar path's outcome is the row path's, and it wrote the rows of people seen once."""
    idents = sorted(idents, key=lambda v: (v is None, v), reverse=descending)
    batch = pa.RecordBatch.from_pylist(
        [{"ident": ident, "plan": f"p{i}", "score": i} for i, ident in enumerate(idents)]
    )
    mapper = mapper_for(batch)
    before = COLUMNAR_PATH.rows
    fast = map_items(mapper, batch)
    assert outcome(fast) == outcome(mapper.map_rows(rows_from_arrow(batch)))
    counts = Counter(idents)
    alone = sum(1 for ident in idents if ident is not None and counts[ident] == 1)
    assert COLUMNAR_PATH.rows - before == alone


@pytest.mark.slow
def test_dict_rows_loaded_as_parquet_keep_the_values_dlt_put_in_variant_columns(tmp_path, emulator):
    import dlt

    from cio_destination import customerio, customerio_adapter

    from .conftest import API_KEY, SITE_ID

    destination = customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url)
    pipeline = dlt.pipeline("variants", destination=destination, pipelines_dir=str(tmp_path))

    def people(rows: list[dict[str, Any]]) -> Any:
        resource = dlt.resource(rows, name="people")
        return customerio_adapter(resource, action="identify", identifier="uid")

    pipeline.run(people([{"uid": "a", "age": 5}]), loader_file_format="parquet")
    # "unknown" does not fit the bigint column: dlt keeps it in the variant column age▶v_text
    pipeline.run(people([{"uid": "b", "age": "unknown"}]), loader_file_format="parquet")

    assert "age\u25b6v_text" in pipeline.default_schema.tables["people"]["columns"]
    assert emulator.find_person(id="b")["attributes"] == {"age": "unknown"}
