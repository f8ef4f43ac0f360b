"""changes_only: send only the attributes that changed since Customer.io last accepted them."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import dlt
import httpx
import orjson
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed
from pytest_httpx import HTTPXMock

from cio_destination import (
    CustomerioTerminalError,
    CustomerioTransientError,
    customerio,
    customerio_adapter,
    dry_run,
    exit_status,
    sync_report,
)
from cio_destination.emulator import Emulator
from cio_destination.state import TABLES, PipelineState
from cio_destination.state.backend import SqlStore

from .conftest import API_KEY, SITE_ID, small_units, with_region

pytestmark = pytest.mark.slow  # whole dlt pipelines against the emulator


def capture_batches(httpx_mock: HTTPXMock) -> list[dict[str, Any]]:
    """Answer every batch request 200 and collect its operations (the list returned)."""
    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.extend(orjson.loads(request.content)["batch"])
        return httpx.Response(200, json={})

    httpx_mock.add_callback(with_region(answer), is_reusable=True)
    return sent


def identify(person: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """The identify operation Customer.io receives for `person` with these attributes."""
    return {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": person},
        "attributes": attributes,
    }


def assert_sent_one_of_three(
    sent: list[dict[str, Any]], pipeline: Any, person: str, attributes: dict[str, Any]
) -> None:
    """Of the three rows of the last run, only `person` was sent, with only `attributes`."""
    assert sent == [identify(person, attributes)]
    report = sync_report(pipeline).tables[0]
    assert (report.rows_in, report.skipped, report.operations) == (3, 2, 1)


def people(rows: list[dict]):
    return customerio_adapter(
        dlt.resource(rows, name="people"), action="identify", identifier="uid", changes_only=True
    )


ROWS = [
    {"uid": 1, "plan": "pro", "city": "Oslo", "score": 10},
    {"uid": 2, "plan": "free", "city": "Lima", "score": 20},
    {"uid": 3, "plan": "team", "city": "Pune", "score": 30},
]


def batch_ops(emulator: Emulator, since: int = 0) -> int:
    return sum(r.ops for r in emulator.requests[since:] if r.path == "/api/v2/batch")


def test_unchanged_rows_send_nothing_and_changes_send_only_what_changed(
    emulator: Emulator, make_pipeline
):
    pipeline = make_pipeline()
    pipeline.run(people(ROWS))
    assert batch_ops(emulator) == 3

    mark = len(emulator.requests)
    pipeline.run(people(ROWS))
    assert batch_ops(emulator, mark) == 0
    assert sync_report(pipeline).tables[0].skipped == 3

    changed = [
        {"uid": 1, "plan": "team", "city": "Oslo", "score": 10},  # plan changed
        {"uid": 2, "plan": "free", "score": 20},  # city became empty
        {"uid": 3, "plan": "team", "city": "Pune", "score": 30},  # unchanged
    ]
    mark = len(emulator.requests)
    pipeline.run(people(changed))

    assert batch_ops(emulator, mark) == 2
    found = {p["identifiers"]["id"]: p["attributes"] for p in emulator.people}
    assert found == {
        "1": {"plan": "team", "city": "Oslo", "score": 10},
        "2": {"plan": "free", "score": 20},
        "3": {"plan": "team", "city": "Pune", "score": 30},
    }


def test_exact_bodies_carry_only_changed_attributes(httpx_mock: HTTPXMock, tmp_path: Path):
    sent = capture_batches(httpx_mock)
    pipeline = dlt.pipeline(
        "exact",
        destination=customerio(site_id="s", api_key="k"),
        pipelines_dir=str(tmp_path),
    )
    pipeline.run(people(ROWS))
    sent.clear()

    pipeline.run(people([{"uid": 1, "plan": "pro", "score": 11}, *ROWS[1:]]))

    assert sent == [identify("1", {"score": 11, "city": ""})]


def test_a_rejected_send_records_no_fingerprint(httpx_mock: HTTPXMock, tmp_path: Path):
    refuse = {"2"}
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        batch = orjson.loads(request.content)["batch"]
        sent.extend(op["identifiers"]["id"] for op in batch)
        errors = [
            {"batch_index": i, "reason": "invalid", "field": "attributes"}
            for i, op in enumerate(batch)
            if op["identifiers"]["id"] in refuse
        ]
        return httpx.Response(207 if errors else 200, json={"errors": errors})

    httpx_mock.add_callback(with_region(answer), is_reusable=True)
    pipeline = dlt.pipeline(
        "refused", destination=customerio(site_id="s", api_key="k"), pipelines_dir=str(tmp_path)
    )
    pipeline.run(people(ROWS))
    sent.clear()
    refuse.clear()

    pipeline.run(people(ROWS))

    assert sent == ["2"]  # only the row Customer.io refused is sent again, in full


def test_fingerprints_in_a_sql_store_survive_a_wiped_working_directory(
    emulator: Emulator, tmp_path: Path
):
    url = f"sqlite:///{tmp_path / 'fingerprints.db'}"

    def pipeline(workdir: str) -> dlt.Pipeline:
        destination = customerio(
            site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url, fingerprints_url=url
        )
        return dlt.pipeline("wiped", destination=destination, pipelines_dir=str(tmp_path / workdir))

    pipeline("first").run(people(ROWS))
    assert batch_ops(emulator) == 3
    mark = len(emulator.requests)

    pipeline("second").run(people(ROWS))  # a new runner: no local state at all

    assert batch_ops(emulator, mark) == 0


def refuse_inserts(path: Path) -> None:
    """Make the fingerprints database refuse every new row, as a full disk would."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON cio_fingerprints"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )


def test_a_failing_fingerprints_database_names_the_key_and_no_value(tmp_path: Path):
    path = tmp_path / "fingerprints.db"
    key = "destination.customerio.fingerprints_url"
    store = PipelineState(SqlStore(f"sqlite:///{path}", None, TABLES, key), "p").fingerprints
    refuse_inserts(path)

    with pytest.raises(CustomerioTransientError) as raised:
        store.remember("p/people", {"jane.doe@example.com": {"r": 1, "a": {"plan": 2}}})

    message = str(raised.value)
    assert "destination.customerio.fingerprints_url" in message
    assert "sqlite3.IntegrityError" in message
    assert "jane.doe" not in message and "INSERT" not in message and "full" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.parametrize(
    "url",
    ["nosuchdialect://loader:Pw-Qz81@db.example/x", "mysql://loader:Pw-Qz81@db.example/x", "db"],
    ids=["unknown_dialect", "driver_not_installed", "not_a_url"],
)
def test_a_fingerprints_url_sqlalchemy_cannot_use_is_a_setting_to_fix(url: str):
    with pytest.raises(CustomerioTerminalError) as raised:
        SqlStore(url, None, TABLES, "destination.customerio.fingerprints_url")

    assert "destination.customerio.fingerprints_url cannot be used" in str(raised.value)
    assert "Pw-Qz81" not in str(raised.value)
    assert exit_status(raised.value)[0] == 2


@pytest.mark.slow
def test_a_fingerprints_database_failing_in_a_load_is_named_without_any_identifier(
    emulator: Emulator, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog, monkeypatch
):
    monkeypatch.setenv("LOAD__RAISE_ON_MAX_RETRIES", "1")  # fail at once, not after dlt's retries
    path = tmp_path / "fingerprints.db"

    def run(plan: str) -> None:
        rows = [{"uid": "jane.doe@example.com", "plan": plan}]
        destination = customerio(
            site_id=SITE_ID,
            api_key=API_KEY,
            track_url=emulator.url,
            fingerprints_url=f"sqlite:///{path}",
        )
        pipeline = dlt.pipeline("fp_fails", destination=destination, pipelines_dir=str(tmp_path))
        pipeline.run(people(rows))

    run("pro")
    refuse_inserts(path)
    with caplog.at_level(logging.DEBUG), pytest.raises(PipelineStepFailed) as raised:
        run("enterprise")

    code, line = exit_status(raised.value)
    assert code == 1
    assert line.startswith("failed: the state database of")
    assert "destination.customerio.fingerprints_url" in line and "warehouse" not in line
    assert "jane.doe" not in str(raised.value)
    output = capfd.readouterr()
    assert "jane.doe" not in output.out + output.err + caplog.text


def test_a_dry_run_reads_the_fingerprints_of_fingerprints_url(emulator: Emulator, tmp_path: Path):
    """The dry run's copy of the destination had lost `fingerprints_url`: it read the local
    state, found no fingerprint and reported every unchanged row as one to send."""
    destination = customerio(
        site_id=SITE_ID,
        api_key=API_KEY,
        track_url=emulator.url,
        fingerprints_url=f"sqlite:///{tmp_path / 'fingerprints.db'}",
    )
    pipeline = dlt.pipeline("dry_url", destination=destination, pipelines_dir=str(tmp_path))
    pipeline.run(people(ROWS))
    mark = len(emulator.requests)

    report = dry_run(pipeline, people(ROWS)).tables[0]

    assert (report.operations, report.skipped) == (0, 3)
    assert emulator.requests[mark:] == []


def test_a_dry_run_records_no_fingerprint(emulator: Emulator, tmp_path: Path):
    def pipeline(**options) -> dlt.Pipeline:
        destination = customerio(
            site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url, **options
        )
        return dlt.pipeline("dry", destination=destination, pipelines_dir=str(tmp_path))

    pipeline(dry_run=True).run(people(ROWS))
    assert sync_report(pipeline()).tables[0].operations == 3  # it would send all three
    pipeline().run(people(ROWS))

    assert batch_ops(emulator) == 3  # so the real run still sends all three


def people_rows(count: int) -> list[dict]:
    return [{"uid": i, "plan": "pro", "score": i} for i in range(count)]


def synced_people(
    httpx_mock: HTTPXMock, tmp_path: Path, name: str, answer: Any
) -> tuple[dlt.Pipeline, list[dict]]:
    """A pipeline whose requests `answer` takes, after its first sync of 300 people."""
    httpx_mock.add_callback(with_region(answer), is_reusable=True)
    pipeline = dlt.pipeline(
        name, destination=customerio(site_id="s", api_key="k"), pipelines_dir=str(tmp_path)
    )
    rows = people_rows(300)
    pipeline.run(arrow_people(rows))
    return pipeline, rows


def arrow_people(rows: list[dict]):
    import pyarrow as pa

    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("uid", pa.int64()),
                ("plan", pa.string()),
                ("city", pa.string()),
                ("score", pa.int64()),
            ]
        ),
    )
    return customerio_adapter(
        dlt.resource([table], name="people"),
        action="identify",
        identifier="uid",
        changes_only=True,
    )


def test_arrow_rows_that_did_not_change_are_skipped_before_mapping(
    httpx_mock: HTTPXMock, tmp_path: Path
):
    sent = capture_batches(httpx_mock)
    pipeline = dlt.pipeline(
        "arrow_changes",
        destination=customerio(site_id="s", api_key="k"),
        pipelines_dir=str(tmp_path),
    )
    pipeline.run(arrow_people(ROWS))
    assert len(sent) == 3
    sent.clear()

    pipeline.run(arrow_people(ROWS))
    assert sent == []
    report = sync_report(pipeline).tables[0]
    assert (report.rows_in, report.skipped, report.operations) == (3, 3, 0)

    pipeline.run(arrow_people([ROWS[0], {"uid": 2, "plan": "free", "score": 20}, ROWS[2]]))

    assert_sent_one_of_three(sent, pipeline, "2", {"city": ""})


def test_repeated_identifiers_in_an_arrow_batch_keep_row_order(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    pipeline.run(arrow_people(ROWS))

    pipeline.run(arrow_people([{"uid": 1, "plan": "team", "city": "Oslo", "score": 10}, ROWS[0]]))

    # the later row wins, as if the rows were sent one by one: back to "pro"
    assert emulator.find_person(id="1")["attributes"]["plan"] == "pro"


def arrow_table_people(table):
    return customerio_adapter(
        dlt.resource([table], name="people"),
        action="identify",
        identifier="uid",
        changes_only=True,
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # a value holding the bytes that once separated the columns
        (
            {"uid": 1, "plan": "x\x1f\x01y", "city": "z", "note": "n"},
            {"uid": 1, "plan": "x", "city": "y\x1f\x01z", "note": "n"},
        ),
        # a value holding the bytes that once marked a null
        (
            {"uid": 1, "plan": "a", "city": None, "note": "b\x1f\x01c"},
            {"uid": 1, "plan": "a\x1f\x00", "city": "b", "note": "c"},
        ),
    ],
    ids=["separator-in-values", "null-marker-in-values"],
)
def test_a_changed_person_whose_source_text_once_hashed_alike_is_sent(
    emulator: Emulator, make_pipeline, before: dict, after: dict
):
    """Two rows of one person whose values, joined as text, once read the same: the second
    run skipped the changed person before mapping and Customer.io kept the old values."""
    import pyarrow as pa

    schema = pa.schema([("uid", pa.int64()), *((c, pa.string()) for c in ("plan", "city", "note"))])
    pipeline = make_pipeline()
    pipeline.run(arrow_table_people(pa.Table.from_pylist([before], schema=schema)))
    mark = len(emulator.requests)

    pipeline.run(arrow_table_people(pa.Table.from_pylist([after], schema=schema)))

    assert batch_ops(emulator, mark) == 1
    expected = {k: v for k, v in after.items() if k != "uid" and v is not None}
    assert emulator.find_person(id="1")["attributes"] == expected


def _old_source_hash(row: dict) -> int:
    """The source hash as versions before the length-framed encoding stored it."""
    import hashlib

    text = "\x1f".join("\x00" if row[c] is None else "\x01" + str(row[c]) for c in row)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _blake2b_source_hash(row: dict) -> int:
    """The source hash as versions before XXH3 stored it (`cio-source-row-2`): blake2b-64 of
    every value framed by its length, salted with the mapping and the columns' layout."""
    import hashlib

    settings = [
        {"action": "identify", "changes_only": True, "identifier": "uid"},
        [],
        [["uid", "int64"], ["plan", "text"], ["city", "text"], ["score", "int64"]],
    ]
    salt = hashlib.blake2b(orjson.dumps(settings), digest_size=16).digest()
    text = "".join("-" if v is None else f"{len(str(v).encode())}:{v}" for v in row.values())
    digest = hashlib.blake2b(
        text.encode(), digest_size=8, salt=salt, person=b"cio-source-row-2"
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _xxh3_joined_source_hash(row: dict) -> int:
    """The source hash as versions before the column-wise hash stored it (`cio-source-row-3`):
    XXH3-64 of the row's texts back to back, then behind a comma each the byte length of each
    text and the text of each other value, seeded with the mapping and the columns' layout."""
    import hashlib

    import xxhash

    settings = [
        {"action": "identify", "changes_only": True, "identifier": "uid"},
        [],
        [["plan", "text"], ["city", "text"], ["uid", "int64"], ["score", "int64"]],
    ]
    texts = [row["plan"], row["city"]]
    listed = [str(len(t.encode())) for t in texts] + [str(row["uid"]), str(row["score"])]
    seed = hashlib.blake2b(orjson.dumps(settings), digest_size=8, person=b"cio-source-row-3")
    digest = xxhash.xxh3_64_digest(
        ("".join(texts) + "," + ",".join(listed)).encode(), int.from_bytes(seed.digest(), "big")
    )
    return int.from_bytes(digest, "big", signed=True)


def _column_wise_source_hash(row: dict) -> int:
    """The source hash as versions before the cheaper taking in of words stored it
    (`cio-source-row-4`): XXH3-64 of the row's texts back to back, then per column in order a
    64-bit word (a text's length, a number's bits) and one word of which numbers have a value,
    each XORed in and mixed by splitmix64's finalizer."""
    import hashlib

    import xxhash

    settings = [
        {"action": "identify", "changes_only": True, "identifier": "uid"},
        [],
        [["uid", "int64"], ["plan", "text"], ["city", "text"], ["score", "int64"]],
    ]
    seed = hashlib.blake2b(orjson.dumps(settings), digest_size=8, person=b"cio-source-row-4")
    h = xxhash.xxh3_64_intdigest(
        (row["plan"] + row["city"]).encode(), int.from_bytes(seed.digest())
    )
    words = [row["uid"], len(row["plan"].encode()), len(row["city"].encode()), row["score"], 0b11]
    for word in words:
        h ^= word
        h ^= h >> 30
        h = h * 0xBF58476D1CE4E5B9 % 2**64
        h ^= h >> 27
        h = h * 0x94D049BB133111EB % 2**64
        h ^= h >> 31
    return h - 2**64 if h >= 2**63 else h


@pytest.mark.parametrize(
    "older",
    [_old_source_hash, _blake2b_source_hash, _xxh3_joined_source_hash, _column_wise_source_hash],
    ids=["unframed", "blake2b-framed", "xxh3-joined", "column-wise"],
)
def test_source_hashes_stored_by_an_older_version_resend_nobody(
    emulator: Emulator, make_pipeline, older
):
    """After an upgrade the stored source hashes no longer match: the rows are mapped again,
    the whole-operation hash finds them unchanged, nothing is sent, and the new source hashes
    are stored, so the run after skips the rows before mapping again."""
    from cio_destination.state import state_for

    pipeline = make_pipeline()
    pipeline.run(arrow_people(ROWS))
    state = state_for(pipeline.working_dir, pipeline.pipeline_name)
    store, scope = state.fingerprints, f"{pipeline.pipeline_name}/people"
    identifiers = [str(row["uid"]) for row in ROWS]
    current = store.source_hashes_of(scope, identifiers)
    assert not {older(row) for row in ROWS} & set(current.values())
    stored = store.fingerprints_of(scope, identifiers)
    store.remember(
        scope,
        {
            str(row["uid"]): {
                "r": stored[str(row["uid"])]["r"],
                "a": stored[str(row["uid"])].get("a"),
                "s": older(row),
            }
            for row in ROWS
        },
    )
    mark = len(emulator.requests)

    pipeline.run(arrow_people(ROWS))

    assert batch_ops(emulator, mark) == 0
    report = sync_report(pipeline).tables[0]
    assert (report.rows_in, report.skipped, report.operations) == (3, 3, 0)
    assert store.source_hashes_of(scope, identifiers) == current


def _blake2b_operation_hash(operation: dict) -> int:
    """The whole-operation hash as versions before XXH3 stored it: blake2b-64 of its bytes."""
    import hashlib

    digest = hashlib.blake2b(orjson.dumps(operation), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "dicts"])
def test_fingerprints_with_an_older_versions_operation_hash_resend_nobody(
    httpx_mock: HTTPXMock, tmp_path: Path, arrow: bool
):
    """Fingerprints kept with the blake2b operation hash of earlier versions: after the upgrade
    it matches no operation, so each person's attributes are compared one by one. A person
    unchanged is sent nothing, a person with one attribute changed only that attribute, and the
    hashes are refreshed. The Arrow rows' source hashes are made stale as well, so each row is
    mapped and its operation hash consulted (as after an upgrade of both)."""
    from cio_destination.state import state_for

    sent = capture_batches(httpx_mock)
    pipeline = dlt.pipeline(
        "upgraded", destination=customerio(site_id="s", api_key="k"), pipelines_dir=str(tmp_path)
    )
    make = arrow_people if arrow else people
    pipeline.run(make(ROWS))
    operations = {op["identifiers"]["id"]: op for op in sent}
    store = state_for(pipeline.working_dir, pipeline.pipeline_name).fingerprints
    scope = f"{pipeline.pipeline_name}/people"
    current = store.fingerprints_of(scope, list(operations))
    older = {i: _blake2b_operation_hash(op) for i, op in operations.items()}
    assert len(older) == 3 and all(current[i]["r"] != older[i] for i in older)
    stale = 1 if arrow else None
    store.remember(scope, {i: {"r": older[i], "a": current[i].get("a"), "s": stale} for i in older})
    sent.clear()

    pipeline.run(make([{**ROWS[0], "plan": "team"}, *ROWS[1:]]))

    assert_sent_one_of_three(sent, pipeline, "1", {"plan": "team"})
    refreshed = store.fingerprints_of(scope, ["2", "3"])
    assert {i: f["r"] for i, f in refreshed.items()} == {i: current[i]["r"] for i in ("2", "3")}


@pytest.fixture
def units_of_100(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """dlt batches of 50 rows and units of 50 (100 for a table that packs within its units);
    the rows of each unit read, in order."""
    return small_units(monkeypatch, 50, 100)


def test_a_first_sync_sends_a_unit_while_the_units_before_it_wait_for_their_answers(
    httpx_mock: HTTPXMock, tmp_path: Path, units_of_100: list[int]
):
    """A first sync compares with no fingerprint, so its units need not wait for each other's
    answers: each request is held until two are in flight, which only units sent while the
    one before waits for its answers reach (a unit is one request). Its units are of the size
    of a table that packs within them but the first (one dlt batch: the others wait for it),
    and the fingerprints of every unit are kept: the run after sends nothing."""
    from .in_flight import InFlight

    in_flight = InFlight(2)
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        with in_flight.request():
            sent.extend(op["identifiers"]["id"] for op in orjson.loads(request.content)["batch"])
            return httpx.Response(200, json={})

    pipeline, rows = synced_people(httpx_mock, tmp_path, "first", answer)

    assert in_flight.filled
    assert units_of_100 == [50, 100, 100, 50]  # the first unit: one dlt batch
    assert sorted(sent, key=int) == [str(i) for i in range(300)]
    sent.clear()
    pipeline.run(arrow_people(rows))
    assert sent == []


def test_a_resync_hashes_a_unit_while_the_unit_before_it_waits_for_its_answers(
    httpx_mock: HTTPXMock,
    tmp_path: Path,
    units_of_100: list[int],
    monkeypatch: pytest.MonkeyPatch,
):
    """A re-sync's unit is diffed only once the units before it are answered, but its rows'
    source hashes depend on no answer: they are made ahead. Each request is held until the
    next unit's rows are hashed (observed, never timed: a job that hashes a unit only once the
    one before is answered never gets there, and the test fails on the count); the changed
    person of each unit is sent all the same, and only they are."""
    import threading

    from cio_destination import diff

    hashed = threading.Condition()
    calls: list[int] = []
    overlapped: list[bool] = []
    source_row_hashes = diff.source_row_hashes

    def counted(mapper, batch):
        found = source_row_hashes(mapper, batch)
        with hashed:
            calls.append(batch.num_rows)
            hashed.notify_all()
        return found

    sent: list[str] = []
    holding: list[bool] = []

    def answer(request: httpx.Request) -> httpx.Response:
        batch = orjson.loads(request.content)["batch"]
        sent.extend(op["identifiers"]["id"] for op in batch)
        unit = len(sent)  # on the re-sync, one person a unit: the unit's place
        if holding and unit < 3:  # until the next unit's rows are hashed
            with hashed:
                overlapped.append(hashed.wait_for(lambda: len(calls) > unit, 60.0))
        return httpx.Response(200, json={})

    pipeline, rows = synced_people(httpx_mock, tmp_path, "resync", answer)
    assert len(sent) == 300
    monkeypatch.setattr(diff, "source_row_hashes", counted)
    sent.clear()
    holding.append(True)
    changed = [{**row, "plan": "team"} if row["uid"] % 100 == 7 else row for row in rows]

    pipeline.run(arrow_people(changed))

    assert units_of_100 == [50, 100, 100, 50] * 2  # the same units each load
    assert sent == ["7", "107", "207"]
    assert overlapped == [True, True]  # the last unit has no next one


def test_a_resync_reads_the_kept_hashes_while_its_first_unit_is_read(
    emulator: Emulator, make_pipeline, units_of_100: list[int], monkeypatch: pytest.MonkeyPatch
):
    """The kept hashes a re-sync compares with start being read when its job starts, not once
    its first unit is read and hashed: the first unit is held until the read has begun
    (observed, never timed: a job that reads them only for its first unit never gets there,
    and the test fails on the flag). The re-sync sends the changed person alone."""
    import threading

    from cio_destination import jobs
    from cio_destination.state.fingerprints import StoredFingerprints

    pipeline = make_pipeline()
    rows = people_rows(300)
    pipeline.run(arrow_people(rows))
    reading = threading.Event()
    read_copy = StoredFingerprints.read_copy

    def observed(self: StoredFingerprints, scope: str, most: int):
        reading.set()
        return read_copy(self, scope, most)

    units = jobs.JobFile.units
    waited: list[bool] = []

    def first_waits(self: jobs.JobFile, rows: int, **options: Any):
        for at, unit in enumerate(units(self, rows, **options)):
            if at == 0:
                waited.append(reading.wait(60.0))
            yield unit

    monkeypatch.setattr(StoredFingerprints, "read_copy", observed)
    monkeypatch.setattr(jobs.JobFile, "units", first_waits)
    mark = len(emulator.requests)

    pipeline.run(arrow_people([{**rows[0], "plan": "team"}, *rows[1:]]))

    assert waited == [True]
    assert batch_ops(emulator, mark) == 1
    assert emulator.find_person(id="0")["attributes"]["plan"] == "team"


def test_a_person_in_two_units_of_a_first_sync_keeps_the_later_units_fingerprint(
    emulator: Emulator, make_pipeline, units_of_100: list[int]
):
    """On a first sync a person in two units is sent in full twice, in the table's order, and
    the fingerprint kept is that of their later row."""
    pipeline = make_pipeline()
    stale = [{"uid": i, "plan": "stale"} for i in range(100)]
    final = [{"uid": i, "plan": "final"} for i in range(100)]

    pipeline.run(arrow_people(stale + final))

    assert units_of_100 == [50, 100, 50]
    assert {p["identifiers"]["id"]: p["attributes"]["plan"] for p in emulator.people} == {
        str(i): "final" for i in range(100)
    }
    mark = len(emulator.requests)
    pipeline.run(arrow_people(final))
    assert batch_ops(emulator, mark) == 0
    pipeline.run(arrow_people(stale))
    assert batch_ops(emulator, mark) == 100


def test_a_person_whose_only_change_is_in_a_variant_column_is_sent(
    emulator: Emulator, make_pipeline
):
    """dlt keeps a value that does not fit its column's type in a variant column (`age▶v_text`
    beside a bigint `age`): Arrow rows that bring it are read as the row path reads them (the
    value back in its column), and a change there alone is a change (not skipped as unchanged)."""
    import pyarrow as pa

    variant = "age\u25b6v_text"
    pipeline = make_pipeline()
    pipeline.run(  # dict rows: dlt makes the variant column for the text that is no bigint
        customerio_adapter(
            dlt.resource([{"uid": 1, "age": 5}, {"uid": 2, "age": "unknown"}], name="people"),
            action="identify",
            identifier="uid",
            changes_only=True,
        )
    )
    assert pipeline.default_schema.get_table("people")["columns"][variant].get("variant")

    def arrow_run(texts: list[str | None]) -> int:
        table = pa.table(
            {
                "uid": pa.array([1, 2], pa.int64()),
                "age": pa.array([5, None], pa.int64()),
                variant: pa.array(texts, pa.string()),
            }
        )
        mark = len(emulator.requests)
        pipeline.run(arrow_table_people(table))
        return batch_ops(emulator, mark)

    arrow_run([None, "unknown"])
    assert arrow_run([None, "unknown"]) == 0  # nothing changed: nothing sent

    assert arrow_run([None, "ninety"]) == 1

    assert emulator.find_person(id="2")["attributes"] == {"age": "ninety"}
    assert emulator.find_person(id="1")["attributes"] == {"age": 5}
    report = sync_report(pipeline).tables[0]
    assert (report.rows_in, report.skipped, report.operations) == (2, 1, 1)
