"""The columnar paths and the row path give the same outcome, byte for byte: each entry's bytes
(event ids included), row key and source rows, and each rejection with its reason. Here, the
values they once disagreed on."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pyarrow as pa

from cio_destination.arrow_path import map_identify_batch
from cio_destination.mapping import compile_mapping, parse_mapping
from cio_destination.operations import Mapped, RowMapper, rows_from_arrow

from .conftest import mapped_outcome as outcome

UTC = dt.timezone.utc


def mapper_for(table: str, declared: dict[str, Any], columns: dict[str, dict]) -> RowMapper:
    return RowMapper(compile_mapping(table, parse_mapping(table, declared), columns))


def assert_same(columnar: Mapped, rows: Mapped) -> None:
    assert columnar.rows_in == rows.rows_in
    assert outcome(columnar) == outcome(rows)


# -- what the properties found, pinned -----------------------------------------------------------


def test_the_last_microsecond_of_9999_is_its_last_second_on_both_paths():
    """A float timestamp() rounded 9999-12-31T23:59:59.999999 up to a second past Customer.io's
    range: the row path rejected the row the columnar path sent, with another attribute value."""
    last = 253_402_300_799_999_999
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(["a", "b", None]),
            pa.array([last, last - 5_000_000, last], pa.timestamp("us")),
            pa.array([last, 68_719_476_736_999_993, last], pa.timestamp("us", tz="-05:00")),
        ],
        names=["ident", "at", "seen"],
    )
    declared = {"action": "identify", "identifier": "ident", "timestamp": "at"}
    mapper = mapper_for("people", declared, {"ident": {}, "at": {}, "seen": {}})

    columnar = map_identify_batch(mapper, batch)

    assert_same(columnar, mapper.map_rows(rows_from_arrow(batch, frozenset())))
    assert columnar.block is not None and len(columnar.block) == 2  # None takes the row path
    assert [orjson.loads(e.data)["attributes"]["seen"] for e in columnar.all_entries()] == [
        253_402_300_799,
        68_719_476_736,
    ]
    assert orjson.loads(columnar.all_entries()[0].data)["timestamp"] == 253_402_300_799
