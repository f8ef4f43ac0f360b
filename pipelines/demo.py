"""Demo: sync a small DuckDB warehouse into the local Customer.io emulator, twice.

    python pipelines/demo.py                      # embedded defaults: DuckDB + emulator
    python pipelines/demo.py --backend pyarrow    # the same through Arrow
    python pipelines/demo.py --emulator-url http://127.0.0.1:8089   # a running emulator

It builds `users` and `orders` tables (orders carry a JSON data column), syncs users as people
(`identify`) and orders as custom events (`event`) through dlt's `sql_table`, prints what the
emulator now holds and which rows were rejected and why, then runs the full sync again to show
that a re-sync creates no duplicate event.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import dlt
import duckdb
import httpx
from dlt.sources.sql_database import sql_table

from cio_destination import (
    customerio,
    customerio_adapter,
    rejected_rows,
    restore_state,
    run_command,
    sync_report,
)
from cio_destination.emulator import Emulator
from cio_destination.progress import PROGRESS, sync_progress

SITE_ID, API_KEY = "demo-site", "demo-key"

USERS = [
    # id, email, first_name, plan, lifetime_value, created_at, updated_at
    (
        1,
        "ada@example.com",
        "Ada",
        "pro",
        "1250.50",
        "2024-01-03 09:00:00+00",
        "2024-06-01 10:00:00+00",
    ),
    (
        2,
        "grace@example.com",
        "Grace",
        "free",
        "0.00",
        "2024-02-11 12:30:00+01",
        "2024-06-02 11:00:00+00",
    ),
    (
        3,
        "alan@example.com",
        "Alan",
        None,
        "89.90",
        "2024-03-05 08:15:00-05",
        "2024-06-03 12:00:00+00",
    ),
    (
        4,
        "not-an-email",
        "Edsger",
        "pro",
        "10.00",
        "2024-04-01 00:00:00+00",
        "2024-06-04 13:00:00+00",
    ),
]
ORDERS = [
    # order_id, user_email, total, created_at, data (JSON)
    (101, "ada@example.com", "49.00", "2024-06-01 10:05:00+00", '{"sku": "BOOK-1", "qty": 1}'),
    (102, "ada@example.com", "15.50", "2024-06-02 16:40:00+02", '{"sku": "PEN-9", "qty": 3}'),
    (
        103,
        "grace@example.com",
        "120.00",
        "2024-06-03 09:00:00+00",
        '{"sku": "LAMP-2", "gift": true}',
    ),
    (104, "alan@example.com", "8.25", "2024-06-04 18:20:00-04", '["not", "an", "object"]'),
]


def build_warehouse(path: Path) -> str:
    """Create (or re-create) the demo DuckDB warehouse and return its SQLAlchemy URL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute(
            """CREATE OR REPLACE TABLE users (
                id INTEGER PRIMARY KEY, email VARCHAR, first_name VARCHAR, plan VARCHAR,
                lifetime_value DECIMAL(12, 2), created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ)"""
        )
        con.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)", USERS)
        con.execute(
            """CREATE OR REPLACE TABLE orders (
                order_id INTEGER PRIMARY KEY, user_email VARCHAR, total DECIMAL(10, 2),
                created_at TIMESTAMPTZ, data JSON)"""
        )
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", ORDERS)
    return f"duckdb:///{path}"


def resources(warehouse_url: str, backend: str) -> list[Any]:
    users = sql_table(
        credentials=warehouse_url,
        table="users",
        backend=backend,
        incremental=dlt.sources.incremental("updated_at"),
    )
    customerio_adapter(
        users,
        action="identify",
        identifier="email",
        identifier_type="email",
        timestamp="updated_at",
    )
    orders = sql_table(credentials=warehouse_url, table="orders", backend=backend)
    customerio_adapter(
        orders,
        action="event",
        identifier="user_email",
        identifier_type="email",
        event_name="purchase_completed",
        event_id="order_id",
        event_data_column="data",
        timestamp="created_at",
    )
    return [users, orders]


def emulator_state(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_emulator/state", timeout=10).json()


def report(title: str, state: dict[str, Any], pipeline: dlt.Pipeline, load_id: str) -> None:
    print(f"\n== {title}")
    print(f"people in Customer.io (emulator): {len(state['people'])}")
    for person in state["people"]:
        identifiers = person["identifiers"]
        print(f"  {identifiers.get('email') or identifiers}: {sorted(person['attributes'])}")
    print(
        f"events in Customer.io (emulator): {len(state['events'])}, duplicates ignored:"
        f" {state['duplicate_events']}"
    )
    for event in state["events"]:
        print(f"  {event['name']} id={event['id']} data={sorted(event['attributes'])}")
    print(sync_report(pipeline, load_id))
    rejected = list(rejected_rows(pipeline, load_id=load_id))
    print(f"rejected rows in this load: {len(rejected)}")
    for item in rejected:
        print(
            f"  {item['table']} row {item['row_key']}: {item['reason']} ({item['field']}):"
            f" {item['message']}"
        )


def run(emulator_url: str, backend: str, workdir: Path, progress: str = "auto") -> int:
    warehouse_url = build_warehouse(workdir / "warehouse.duckdb")
    destination = customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator_url)
    pipeline = dlt.pipeline(
        "customerio_demo",
        destination=destination,
        pipelines_dir=str(workdir / "pipelines"),
        dataset_name="demo",
        progress=sync_progress(progress),
    )
    restore_state(pipeline)  # nothing without state_url; see warehouse_to_customerio.py
    info = pipeline.run(resources(warehouse_url, backend))
    first = emulator_state(emulator_url)
    report("first run", first, pipeline, info.loads_ids[-1])

    # A full re-sync of the same rows: incremental state dropped, every row extracted and sent again.
    info = pipeline.run(resources(warehouse_url, backend), refresh="drop_sources")
    second = emulator_state(emulator_url)
    report("second run (full re-sync of the same rows)", second, pipeline, info.loads_ids[-1])

    if len(second["events"]) != len(first["events"]):
        print("\nFAILED: the re-sync created duplicate events", file=sys.stderr)
        return 1
    print(
        f"\nOK: the re-sync sent the events again and Customer.io kept {len(second['events'])}"
        " events, no duplicates."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlalchemy", "pyarrow"], default="sqlalchemy")
    parser.add_argument("--emulator-url", help="use a running emulator instead of starting one")
    parser.add_argument("--workdir", type=Path, help="where the warehouse and pipeline state go")
    parser.add_argument(
        "--progress",
        choices=PROGRESS,
        default="auto",
        help="progress output (default: auto, quiet on a run as short as the demo)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="duckdb_engine")

    def demo() -> int:
        with tempfile.TemporaryDirectory(prefix="cio-demo-") as scratch:
            workdir = args.workdir or Path(scratch)
            if args.emulator_url:
                return run(args.emulator_url.rstrip("/"), args.backend, workdir, args.progress)
            with Emulator(site_id=SITE_ID, api_key=API_KEY) as emulator:
                print(f"Customer.io emulator on {emulator.url}")
                return run(emulator.url, args.backend, workdir, args.progress)

    # 0 done, 1 failed (or the re-sync duplicated an event), 2 a setting to fix: one line
    return run_command(demo)


if __name__ == "__main__":
    sys.exit(main())
