"""pipelines/warehouse_to_customerio.py with its shipped example config, on the DuckDB demo warehouse.

Each test lays out a dlt project in tmp_path the way a user would (`.dlt/config.toml` and
`.dlt/secrets.toml` copied from `pipelines/.dlt/`, the demo warehouse where the example secrets
point), runs from there, and points the destination at the session emulator through the
environment, which overrides the example's emulator address and keys as dlt promises.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import duckdb
import orjson
import pytest
import sqlalchemy as sa
from dlt.common.configuration.container import Container
from dlt.common.configuration.exceptions import ConfigurationValueError
from dlt.common.configuration.specs.pluggable_run_context import PluggableRunContext
from sqlalchemy.dialects import postgresql

from cio_destination import MappingError, rejected_rows
from cio_destination.emulator import Emulator
from cio_destination.state import state_for

from .conftest import API_KEY, SITE_ID

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def _load(name: str) -> ModuleType:
    """A module of pipelines/ (not a package), imported once per session."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


demo = _load("demo")
wh = _load("warehouse_to_customerio")


def _reload_dlt_settings() -> None:
    """dlt reads `.dlt/*.toml` of the current directory once; read them again after a chdir."""
    Container()[PluggableRunContext].reload_providers()


@pytest.fixture
def in_project(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> Iterator[Any]:
    """Run from a given directory with dlt's settings read there; destination -> the emulator."""
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__TRACK_URL", emulator.url)
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__SITE_ID", SITE_ID)
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__API_KEY", API_KEY)
    old_cwd = os.getcwd()

    def enter(directory: Path) -> Path:
        os.chdir(directory)
        _reload_dlt_settings()
        return directory

    try:
        yield enter
    finally:
        os.chdir(old_cwd)
        _reload_dlt_settings()


@pytest.fixture
def example(tmp_path: Path, in_project: Any) -> Path:
    """A project laid out from the shipped example: config, secrets, and the demo warehouse."""
    project = tmp_path / "pipelines"
    (project / ".dlt").mkdir(parents=True)
    shutil.copy(PIPELINES / ".dlt" / "config.toml", project / ".dlt" / "config.toml")
    shutil.copy(PIPELINES / ".dlt" / "secrets.toml.example", project / ".dlt" / "secrets.toml")
    # where the example secrets point: ../demo_data/warehouse.duckdb, seen from pipelines/
    demo.build_warehouse(tmp_path / "demo_data" / "warehouse.duckdb")
    return in_project(project)


def run(tmp_path: Path, **kwargs: Any) -> Any:
    return wh.sync(
        "wh_test", pipelines_dir=str(tmp_path / "dlt_pipelines"), progress="none", **kwargs
    )


def people(emulator: Emulator) -> dict[str, dict[str, Any]]:
    """email -> attributes, with the ids Customer.io assigned left out."""
    return {p["identifiers"]["email"]: p["attributes"] for p in emulator.people}


def by_name_and_time(event: tuple[str, dict[str, str], int, dict[str, Any]]) -> tuple[str, int]:
    return event[0], event[2]


def events(emulator: Emulator) -> list[tuple[str, dict[str, str], int, dict[str, Any]]]:
    """(name, identifiers, timestamp, data) of every event Customer.io holds."""
    return sorted(
        ((e["name"], e["identifiers"], e["timestamp"], e["attributes"]) for e in emulator.events),
        key=by_name_and_time,
    )


def ops_since(emulator: Emulator, first: int) -> int:
    return sum(r.ops for r in emulator.requests[first:] if r.status == 200)


def execute(database: Path, *statements: str) -> None:
    with duckdb.connect(str(database)) as con:
        for statement in statements:
            con.execute(statement)


DEMO_PEOPLE = {
    "ada@example.com": {
        "first_name": "Ada",
        "plan": "pro",
        "lifetime_value": 1250.5,
        "created_at": 1704272400,  # 2024-01-03 09:00:00+00
    },
    "grace@example.com": {
        "first_name": "Grace",
        "plan": "free",
        "lifetime_value": 0,
        "created_at": 1707651000,  # 2024-02-11 12:30:00+01
    },
    "alan@example.com": {
        "first_name": "Alan",
        "lifetime_value": 89.9,
        "created_at": 1709644500,  # 2024-03-05 08:15:00-05
    },
}
ADA, GRACE, ALAN = ({"email": e} for e in DEMO_PEOPLE)
DEMO_EVENTS = sorted(
    [
        (
            "purchase_completed",
            ADA,
            1717236300,
            {"sku": "BOOK-1", "qty": 1, "order_id": 101, "total": 49},
        ),
        (
            "purchase_completed",
            ADA,
            1717339200,
            {"sku": "PEN-9", "qty": 3, "order_id": 102, "total": 15.5},
        ),
        (
            "purchase_completed",
            GRACE,
            1717405200,
            {"sku": "LAMP-2", "gift": True, "order_id": 103, "total": 120},
        ),
        ("signed_up", ADA, 1704272400, {"plan": "pro"}),
        ("signed_up", GRACE, 1707651000, {"plan": "free"}),
        ("signed_up", ALAN, 1709644500, {}),
    ],
    key=by_name_and_time,
)
DEMO_REJECTED = [
    ("orders", "104", "invalid_event_data", "data"),
    ("signups", "4", "invalid_identifier", "email"),  # an event's row key is its event_id
    ("users", "not-an-email", "invalid_identifier", "email"),
]


def rejected(result: Any) -> list[tuple[str, str, str, str]]:
    return sorted((r["table"], r["row_key"], r["reason"], r["field"]) for r in result.rejected)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlalchemy", "pyarrow"])
def test_example_config_syncs_the_demo_warehouse_then_only_what_changed(
    backend: str, example: Path, tmp_path: Path, emulator: Emulator, monkeypatch
):
    monkeypatch.setenv("SOURCES__WAREHOUSE__BACKEND", backend)
    database = tmp_path / "demo_data" / "warehouse.duckdb"

    first = run(tmp_path)

    assert people(emulator) == DEMO_PEOPLE
    assert events(emulator) == DEMO_EVENTS
    assert rejected(first) == DEMO_REJECTED
    assert first.rows == {"users": 4, "orders": 4, "signups": 4}
    event_ids = {e["attributes"].get("order_id", e["name"]): e["id"] for e in emulator.events}

    # nothing changed: nothing is read past the cursors, nothing is sent
    requests_before = len(emulator.requests)
    unchanged = run(tmp_path)
    assert unchanged.rows == {}
    assert unchanged.rejected == []
    assert len(emulator.requests) == requests_before

    # Grace changes plan; order 102 is re-stamped (re-extracted); order 105 is new
    execute(
        database,
        "UPDATE users SET plan = 'pro', updated_at = '2024-07-01 08:00:00+00' WHERE id = 2",
        "UPDATE orders SET created_at = '2024-07-01 09:00:00+00' WHERE order_id = 102",
        """INSERT INTO orders VALUES
           (105, 'alan@example.com', 3.50, '2024-07-02 10:00:00+00', '{"sku": "TEA-5"}')""",
    )
    changed = run(tmp_path)

    assert changed.rows == {"users": 1, "orders": 2}
    assert changed.rejected == []
    assert ops_since(emulator, requests_before) == 3
    assert people(emulator) == {
        **DEMO_PEOPLE,
        "grace@example.com": {**DEMO_PEOPLE["grace@example.com"], "plan": "pro"},
    }
    # the re-extracted order kept its event id, so Customer.io ignored it: one copy, as first sent
    assert emulator.duplicate_events == 1
    assert events(emulator) == sorted(
        [
            *DEMO_EVENTS,
            (
                "purchase_completed",
                ALAN,
                1719914400,
                {"sku": "TEA-5", "order_id": 105, "total": 3.5},
            ),
        ],
        key=by_name_and_time,
    )
    ids_now = {e["attributes"].get("order_id", e["name"]): e["id"] for e in emulator.events}
    assert {k: v for k, v in ids_now.items() if k != 105} == event_ids


@pytest.mark.slow
def test_full_refresh_sends_everything_again_without_a_second_event(
    example: Path, tmp_path: Path, emulator: Emulator
):
    run(tmp_path)
    requests_before = len(emulator.requests)

    again = run(tmp_path, full_refresh=True)

    assert again.rows == {"users": 4, "orders": 4, "signups": 4}
    assert rejected(again) == DEMO_REJECTED
    assert ops_since(emulator, requests_before) == 9  # 3 people, 3 orders, 3 sign-ups
    assert emulator.duplicate_events == 6
    assert events(emulator) == DEMO_EVENTS
    assert people(emulator) == DEMO_PEOPLE


@pytest.mark.slow
def test_one_table_can_be_synced_or_refreshed_alone(
    example: Path, tmp_path: Path, emulator: Emulator
):
    only_orders = run(tmp_path, tables=["orders"])
    assert only_orders.rows == {"orders": 4}
    assert people(emulator) == {"ada@example.com": {}, "grace@example.com": {}}

    rest = run(tmp_path)
    assert rest.rows == {"users": 4, "signups": 4}

    refreshed = run(tmp_path, tables=["orders"], full_refresh=True)
    assert refreshed.rows == {"orders": 4}
    # the other tables kept their cursors
    assert run(tmp_path).rows == {}
    assert events(emulator) == DEMO_EVENTS


@pytest.mark.slow
def test_command_line_prints_what_it_sent_and_rejected(
    example: Path, tmp_path: Path, emulator: Emulator, monkeypatch, capsys
):
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_data"))

    assert wh.main(["--pipeline-name", "cli_test", "--progress", "none"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pipeline cli_test: loads ")
    assert out[1:9] == [
        "  orders: 3 sent, 1 rejected",
        "  signups: 3 sent, 1 rejected",
        "  users: 3 sent, 1 rejected",
        "rejected rows: 3",
        "  orders: 1 x invalid_event_data (data)",
        "  signups: 1 x invalid_identifier (email)",
        "  users: 1 x invalid_identifier (email)",
        "  inspect them with cio_destination.rejected_rows(pipeline, load_id=...): each has"
        " row_key, reason, field, message and the row",
    ]
    # then the destination's own report of the load, per table and action
    assert out[9].startswith("Customer.io sync report (load ")
    report_rows = {
        line.split()[0]: line.split()[1:] for line in out[11:] if not line.startswith(" ")
    }
    assert {t: r[:5] for t, r in report_rows.items()} == {
        "orders": ["event", "4", "3", "3", "1"],
        "signups": ["event", "4", "3", "3", "1"],
        "users": ["identify", "4", "3", "3", "1"],
    }
    assert (tmp_path / "dlt_data" / "pipelines" / "cli_test").is_dir()
    assert len(emulator.people) == 3

    assert wh.main(["--pipeline-name", "cli_test", "--progress", "none"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["  nothing new to send", "rejected rows: 0"]


@pytest.mark.slow
def test_dry_run_prints_the_report_sends_nothing_and_keeps_the_cursors(
    example: Path, tmp_path: Path, emulator: Emulator, monkeypatch, capsys
):
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_data"))

    assert wh.main(["--pipeline-name", "dry", "--progress", "none", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("Customer.io sync report (dry run: nothing was sent)")
    assert "would send: " in out and "@example.com" not in out
    assert emulator.requests == []
    assert wh.main(["--pipeline-name", "dry", "--progress", "none"]) == 0
    assert len(emulator.people) == 3  # the real run still found every row


@pytest.mark.slow
def test_config_from_environment_alone(
    tmp_path: Path, in_project: Any, emulator: Emulator, monkeypatch
):
    in_project(tmp_path)  # no .dlt folder at all
    url = demo.build_warehouse(tmp_path / "warehouse.duckdb")
    monkeypatch.setenv("SOURCES__WAREHOUSE__CREDENTIALS", url)
    monkeypatch.setenv(
        "SOURCES__WAREHOUSE__TABLES",
        orjson.dumps({"orders": {"incremental": "order_id", "initial_value": 103}}).decode(),
    )
    monkeypatch.setenv(
        "DESTINATION__CUSTOMERIO__TABLES",
        orjson.dumps(
            {
                "orders": {
                    "action": "event",
                    "identifier": "user_email",
                    "identifier_type": "email",
                    "event_name": "bought",
                }
            }
        ).decode(),
    )

    result = run(tmp_path)

    # initial_value: the rows from order 103 on; the whole row is the event data, and its
    # DuckDB JSON column travels as the JSON it holds
    assert result.rows == {"orders": 2}
    assert sorted(
        (e["attributes"]["order_id"], e["identifiers"]["email"], e["attributes"]["data"])
        for e in emulator.events
    ) == [
        (103, "grace@example.com", {"sku": "LAMP-2", "gift": True}),
        (104, "alan@example.com", ["not", "an", "object"]),
    ]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({}, "sources.warehouse.tables: no table to sync"),
        ({"users": {"cursor": "x"}}, "sources.warehouse.tables.users: unknown key(s) cursor"),
        ({"users": {"incremental": ""}}, "sources.warehouse.tables.users.incremental must be"),
        ({"users": {"primary_key": [1]}}, "sources.warehouse.tables.users.primary_key must be"),
        (
            {"users": {"initial_value": 3}},
            "sources.warehouse.tables.users.initial_value needs sources.warehouse.tables.users"
            ".incremental",
        ),
        (
            {"customers": {"incremental": "updated_at"}},
            "sources.warehouse.tables.customers: the warehouse has no table or view 'customers'",
        ),
    ],
)
def test_bad_source_config_is_named_before_anything_is_read(
    tables: dict[str, Any],
    message: str,
    example: Path,
    tmp_path: Path,
    emulator: Emulator,
    monkeypatch,
):
    monkeypatch.setenv("SOURCES__WAREHOUSE__TABLES", orjson.dumps(tables).decode())

    with pytest.raises(ConfigurationValueError) as raised:
        run(tmp_path)

    assert message in str(raised.value)
    assert emulator.requests == []


def test_a_table_without_a_customerio_mapping_stops_before_anything_is_read(
    example: Path, tmp_path: Path, emulator: Emulator
):
    config = example / ".dlt" / "config.toml"
    config.write_text(
        config.read_text() + '\n[sources.warehouse.tables.accounts]\ntable = "users"\n'
    )
    _reload_dlt_settings()

    with pytest.raises(MappingError) as raised:
        run(tmp_path)

    assert "Customer.io mapping of table 'accounts', key 'action'" in str(raised.value)
    assert "[destination.customerio.tables.accounts]" in str(raised.value)
    assert emulator.requests == []


def test_bad_backend_is_refused(example: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_data"))
    monkeypatch.setenv("SOURCES__WAREHOUSE__BACKEND", "pandas")

    assert wh.main(["--progress", "none"]) == 2
    assert capsys.readouterr().err == (
        "configuration error: sources.warehouse.backend must be one of sqlalchemy, pyarrow,"
        " not 'pandas'\n"
    )


@pytest.mark.parametrize(
    ("tables", "line"),
    [
        (
            {"users": {"incremental": "changed_at"}},
            "sources.warehouse.tables.users.incremental: the warehouse table or view 'users' has"
            " no column 'changed_at' (its columns: id, email,",
        ),
        (
            {"users": {"incremental": "updated_at", "primary_key": ["id", "user_id"]}},
            "sources.warehouse.tables.users.primary_key: the warehouse table or view 'users' has"
            " no column 'user_id'",
        ),
        (
            {"accounts": {"table": "users", "incremental": "updated_at", "initial_value": 5}},
            "sources.warehouse.tables.accounts.initial_value cannot be compared with the values"
            " of the cursor column 'updated_at' (datetime): give a TOML date-time without quotes",
        ),
        (
            {"users": {"incremental": "updated_at", "initial_value": "yesterday"}},
            "sources.warehouse.tables.users.initial_value cannot be compared",
        ),
        (
            {"users": {"incremental": "id", "initial_value": "3"}},
            "sources.warehouse.tables.users.initial_value cannot be compared with the values of"
            " the cursor column 'id' (int): give a number without quotes",
        ),
    ],
    ids=["incremental", "primary_key", "initial_value_number", "initial_value_text", "id_text"],
)
def test_a_table_entry_naming_what_the_table_does_not_have_exits_2_naming_the_key(
    tables: dict[str, Any],
    line: str,
    example: Path,
    tmp_path: Path,
    emulator: Emulator,
    monkeypatch,
    capsys,
):
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_data"))
    monkeypatch.setenv("SOURCES__WAREHOUSE__TABLES", orjson.dumps(tables).decode())
    config = example / ".dlt" / "config.toml"
    config.write_text(
        config.read_text()
        + '\n[destination.customerio.tables.accounts]\naction = "identify"\nidentifier = "id"\n'
    )
    _reload_dlt_settings()

    assert wh.main(["--progress", "none"]) == 2  # a setting to fix, not a rerun

    err = capsys.readouterr().err
    assert err.startswith(f"configuration error: {line}")
    assert len(err.splitlines()) == 1
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("url", "line"),
    [
        (
            "snowflake://loader:Pw-Qz81@account/db",
            "sources.warehouse.credentials: SQLAlchemy has no dialect 'snowflake' installed",
        ),
        (
            "mysql://loader:Pw-Qz81@db.example/x",
            "sources.warehouse.credentials: the driver of SQLAlchemy dialect 'mysql' is not"
            " installed (no module 'MySQLdb')",
        ),
    ],
    ids=["dialect", "driver"],
)
def test_a_warehouse_url_whose_dialect_is_not_installed_exits_2_naming_it(
    url: str, line: str, example: Path, tmp_path: Path, emulator: Emulator, monkeypatch, capsys
):
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_data"))
    monkeypatch.setenv("SOURCES__WAREHOUSE__CREDENTIALS", url)

    assert wh.main(["--progress", "none"]) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"configuration error: {line}")
    assert "Pw-Qz81" not in err
    assert emulator.requests == []


@pytest.mark.slow
def test_a_failed_load_resumes_on_the_next_run_then_reads_what_changed(
    example: Path, tmp_path: Path, emulator: Emulator, monkeypatch, capsys
):
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt_data"))
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__API_KEY", "revoked-key")

    assert wh.main(["--progress", "none"]) == 2  # a setting to fix
    err = capsys.readouterr().err
    assert "destination.customerio.api_key" in err
    assert "revoked-key" not in err
    assert "the load package is kept: run again once fixed" in err
    assert emulator.people == []

    # meanwhile Grace changes plan; the fixed run sends the pending load, then the change
    execute(
        tmp_path / "demo_data" / "warehouse.duckdb",
        "UPDATE users SET plan = 'pro', updated_at = '2024-07-01 08:00:00+00' WHERE id = 2",
    )
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__API_KEY", API_KEY)

    assert wh.main(["--progress", "none"]) == 0

    out = capsys.readouterr().out.splitlines()
    pending, new = out[0].removeprefix("pipeline warehouse_to_customerio: loads ").split(", ")
    assert out[1:4] == [
        f"  finished load {pending}, left pending by an earlier run",
        "  users: 1 sent, 0 rejected",
        "rejected rows: 3",
    ]
    assert new != pending
    assert people(emulator) == {
        **DEMO_PEOPLE,
        "grace@example.com": {**DEMO_PEOPLE["grace@example.com"], "plan": "pro"},
    }
    assert events(emulator) == DEMO_EVENTS
    assert emulator.duplicate_events == 0


@pytest.mark.slow
def test_initial_value_as_a_toml_date_time(example: Path, tmp_path: Path, emulator: Emulator):
    (example / ".dlt" / "config.toml").write_text(
        """
[sources.warehouse.tables.users]
incremental = "updated_at"
initial_value = 2024-06-02T12:00:00Z

[destination.customerio]
track_url = "http://127.0.0.1:1"  # the environment's (the test emulator's) wins

[destination.customerio.tables.users]
action = "identify"
identifier = "email"
identifier_type = "email"
timestamp = "updated_at"
"""
    )
    _reload_dlt_settings()

    result = run(tmp_path)

    assert result.rows == {"users": 2}  # Alan, and the rejected Edsger: updated after the start
    assert people(emulator) == {"alan@example.com": DEMO_PEOPLE["alan@example.com"]}


def test_json_as_text_casts_json_columns_only_where_the_cast_gives_json_text():
    table = sa.Table(
        "people",
        sa.MetaData(),
        sa.Column("id", sa.Integer),
        sa.Column("prefs", postgresql.JSONB),
        sa.Column("updated_at", sa.DateTime),
    )
    query = table.select().where(table.c.updated_at >= sa.bindparam("last"))
    engine = sa.create_engine("postgresql://127.0.0.1/db")

    adapted = wh.json_as_text(query, table, None, engine)

    assert [c.name for c in adapted.selected_columns] == ["id", "prefs", "updated_at"]
    sql = " ".join(str(adapted.compile(dialect=engine.dialect)).split())
    assert sql == (
        "SELECT people.id, CAST(people.prefs AS TEXT) AS prefs, people.updated_at FROM people"
        " WHERE people.updated_at >= %(last)s"
    )

    bigquery = SimpleNamespace(dialect=SimpleNamespace(name="bigquery"))
    assert wh.json_as_text(query, table, None, bigquery) is query


@pytest.mark.slow
def test_the_audit_example_loads_reports_and_rejections_into_the_warehouse_without_duplicates(
    example: Path, tmp_path: Path, emulator: Emulator
):
    audit_example = _load("sync_audit_to_warehouse")
    load_id = run(tmp_path).load_info.loads_ids[-1]
    audit = tmp_path / "audit.duckdb"
    url = f"duckdb:///{audit}"
    pipelines_dir = str(tmp_path / "dlt_pipelines")

    first = audit_example.load_audit("wh_test", url, pipelines_dir=pipelines_dir)
    again = audit_example.load_audit("wh_test", url, pipelines_dir=pipelines_dir)

    assert first == again == (3, 3)
    # through duckdb_engine as dlt's destination connected: DuckDB refuses a second connection
    # of another configuration to the file while the loader's is not yet garbage collected
    engine = sa.create_engine(url)
    with engine.connect() as con:
        rows = con.exec_driver_sql(
            'SELECT "table", reason, field FROM customerio_audit.customerio_rejected_rows'
            ' ORDER BY "table"'
        ).fetchall()
        reports = con.exec_driver_sql(
            'SELECT load_id, "table", rows_in, rejected FROM customerio_audit'
            '.customerio_sync_reports ORDER BY "table"'
        ).fetchall()
    engine.dispose()
    rows, reports = [tuple(r) for r in rows], [tuple(r) for r in reports]
    assert rows == [
        ("orders", "invalid_event_data", "data"),
        ("signups", "invalid_identifier", "email"),
        ("users", "invalid_identifier", "email"),
    ]
    assert reports == [
        (load_id, "orders", 4, 1),
        (load_id, "signups", 4, 1),
        (load_id, "users", 4, 1),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlalchemy", "pyarrow"])
def test_duckdb_json_columns_reach_customerio_as_json(
    backend: str, tmp_path: Path, in_project: Any, emulator: Emulator, monkeypatch
):
    """duckdb_engine reflects DuckDB's JSON type as VARCHAR; the pipeline reads it from
    DuckDB's catalog, so no mapping has to list the column in json_columns."""
    in_project(tmp_path)
    database = tmp_path / "warehouse.duckdb"
    execute(
        database,
        "CREATE SCHEMA crm",
        """CREATE TABLE crm.people (id INTEGER PRIMARY KEY, email VARCHAR, prefs JSON,
           note VARCHAR, updated_at TIMESTAMP)""",
        """INSERT INTO crm.people VALUES
           (1, 'ada@example.com', '{"theme": "dark", "langs": ["en", "fr"]}', '{"a": 1}',
            '2024-06-01 10:00:00'),
           (2, 'grace@example.com', '[1, 2]', NULL, '2024-06-02 10:00:00'),
           (3, 'alan@example.com', '"plain"', NULL, '2024-06-03 10:00:00')""",
        """CREATE TABLE crm.visits (id INTEGER PRIMARY KEY, email VARCHAR, page JSON)""",
        """INSERT INTO crm.visits VALUES (7, 'ada@example.com', '{"path": "/pricing"}')""",
    )
    monkeypatch.setenv("SOURCES__WAREHOUSE__CREDENTIALS", f"duckdb:///{database}")
    monkeypatch.setenv("SOURCES__WAREHOUSE__BACKEND", backend)
    monkeypatch.setenv("SOURCES__WAREHOUSE__SCHEMA", "crm")
    monkeypatch.setenv(
        "SOURCES__WAREHOUSE__TABLES",
        orjson.dumps({"people": {"incremental": "updated_at"}, "visits": {}}).decode(),
    )
    monkeypatch.setenv(
        "DESTINATION__CUSTOMERIO__TABLES",
        orjson.dumps(
            {
                "people": {
                    "action": "identify",
                    "identifier": "email",
                    "identifier_type": "email",
                    "attributes": ["prefs", "note"],
                },
                "visits": {
                    "action": "event",
                    "identifier": "email",
                    "identifier_type": "email",
                    "event_name": "visited",
                },
            }
        ).decode(),
    )

    result = run(tmp_path)

    assert result.rejected == []
    assert people(emulator) == {
        "ada@example.com": {"prefs": {"theme": "dark", "langs": ["en", "fr"]}, "note": '{"a": 1}'},
        "grace@example.com": {"prefs": [1, 2]},
        "alan@example.com": {"prefs": "plain"},
    }
    assert [e["attributes"] for e in emulator.events] == [{"id": 7, "page": {"path": "/pricing"}}]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlalchemy", "pyarrow"])
def test_nan_and_infinity_in_the_warehouse_reject_their_rows_with_either_backend(
    backend: str, tmp_path: Path, in_project: Any, emulator: Emulator, monkeypatch
):
    """The sqlalchemy backend gives dict rows, whose NaN and infinity dlt's writer made null:
    the person went out without the attribute (an event keyed on it collapsed into another)."""
    in_project(tmp_path)
    database = tmp_path / "warehouse.duckdb"
    execute(
        database,
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, email VARCHAR, score DOUBLE)",
        """INSERT INTO readings VALUES (1, 'ada@example.com', 1.5),
           (2, 'grace@example.com', 'NaN'), (3, 'alan@example.com', '-Infinity')""",
    )
    monkeypatch.setenv("SOURCES__WAREHOUSE__CREDENTIALS", f"duckdb:///{database}")
    monkeypatch.setenv("SOURCES__WAREHOUSE__BACKEND", backend)
    monkeypatch.setenv("SOURCES__WAREHOUSE__TABLES", orjson.dumps({"readings": {}}).decode())
    monkeypatch.setenv(
        "DESTINATION__CUSTOMERIO__TABLES",
        orjson.dumps(
            {
                "readings": {
                    "action": "identify",
                    "identifier": "email",
                    "identifier_type": "email",
                    "attributes": ["score"],
                }
            }
        ).decode(),
    )

    result = run(tmp_path)

    assert people(emulator) == {"ada@example.com": {"score": 1.5}}
    assert sorted((r["row_key"], r["reason"], r["field"]) for r in result.rejected) == [
        ("alan@example.com", "invalid_value", "score"),
        ("grace@example.com", "invalid_value", "score"),
    ]


def test_summary_counts_rows_sent_without_a_dropped_attribute_as_sent():
    def record(reason: str, field: str) -> dict[str, Any]:
        return {"table": "users", "load_id": "1", "reason": reason, "field": field}

    result = wh.SyncResult(
        pipeline=SimpleNamespace(pipeline_name="wh"),  # type: ignore[arg-type]
        load_info=SimpleNamespace(loads_ids=["1"]),  # type: ignore[arg-type]
        rows={"users": 3},
        rejected=[
            record("attribute_dropped", "bio"),
            record("attribute_dropped", "bio"),
            record("invalid_identifier", "email"),
        ],
    )

    summary = result.summary().splitlines()

    assert summary[1:] == [
        "  users: 2 sent, 1 rejected",
        "rejected rows: 1",
        "  users: 1 x invalid_identifier (email)",
        "attributes dropped from rows sent without them: 2",
        "  users: 2 x bio (over the 1000-byte value limit)",
        "  inspect them with cio_destination.rejected_rows(pipeline, load_id=...):"
        " each has row_key, reason, field, message and the row",
    ]


def test_the_pipeline_on_runners_that_start_empty_restores_its_cursors_from_state_url(
    example: Path, tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
):
    """Each run in a new, empty pipelines directory: only `state_url` carries the cursors."""
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")

    def fresh_run(directory: str) -> Any:
        return wh.sync("wh_test", pipelines_dir=str(tmp_path / directory), progress="none")

    fresh_run("runner-1")
    mark = len(emulator.requests)
    result = fresh_run("runner-2")

    assert ops_since(emulator, mark) == 0  # the cursors came back: nothing read, nothing sent
    # and the rejected rows of the first runner's load are there for any runner to read
    assert sorted((r["table"], r["row_key"]) for r in rejected_rows(result.pipeline)) == [
        (table, key) for table, key, _, _ in DEMO_REJECTED
    ]


@pytest.mark.slow
def test_a_sync_that_finishes_a_pending_load_first_holds_the_lease_between_its_two_runs(
    example: Path, tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
):
    state_url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__STATE_URL", state_url)
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__API_KEY", "revoked-key")
    with pytest.raises(Exception, match="api_key"):
        run(tmp_path)  # the load fails: its package stays pending
    monkeypatch.setenv("DESTINATION__CUSTOMERIO__API_KEY", API_KEY)
    runs = state_for(tmp_path, "wh_test", (state_url, None, "state_url")).runs
    seen: list[str] = []
    read_warehouse = wh.warehouse

    def warehouse_read_after_the_pending_load(*args: Any, **kwargs: Any) -> Any:
        # the pending load is done, what changed is not read yet: another run must not start
        seen.append(runs.take_lease("another-run", "elsewhere", 1, 120.0).holder)
        return read_warehouse(*args, **kwargs)

    monkeypatch.setattr(wh, "warehouse", warehouse_read_after_the_pending_load)
    result = run(tmp_path)

    assert len(result.resumed_loads) == 1 and len(emulator.people) == len(DEMO_PEOPLE)
    assert seen and "another-run" not in seen
    # the sync gave it back when it ended
    assert runs.take_lease("another-run", "elsewhere", 1, 120.0).holder == "another-run"
