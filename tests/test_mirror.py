"""Mirror syncs: people who left a table read in full are deleted or suppressed, with a guard."""

from __future__ import annotations

from pathlib import Path

import dlt
import pyarrow as pa
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from cio_destination import customerio, customerio_adapter, rejected_rows, sync_report
from cio_destination.emulator import Emulator

from .conftest import API_KEY, SITE_ID

pytestmark = pytest.mark.slow  # whole dlt pipelines against the emulator


def members(ids, *, arrow: bool = False, **mapping):
    rows = [{"uid": f"u{i}", "plan": "pro"} for i in ids]
    data = [pa.Table.from_pylist(rows)] if arrow else rows
    keys = {"mirror": "delete", **mapping}
    return customerio_adapter(
        dlt.resource(data, name="members"), action="identify", identifier="uid", **keys
    )


def pipeline_for(emulator: Emulator, tmp_path: Path) -> dlt.Pipeline:
    destination = customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url)
    return dlt.pipeline("mirror", destination=destination, pipelines_dir=str(tmp_path))


def ids(emulator: Emulator) -> set[str]:
    return {p["identifiers"]["id"] for p in emulator.people}


@pytest.mark.parametrize("arrow", [False, True], ids=["jsonl", "parquet"])
def test_people_who_left_are_deleted(emulator: Emulator, tmp_path: Path, arrow: bool):
    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(members(range(20), arrow=arrow))
    assert len(ids(emulator)) == 20

    pipeline.run(members(range(1, 20), arrow=arrow))  # u0 left: 1 of 20, under the 10% guard

    assert ids(emulator) == {f"u{i}" for i in range(1, 20)}
    deletes = [r for r in emulator.requests if r.path == "/api/v2/batch"]
    assert sum(r.ops for r in deletes) == 20 + 19 + 1
    pipeline.run(members(range(1, 20), arrow=arrow))  # nobody left since: nothing removed
    assert ids(emulator) == {f"u{i}" for i in range(1, 20)}


@pytest.mark.slow
@pytest.mark.parametrize("arrow", [False, True], ids=["jsonl", "parquet"])
def test_an_identifier_in_a_json_column_is_mirrored_as_the_mapper_reads_it(
    emulator: Emulator, tmp_path: Path, arrow: bool
):
    """The snapshot took a JSON column's text ('"u0"') for the identifier the mapper sends
    ("u0"): the person who left was deleted under an identifier nobody has."""

    def json_members(ids):
        rows = [{"uid": f'"u{i}"', "plan": "pro"} for i in ids]
        data = [pa.Table.from_pylist(rows)] if arrow else rows
        resource = dlt.resource(data, name="members")
        return customerio_adapter(
            resource, action="identify", identifier="uid", json_columns=["uid"], mirror="delete"
        )

    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(json_members(range(20)))
    assert ids(emulator) == {f"u{i}" for i in range(20)}

    pipeline.run(json_members(range(1, 20)))

    assert ids(emulator) == {f"u{i}" for i in range(1, 20)}


def test_the_guard_stops_a_mass_removal_before_any_request(emulator: Emulator, tmp_path: Path):
    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(members(range(20)))
    before = len(emulator.requests)

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(members(range(10)))  # half the table gone: a broken source

    message = str(raised.value)
    assert "key 'max_removed_fraction'" in message
    assert "remove 10 of the 20 people" in message
    assert len(emulator.requests) == before
    assert len(ids(emulator)) == 20


def test_a_raised_guard_lets_a_real_mass_removal_through(emulator: Emulator, tmp_path: Path):
    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(members(range(20)))

    pipeline.run(members(range(5), max_removed_fraction=1.0))

    assert ids(emulator) == {f"u{i}" for i in range(5)}


def test_mirror_suppress_suppresses_who_left(emulator: Emulator, tmp_path: Path):
    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(members(range(12), mirror="suppress"))

    pipeline.run(members(range(1, 12), mirror="suppress"))

    assert emulator.suppressions == [{"id": "u0"}]
    assert ids(emulator) == {f"u{i}" for i in range(1, 12)}
    assert list(rejected_rows(pipeline)) == []


def test_with_changes_only_a_removed_person_who_returns_is_sent_in_full(
    emulator: Emulator, tmp_path: Path
):
    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(members(range(12), changes_only=True))
    pipeline.run(members(range(1, 12), changes_only=True))
    assert "u0" not in ids(emulator)

    pipeline.run(members(range(12), changes_only=True))

    assert emulator.find_person(id="u0")["attributes"] == {"plan": "pro"}
    assert sync_report(pipeline).tables[0].operations == 1


@pytest.mark.parametrize("backend", ["sqlalchemy", "pyarrow"])
def test_a_changing_duckdb_table_sends_changes_and_removes_who_left(
    emulator: Emulator, tmp_path: Path, backend: str
):
    import duckdb
    from dlt.sources.sql_database import sql_table

    database = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(
            "CREATE TABLE users AS SELECT 'u' || i AS uid, 'plan' || (i % 3) AS plan,"
            " i * 10 AS score FROM range(40) t(i)"
        )

    def users():
        table = sql_table(credentials=f"duckdb:///{database}", table="users", backend=backend)
        return customerio_adapter(
            table, action="identify", identifier="uid", changes_only=True, mirror="delete"
        )

    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(users())
    assert len(ids(emulator)) == 40
    mark = len(emulator.requests)

    with duckdb.connect(str(database)) as con:
        con.execute("UPDATE users SET score = -1 WHERE uid IN ('u1', 'u2')")
        con.execute("DELETE FROM users WHERE uid IN ('u3', 'u4')")
    pipeline.run(users())

    ops = sum(r.ops for r in emulator.requests[mark:] if r.path == "/api/v2/batch")
    assert ops == 4  # two changed people, two removed
    assert ids(emulator) == {f"u{i}" for i in range(40)} - {"u3", "u4"}
    assert emulator.find_person(id="u1")["attributes"] == {"plan": "plan1", "score": -1}
    report = sync_report(pipeline).tables[0]
    assert (report.rows_in, report.skipped, report.operations) == (38, 36, 4)

    with duckdb.connect(str(database)) as con:
        con.execute("DELETE FROM users WHERE uid >= 'u2'")  # most of the table: a broken source
    with pytest.raises(PipelineStepFailed):
        pipeline.run(users())
    assert len(ids(emulator)) == 38


def test_a_person_whose_identifier_dlt_stored_in_a_variant_column_is_mirrored(
    emulator: Emulator, tmp_path: Path
):
    """uid is typed bigint by its first rows; dlt stores "x-1" in the variant uid▶v_text."""

    def rows(*extra: str):
        data = [{"uid": i, "plan": "pro"} for i in range(1, 20)]
        data += [{"uid": e, "plan": "pro"} for e in extra]
        return customerio_adapter(
            dlt.resource(data, name="numbered"),
            action="identify",
            identifier="uid",
            mirror="delete",
        )

    pipeline = pipeline_for(emulator, tmp_path)
    pipeline.run(rows("x-1"))
    assert "x-1" in ids(emulator)

    pipeline.run(rows())  # x-1 left the table

    assert ids(emulator) == {str(i) for i in range(1, 20)}
