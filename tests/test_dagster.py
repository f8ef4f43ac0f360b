"""The warehouse sync under Dagster (pipelines/dagster_definitions.py, extra `[dagster]`): the
multiprocess executor materializes one asset per table of the real PostgreSQL test warehouse,
each in its own process from an empty working directory, with `state_url` in PostgreSQL and one
rate budget in Redis, configured by the environment alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cio_destination.emulator import Emulator

from . import test_postgres, test_shared_rate
from .kills import REPO, child_env
from .test_postgres import EVENTS, PEOPLE, Warehouse, events, people

# the fixtures this test uses, from the modules that define them
postgres_url = test_postgres.postgres_url
warehouse = test_postgres.warehouse
redis_url = test_shared_rate.redis_url
site_id = test_shared_rate.site_id
workspace = test_shared_rate.workspace

pytestmark = pytest.mark.slow  # Dagster's processes, PostgreSQL and Redis

DEFINITIONS = REPO / "pipelines" / "dagster_definitions.py"
SOURCE_TABLES = {
    "people": {"incremental": "updated_at"},
    "purchases": {"incremental": "updated_at"},
    "members": {"table": "people"},  # read in full every run, mirrored
    "welcome": {"table": "people"},  # read in full every run, each person emailed once
}
MAPPINGS = {
    "people": {"action": "identify", "identifier": "id", "timestamp": "updated_at"},
    "purchases": {
        "action": "event",
        "identifier": "person_id",
        "event_name": "purchase",
        "event_data_column": "data",
        "timestamp": "created_at",
    },
    "members": {
        "action": "identify",
        "identifier": "id",
        "attributes": ["plan"],
        "changes_only": True,
        "mirror": "delete",
    },
    "welcome": {
        "action": "send_email",
        "identifier": "id",
        "transactional_message_id": "welcome",
        "to": "email",
        "event_id": "id",
        "attributes": [],
    },
}


def materialize(tmp_path: Path, environment: dict[str, str]) -> None:
    """`dagster job execute` of the whole sync, from an empty working directory and an empty
    `DLT_DATA_DIR`: whatever it needs of the last materialization comes from `state_url`."""
    runner = tmp_path / uuid.uuid4().hex
    cwd, data_dir = runner / "run", runner / "dlt"
    cwd.mkdir(parents=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "execute",
            "-f",
            str(DEFINITIONS),
            "-j",
            "warehouse_sync",
        ],
        cwd=cwd,
        env={**child_env(), **environment, "DLT_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    log = done.stdout + done.stderr
    assert "multiprocess executor" in log  # each asset's step in a process of its own
    assert all(f'Executing step "{table}" in subprocess' in log for table in SOURCE_TABLES)
    # each asset's pipeline had a working directory of its own in the empty DLT_DATA_DIR
    assert {p.name for p in (data_dir / "pipelines").iterdir()} == {
        f"warehouse_to_customerio_{table}" for table in SOURCE_TABLES
    }


@pytest.fixture
def state_schema(warehouse: Warehouse) -> Iterator[str]:
    """The test's own schema for `state_url`'s tables, dropped afterwards."""
    schema = f"{warehouse.schema}_state"
    try:
        yield schema
    finally:
        with warehouse.engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_dagster_materializes_each_table_in_its_own_process(
    warehouse: Warehouse,
    state_schema: str,
    workspace: Emulator,
    site_id: str,
    redis_url: str,
    tmp_path: Path,
):
    if not test_postgres.IN_CI:  # CI installs `.[dev]`, which has it: there it must run
        pytest.importorskip("dagster_dlt", reason="pip install -e '.[dagster]'")
    home = tmp_path / "dagster_home"
    home.mkdir()
    environment = {
        "DAGSTER_HOME": str(home),  # the multiprocess executor needs a persistent instance
        "SOURCES__WAREHOUSE__CREDENTIALS": warehouse.url,
        "SOURCES__WAREHOUSE__SCHEMA": warehouse.schema,
        "SOURCES__WAREHOUSE__TABLES": json.dumps(SOURCE_TABLES),
        "DESTINATION__CUSTOMERIO__TABLES": json.dumps(MAPPINGS),
        "DESTINATION__CUSTOMERIO__SITE_ID": site_id,
        "DESTINATION__CUSTOMERIO__API_KEY": workspace.api_key,
        "DESTINATION__CUSTOMERIO__TRACK_URL": workspace.url,
        "DESTINATION__CUSTOMERIO__APP_API_KEY": workspace.app_api_key,
        "DESTINATION__CUSTOMERIO__APP_URL": workspace.url,
        "DESTINATION__CUSTOMERIO__STATE_URL": warehouse.url,
        "DESTINATION__CUSTOMERIO__STATE_SCHEMA": state_schema,
        "DESTINATION__CUSTOMERIO__RATE_LIMIT_URL": redis_url,
        "DESTINATION__CUSTOMERIO__REQUESTS_PER_SECOND": "20",
    }
    assert "DAGSTER_HOME" not in os.environ or os.environ["DAGSTER_HOME"] != str(home)

    materialize(tmp_path, environment)

    assert people(workspace) == PEOPLE  # members' plans are the people's own
    assert events(workspace) == EVENTS
    assert workspace.duplicate_events == 0
    assert sorted(d["to"] for d in workspace.deliveries) == sorted(
        p["email"] for p in PEOPLE.values()
    )
    sent = [r for r in workspace.requests if r.path in ("/api/v2/batch", "/v1/send/email")]
    assert sent and all(r.status == 200 for r in sent)

    mark = len(workspace.requests)
    materialize(tmp_path, environment)

    # cursors, fingerprints, the mirror's snapshot and the send ledger all came back from
    # state_url into the empty working directories: nothing new
    assert [r.path for r in workspace.requests[mark:] if r.method == "POST"] == []
    assert len(workspace.deliveries) == len(PEOPLE)
