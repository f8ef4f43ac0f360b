"""State layout 3 keeps fingerprints' attribute hashes as binary (`attribute_hashes`); stores of
layout 2 (attribute hashes as JSON) are upgraded on open and their fingerprints resend nobody.

Each test writes a store as a release of layout 2 left it (its tables, its JSON blobs, its
recorded version), in the local state file, behind a SQLite or DuckDB URL, and on PostgreSQL,
then syncs with this release: the store is migrated (layout 3 recorded, the names table made),
every person's attributes are compared with the JSON kept, a person unchanged is sent nothing
and a person with one attribute changed only that attribute.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import orjson
import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from pytest_httpx import HTTPXMock

from cio_destination import customerio, customerio_adapter
from cio_destination.diff.changes import value_hash
from cio_destination.state import attribute_hashes
from cio_destination.state.backend import SCHEMA_VERSION, state_path

from .test_changes import ROWS, capture_batches, identify
from .test_postgres import postgres_url  # noqa: F401 - the server fixture

LAYOUT_2 = [
    "CREATE TABLE {s}cio_state_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO {s}cio_state_meta VALUES ('schema_version', '2')",
    "CREATE TABLE {s}cio_fingerprints (scope TEXT NOT NULL, identifier TEXT NOT NULL,"
    " row_hash BIGINT NOT NULL, attributes {blob} NOT NULL, source_hash BIGINT,"
    " PRIMARY KEY (scope, identifier))",
    "CREATE TABLE {s}cio_source_hashes (scope TEXT PRIMARY KEY, size BIGINT, hashes {blob})",
]
"""The fingerprints' tables of layout 2, as its release made them."""


def people(rows: list[dict[str, Any]], arrow: bool) -> Any:
    data: Any = rows
    if arrow:
        schema = pa.schema(
            [
                ("uid", pa.int64()),
                ("plan", pa.string()),
                ("city", pa.string()),
                ("score", pa.int64()),
            ]
        )
        data = [pa.Table.from_pylist(rows, schema=schema)]
    return customerio_adapter(
        dlt.resource(data, name="people"), action="identify", identifier="uid", changes_only=True
    )


def layout_2_rows(scope: str) -> list[tuple[Any, ...]]:
    """The fingerprints a release of layout 2 kept for `ROWS`: each attribute's hash in JSON.
    Their operation hashes are stale and no source hash is kept (as after an upgrade of both),
    so every person's attributes are compared with the JSON."""
    return [
        (
            scope,
            str(row["uid"]),
            1,
            orjson.dumps({k: value_hash(v) for k, v in row.items() if k != "uid"}),
            None,
        )
        for row in ROWS
    ]


@pytest.fixture(params=["file", "sqlite_url", "duckdb_url", "postgresql"])
def store_of_layout_2(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The state keys of a store of layout 2 holding `layout_2_rows` of pipeline `upgraded`,
    and an engine reaching it."""
    kind = request.param
    schema = None
    if kind == "file":
        path = state_path(tmp_path / "pipelines" / "upgraded")
        url, keys = f"sqlite:///{path}", {}
    elif kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
        schema = f"layout_{uuid.uuid4().hex[:8]}"
        keys = {"state_url": url, "state_schema": schema}
    else:
        suffix = "db" if kind == "sqlite_url" else "duckdb"
        url = f"{kind.split('_')[0]}:///{tmp_path / f'state.{suffix}'}"
        keys = {"state_url": url}
    engine = sa.create_engine(url)
    prefix = f'"{schema}".' if schema else ""
    blob = "BYTEA" if kind == "postgresql" else "BLOB"
    mark = "%s" if kind == "postgresql" else "?"

    def write() -> None:  # once the pipeline is made (dlt makes its working directory anew)
        if kind == "file":
            path.parent.mkdir(parents=True)
        with engine.begin() as connection:
            if schema:
                connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            for ddl in LAYOUT_2:
                connection.exec_driver_sql(ddl.format(s=prefix, blob=blob))
            for row in layout_2_rows("upgraded/people"):
                connection.exec_driver_sql(
                    f"INSERT INTO {prefix}cio_fingerprints VALUES ({', '.join([mark] * 5)})", row
                )

    try:
        yield {"keys": keys, "engine": engine, "prefix": prefix, "write": write}
    finally:
        if schema:
            with engine.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "dicts"])
def test_fingerprints_of_layout_2_resend_nobody_after_the_upgrade(
    httpx_mock: HTTPXMock, tmp_path: Path, store_of_layout_2: dict[str, Any], arrow: bool
):
    sent = capture_batches(httpx_mock)
    destination = customerio(site_id="s", api_key="k", **store_of_layout_2["keys"])
    pipeline = dlt.pipeline(
        "upgraded", destination=destination, pipelines_dir=str(tmp_path / "pipelines")
    )
    store_of_layout_2["write"]()
    if "state_url" not in store_of_layout_2["keys"]:
        assert state_path(pipeline.working_dir).is_file()

    pipeline.run(people([{**ROWS[0], "plan": "team"}, *ROWS[1:]], arrow))

    assert sent == [identify("1", {"plan": "team"})]
    engine, prefix = store_of_layout_2["engine"], store_of_layout_2["prefix"]
    with engine.connect() as connection:
        version = connection.exec_driver_sql(
            f"SELECT value FROM {prefix}cio_state_meta WHERE name = 'schema_version'"
        ).scalar()
        blobs = dict(
            connection.exec_driver_sql(
                f"SELECT identifier, attributes FROM {prefix}cio_fingerprints"
            ).fetchall()
        )
    assert version == str(SCHEMA_VERSION) == "3"
    # every fingerprint written again (the stale operation hashes refreshed), now as binary
    assert {i: attribute_hashes.blob_names_id(bytes(b)) is not None for i, b in blobs.items()} == {
        "1": True,
        "2": True,
        "3": True,
    }
    sent.clear()

    pipeline.run(people([{**ROWS[0], "plan": "team"}, *ROWS[1:]], arrow))

    assert sent == []
    # a change compared with the binary fingerprint, as the database gives it back
    pipeline.run(people([{**ROWS[0], "plan": "team"}, {**ROWS[1], "city": "Rome"}, ROWS[2]], arrow))
    assert sent == [identify("2", {"city": "Rome"})]


hashes_of = st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1), max_size=20)


@given(st.lists(hashes_of, min_size=1, max_size=5), st.data())
def test_the_row_and_column_forms_store_attribute_hashes_that_read_back_alike(
    rows: list[dict[str, int]], data: st.DataObject
):
    """`encode` (a fingerprint's dict) and `blobs` (a block's hash columns, a null where a row
    has no value) read back (`decode`) as the hashes given, whatever the names and values;
    the JSON of layout 2 reads back as it was written."""
    names = sorted({name for row in rows for name in row})
    names += data.draw(st.lists(st.text(max_size=3).filter(lambda n: n not in names), unique=True))
    columns = [pa.array([row.get(name) for row in rows], pa.int64()) for name in names]
    lists = {attribute_hashes.names_id(names): names}

    blobs = attribute_hashes.blobs(names, columns, len(rows)).to_pylist()

    for row, blob in zip(rows, blobs, strict=True):
        assert attribute_hashes.decode(blob, lists.__getitem__) == row
        ident, listed, single = attribute_hashes.encode(row)
        assert attribute_hashes.decode(single, {ident: listed}.__getitem__) == row
        assert attribute_hashes.decode(orjson.dumps(row), lists.__getitem__) == row
        assert attribute_hashes.blob_names_id(blob) == attribute_hashes.names_id(names)
        assert len(blob) == 9 + (len(names) + 7) // 8 + 8 * len(names)
