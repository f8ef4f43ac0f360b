"""A dict job's file read straight into Arrow (`cio_destination.jsonl_arrow`): the same rows, and
the same Arrow batch, as the dicts dlt's own reader gives, or a decline."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dlt.common.data_writers.writers import TypedJsonlListWriter
from dlt.common.json import PUA_START, json
from dlt.destinations.file_batching import JsonlFileBatchIterator
from hypothesis import event, given
from hypothesis import strategies as st

from cio_destination import jobs, jsonl_arrow, mapper
from cio_destination.jsonl_arrow import JsonlRows, typed_jsonl_units
from cio_destination.mapper import RowMapper, map_items
from cio_destination.mapping import compile_mapping, parse_mapping
from tests.benchmarks import data

from .conftest import mapped_outcome

UTC = dt.timezone.utc
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def write_typed_jsonl(path: Path, lines: list[Any], gzipped: bool) -> str:
    """`lines` as normalize writes them: dlt's typed-jsonl writer, one line per list of rows
    (a line that is one row, as earlier dlt versions wrote, when it is a dict)."""
    buffer = io.BytesIO()
    writer = TypedJsonlListWriter(buffer)
    for line in lines:
        if isinstance(line, dict):
            buffer.write(json.typed_dumpb(line) + b"\n")
        else:
            writer.write_data(line)
    payload = buffer.getvalue()
    path.write_bytes(gzip.compress(payload) if gzipped else payload)
    return str(path)


def dlt_rows(path: str, offset: int, columns: list[str]) -> list[dict]:
    """The rows dlt's own reader (`JsonlFileBatchIterator`) gives after `offset`."""
    return [row for batch in JsonlFileBatchIterator(path, 7, offset, columns) for row in batch]


def typed(value: object) -> object:
    """`value` with each leaf's type beside it: 1 and 1.0 and Decimal(1) are equal in Python."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


# -- the table: a column of each dlt type, and a variant column --------------------------------
TYPES = {
    "t": "text",
    "i": "bigint",
    "f": "double",
    "b": "bool",
    "ts": "timestamp",
    "d": "date",
    "dec": "decimal",
    "j": "json",
    "tm": "time",
    "bin": "binary",
}
VARIANT = ("f__v_text", "f")
MARKED = "".join(chr(PUA_START + i) for i in range(10))
_PIECES = [
    "a",
    "\u00e9",
    "\U0001f600",
    "},{",
    '"},{"t":',
    "[",
    "]",
    ":",
    '"',
    "\\",
    "\n",
    "\t",
    " ",
]
_PIECES += ["0", "12", "-", "T", "+00:00", "2024-01-01", "T00:00:00", ".123456", *MARKED]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)
_ODD = st.sampled_from(["", "x", 5, 2.5, True, [1], {"x": 1}, chr(PUA_START + 1) + "2024-01-01"])
_VALUE_OF = {
    "text": _TEXT,
    "bigint": st.integers(-(2**63), 2**64 - 1),  # what orjson writes
    "double": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-9, 9),
    "bool": st.booleans(),
    "timestamp": st.datetimes(timezones=st.sampled_from([None, UTC, UTC, PLUS_TWO])) | st.dates(),
    "date": st.dates() | st.datetimes(),
    "decimal": st.decimals(allow_nan=False, allow_infinity=False, places=3),
    "json": st.dictionaries(
        st.sampled_from("xy"), st.integers(-(2**63), 2**63 - 1) | _TEXT, max_size=2
    ),
    "time": st.times(),
    "binary": st.binary(max_size=4),
}


@st.composite
def tables(draw: st.DrawFn) -> tuple[dict[str, dict], list[Any], bool]:
    """Columns (some of `TYPES`, maybe a variant column), lines of rows of them, and whether the
    columns hold a few values of other types than their own."""
    names = draw(st.lists(st.sampled_from(sorted(TYPES)), unique=True, min_size=1))
    columns = {name: {"name": name, "data_type": TYPES[name]} for name in names}
    if draw(st.integers(0, 5)) == 0:
        columns[VARIANT[0]] = {"name": VARIANT[0], "data_type": "text", "variant": True}
    odd = draw(st.integers(0, 3)) == 0

    def value(name: str) -> st.SearchStrategy[Any]:
        own = _VALUE_OF.get(columns[name]["data_type"], _TEXT)
        return (own | _ODD) if odd else own

    outside = {"zz": st.none() | _TEXT | _VALUE_OF["json"]}  # a key the table has no column for
    row = st.fixed_dictionaries(
        {}, optional={**{name: st.none() | value(name) for name in columns}, **outside}
    )
    lines = draw(st.lists(st.lists(row, max_size=6) | row, max_size=6))
    return columns, lines, odd


@given(
    table=tables(),
    unit_rows=st.integers(1, 5),
    offset=st.integers(0, 8),
    gzipped=st.booleans(),
    wanted=st.lists(st.sampled_from([*sorted(TYPES), VARIANT[0], None, "absent"]), max_size=6),
)
def test_units_give_dlts_rows_and_a_batch_equal_to_the_dicts_or_decline(
    tmp_path_factory: pytest.TempPathFactory,
    table: tuple[dict[str, dict], list[Any], bool],
    unit_rows: int,
    offset: int,
    gzipped: bool,
    wanted: list[str | None],
) -> None:
    columns, lines, _ = table
    path = write_typed_jsonl(tmp_path_factory.mktemp("jsonl") / "t.typed-jsonl", lines, gzipped)
    expected = dlt_rows(path, offset, list(columns))
    reader = SimpleNamespace(compiled=SimpleNamespace(variants=(VARIANT,)))

    units = list(typed_jsonl_units(path, unit_rows, offset, columns))

    assert [len(unit) for unit in units] == [
        min(unit_rows, len(expected) - start) for start in range(0, len(expected), unit_rows)
    ]
    start = 0
    for unit in units:
        dicts = expected[start : start + len(unit)]
        start += len(unit)
        # a row read alone, before and after the rest are made
        assert typed(unit[len(unit) - 1]) == typed(dicts[-1])
        batch = unit.batch(wanted, columns, [VARIANT[0]])
        assert typed(list(unit)) == typed(dicts)
        event("from Arrow" if batch is not None else "declined")
        if batch is not None:  # then the mapper would have built the same one from the dicts
            from_dicts = mapper._rows_to_batch(reader, dicts, columns, wanted)  # type: ignore[arg-type]
            assert from_dicts is not None
            assert batch.schema == from_dicts.schema
            assert batch.equals(from_dicts)


# one column of each type the fast path converts, values as dlt writes them, nulls included
CONVERTED = {
    "text": ["a", '\u00e9\U0001f600 } { "q" \\', None, "", chr(PUA_START - 1) + "x"],
    "bigint": [0, -(2**63), 2**63 - 1, None, 7],
    "double": [0.5, -0.0, 1e300, None, 5e-324],
    "bool": [True, False, None, True, False],
    "timestamp": [
        dt.datetime(2024, 1, 1, tzinfo=UTC),
        dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        None,
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC),
    ],
    "naive timestamp": [dt.datetime(2024, 2, 29, 23, 59), None, None, None, dt.datetime(1, 1, 1)],
    "date": [dt.date(2024, 2, 29), dt.date(1, 1, 1), None, dt.date(9999, 12, 31), None],
    "no value": [None] * 5,
}


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_a_column_of_each_converted_type_comes_from_arrow_equal_to_the_dicts(
    tmp_path: Path, kind: str
) -> None:
    data_type = kind.split()[-1] if kind != "no value" else "timestamp"
    columns = {"c": {"name": "c", "data_type": data_type}, "k": {"name": "k", "data_type": "text"}}
    rows = [
        {"k": str(i), "c": v} if v is not None else {"k": str(i)}
        for i, v in enumerate(CONVERTED[kind])
    ]
    path = write_typed_jsonl(tmp_path / "t.typed-jsonl", [rows[:2], rows[2:]], gzipped=True)
    reader = SimpleNamespace(compiled=SimpleNamespace(variants=()))

    (unit,) = typed_jsonl_units(path, 10, 0, columns)
    batch = unit.batch(["c", "k"], columns, [])

    assert batch is not None
    assert batch.equals(
        mapper._rows_to_batch(reader, dlt_rows(path, 0, list(columns)), columns, ["c", "k"])
    )  # type: ignore[arg-type]


DECLINED = {
    "a text dlt would decode": ("text", [chr(PUA_START) + "1.5"]),
    "a marker alone": ("text", [chr(PUA_START + 8)]),
    "an int in a double column": ("double", [1.5, 2]),
    "a timestamp not in UTC": ("timestamp", [dt.datetime(2024, 1, 1, tzinfo=PLUS_TWO)]),
    "naive and UTC timestamps": (
        "timestamp",
        [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=UTC)],
    ),
    "a date in a timestamp column": ("timestamp", [dt.date(2024, 1, 1)]),
    "a datetime in a date column": ("date", [dt.datetime(2024, 1, 1)]),
    "a decimal": ("decimal", [Decimal("1.5")]),
    "json": ("json", [{"x": 1}]),
    "a text in a bigint column": ("bigint", ["1"]),
    "an unmarked text in a timestamp column": ("timestamp", ["2024-01-01T00:00:00"]),
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_the_fast_path_declines_what_it_cannot_be_sure_of(tmp_path: Path, case: str) -> None:
    data_type, values = DECLINED[case]
    columns = {"c": {"name": "c", "data_type": data_type}}
    path = write_typed_jsonl(tmp_path / "t.typed-jsonl", [[{"c": v} for v in values]], False)

    (unit,) = typed_jsonl_units(path, 10, 0, columns)

    assert unit.batch(["c"], columns, []) is None
    assert typed(list(unit)) == typed(dlt_rows(path, 0, ["c"]))


def test_a_variant_column_in_the_table_declines(tmp_path: Path) -> None:
    columns = {
        "c": {"name": "c", "data_type": "bigint"},
        "c__v_text": {"name": "c__v_text", "data_type": "text", "variant": True},
    }
    path = write_typed_jsonl(tmp_path / "t.typed-jsonl", [[{"c": 1}]], False)
    (unit,) = typed_jsonl_units(path, 10, 0, columns)
    assert unit.batch(["c"], columns, []) is not None
    assert unit.batch(["c"], columns, ["c__v_text"]) is None


# -- the mapping: the benchmark's rows, mapped from Arrow without a dict -----------------------
PEOPLE = {
    name: {"name": name, "data_type": data_type}
    for name, data_type in [
        ("uid", "text"),
        ("email", "text"),
        ("name", "text"),
        ("plan", "text"),
        ("ltv", "double"),
        ("logins", "bigint"),
        ("active", "bool"),
        ("updated_at", "timestamp"),
        ("_dlt_load_id", "text"),
        ("_dlt_id", "text"),
    ]
}


def people_file(tmp_path: Path, rows: list[dict]) -> str:
    rows = [{**row, "_dlt_load_id": "1.5", "_dlt_id": f"id{i}"} for i, row in enumerate(rows)]
    return write_typed_jsonl(tmp_path / "people.typed-jsonl", [rows[:1200], rows[1200:]], True)


def identify_mapper() -> RowMapper:
    declared = {"action": "identify", "identifier": "uid", "timestamp": "updated_at"}
    return RowMapper(compile_mapping("people", parse_mapping("people", declared), PEOPLE))


def test_the_benchmarks_rows_map_from_arrow_without_a_dict_as_from_dlts_dicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = people_file(tmp_path, data.dict_rows(0, 2500))
    rows = dlt_rows(path, 500, list(PEOPLE))
    units = list(typed_jsonl_units(path, 1000, 500, PEOPLE))

    def no_dicts(*args: Any) -> None:
        raise AssertionError("a row was made a dict")

    with monkeypatch.context() as patch:  # neither a row of the file nor the dicts' batch made
        patch.setattr(jsonl_arrow._Line, "row", no_dicts)
        patch.setattr(mapper, "_rows_to_batch", no_dicts)
        ours = [map_items(identify_mapper(), unit, PEOPLE) for unit in units]

    assert [len(unit) for unit in units] == [1000, 1000]
    assert all(mapped.block is not None and len(mapped.block) == 1000 for mapped in ours)
    assert [mapped_outcome(mapped) for mapped in ours] == [
        mapped_outcome(map_items(identify_mapper(), rows[i : i + 1000], PEOPLE)) for i in (0, 1000)
    ]


def test_a_rejected_row_records_the_row_dlt_reads_and_only_it_is_made_a_dict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = data.dict_rows(0, 300)
    people[7]["name"] = "x" * 2_000  # a value over Customer.io's limit: rejected
    people[9]["uid"] = None  # no identifier: rejected
    path = people_file(tmp_path, people)
    made = []
    row = jsonl_arrow._Line.row
    monkeypatch.setattr(jsonl_arrow._Line, "row", lambda *a: made.append(a[1]) or row(*a))

    (unit,) = typed_jsonl_units(path, 1000, 0, PEOPLE)
    ours = map_items(identify_mapper(), unit, PEOPLE)

    assert sorted(made) == [7, 9]
    expected = map_items(identify_mapper(), dlt_rows(path, 0, list(PEOPLE)), PEOPLE)
    assert mapped_outcome(ours) == mapped_outcome(expected)
    assert sorted(r.row["_dlt_id"] for r in ours.rejections) == ["id7", "id9"]


def test_a_dict_job_reads_its_file_into_arrow_from_its_offset_in_whole_dlt_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "people.a1b2c3.0.typed-jsonl"
    write_typed_jsonl(
        path, [[{"id": i} for i in range(4)], [{"id": i} for i in range(4, 9)]], False
    )
    monkeypatch.setattr(jobs, "destination_state", lambda: {"people.a1b2c3": 2})
    monkeypatch.setattr(jobs, "BATCH_ROWS", 2)
    job = jobs.JobFile(
        str(path), {"name": "people", "columns": {"id": {"name": "id", "data_type": "bigint"}}}
    )

    units = list(job.units(3))  # 3 rows a unit: two whole batches of 2

    assert all(isinstance(unit.items, JsonlRows) for unit in units)
    assert [unit.rows for unit in units] == [4, 3]
    assert [list(unit.items) for unit in units] == [
        [{"id": i} for i in r] for r in (range(2, 6), range(6, 9))
    ]


@pytest.mark.slow
def test_markers_moved_by_dlts_environment_variable_move_with_it(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import datetime as dt, sys
        from pathlib import Path
        from dlt.common.json import PUA_START
        from tests.test_jsonl_arrow import write_typed_jsonl
        from cio_destination.jsonl_arrow import typed_jsonl_units
        assert PUA_START == 0xE000
        columns = {"ts": {"data_type": "timestamp"}, "t": {"data_type": "text"}}
        rows = [{"ts": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), "t": chr(0xF027) + "x"}]
        path = write_typed_jsonl(Path(sys.argv[1]) / "a.typed-jsonl", [rows], False)
        (unit,) = typed_jsonl_units(path, 10, 0, columns)
        batch = unit.batch(["ts", "t"], columns, [])
        assert batch.column(0).to_pylist() == [rows[0]["ts"]], batch
        assert batch.column(1).to_pylist() == [rows[0]["t"]], batch
        rows = [{"ts": None, "t": chr(0xE000) + "1.5"}]
        path = write_typed_jsonl(Path(sys.argv[1]) / "b.typed-jsonl", [rows], False)
        (unit,) = typed_jsonl_units(path, 10, 0, columns)
        assert unit.batch(["t"], columns, []) is None
        print("ok")
        """
    )
    env = {**os.environ, "DLT_JSON_TYPED_PUA_START": "0xe000"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(
    ("declared", "extra", "into_arrow"),
    [
        ({"action": "identify", "identifier": "uid", "timestamp": "updated_at"}, None, True),
        (  # the column Arrow's read does not convert is not mapped: still read into Arrow
            {"action": "identify", "identifier": "uid", "attributes": ["plan"]},
            "decimal",
            True,
        ),
        ({"action": "identify", "identifier": "uid"}, "decimal", False),  # every column mapped
        ({"action": "identify", "identifier": "uid"}, "json", False),
        ({"action": "identify", "identifier": "uid", "clear_nulls": True}, None, False),
        ({"action": "delete", "identifier": "uid"}, None, False),  # no columnar builder
        (
            {"action": "event", "identifier": "uid", "event_name": "buy", "event_id": ["uid"]},
            None,
            True,
        ),
    ],
    ids=["identify", "unmapped-decimal", "decimal", "json", "clear-nulls", "delete", "event"],
)
def test_a_dict_job_is_read_into_arrow_only_where_its_mapping_may_take_the_batch(
    tmp_path: Path, declared: dict, extra: str | None, into_arrow: bool
) -> None:
    """Reading a line into Arrow as well costs time and memory: a table whose mapping would
    decline the batch reads dlt's dicts alone, and its units hold no Arrow table."""
    columns = dict(PEOPLE)
    if extra is not None:
        columns["score"] = {"name": "score", "data_type": extra}
    mapping = RowMapper(compile_mapping("people", parse_mapping("people", declared), columns))
    path = people_file(tmp_path, data.dict_rows(0, 1500))

    decided = mapper.reads_dicts_into_arrow(mapping, columns)
    units = list(typed_jsonl_units(path, 1000, 0, columns, into_arrow=decided))

    assert decided is into_arrow
    lines = [line for unit in units for line, _, _ in unit._pieces]
    assert all((line.table is not None) is into_arrow for line in lines)
    rows = [row for unit in units for row in unit]
    assert rows == dlt_rows(path, 0, list(columns))
