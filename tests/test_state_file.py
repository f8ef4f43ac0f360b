"""The state file: a lost send ledger stops email loads; a corrupt file is named by every feature."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dlt
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from cio_destination import (
    SendLedgerLostError,
    StateFileError,
    customerio,
    customerio_adapter,
    exit_status,
    rejected_rows,
    sync_report,
)
from cio_destination.emulator import Emulator
from cio_destination.state import TABLES, PipelineState, release_state, state_path
from cio_destination.state.backend import sql_store
from cio_destination.state.ledger_guard import SendLedgerGuard

from .conftest import API_KEY, SITE_ID
from .kills import REPO, child_env, kill_after_progress
from .test_sends import receipts, receipts_resource, send_pipeline

pytestmark = pytest.mark.slow  # whole dlt pipelines against the emulator

SETTING = "destination.customerio.accept_new_send_ledger"


def sent_receipts(emulator: Emulator) -> Counter[int]:
    return Counter(d["message_data"]["receipt_id"] for d in emulator.deliveries)


def closed_state_file(pipeline: dlt.Pipeline) -> Path:
    """The pipeline's state file, closed as it is when the next run is another process."""
    release_state(pipeline.working_dir)
    path = state_path(pipeline.working_dir)
    assert path.exists() and not Path(f"{path}-wal").exists()
    return path


@pytest.mark.parametrize("loss", ["emptied", "deleted", "replaced", "restored_older"])
def test_a_lost_send_ledger_stops_the_next_email_load_before_any_send(
    emulator: Emulator, tmp_path: Path, loss: str
):
    pipeline = send_pipeline(tmp_path, emulator.url)
    pipeline.run(receipts_resource(receipts(4)))
    path = closed_state_file(pipeline)
    older = path.read_bytes()
    pipeline.run(receipts_resource(receipts(10)))
    path = closed_state_file(pipeline)
    if loss == "emptied":
        path.write_bytes(b"")
    elif loss == "deleted":
        shutil.rmtree(path.parent)
    elif loss == "replaced":  # the ledger of another pipeline, that sent other emails
        other = send_pipeline(tmp_path, emulator.url, name="other")
        other.run(receipts_resource(receipts(2, start=100)))
        shutil.copyfile(closed_state_file(other), path)
    else:
        path.write_bytes(older)

    before = sent_receipts(emulator)
    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(receipts_resource(receipts(12)))

    message = str(raised.value)
    assert str(path) in message and SETTING in message
    assert sent_receipts(emulator) == before  # not one email, old or new


def test_accept_new_send_ledger_lets_one_run_go_on_and_later_runs_need_nothing(
    emulator: Emulator, tmp_path: Path
):
    pipeline = send_pipeline(tmp_path, emulator.url, name="accepted")
    pipeline.run(receipts_resource(receipts(3)))
    closed_state_file(pipeline).write_bytes(b"")
    with pytest.raises(PipelineStepFailed):
        pipeline.run(receipts_resource(receipts(5)))
    assert sent_receipts(emulator) == {0: 1, 1: 1, 2: 1}

    accepting = send_pipeline(tmp_path, emulator.url, name="accepted", accept_new_send_ledger=True)
    accepting.run()  # the pending package, through the new ledger: the user said so
    assert sent_receipts(emulator) == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1}

    again = send_pipeline(tmp_path, emulator.url, name="accepted")
    again.run(receipts_resource(receipts(6)))  # the new ledger is the one on record now
    assert sent_receipts(emulator) == {0: 2, 1: 2, 2: 2, 3: 1, 4: 1, 5: 1}


def test_a_ledger_deleted_while_a_process_keeps_it_open_stops_the_next_email_load(
    emulator: Emulator, tmp_path: Path
):
    pipeline = send_pipeline(tmp_path, emulator.url, name="open")
    pipeline.run(receipts_resource(receipts(3)))
    path = state_path(pipeline.working_dir)
    shutil.rmtree(path.parent)  # while the store of this process still has the file open

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(receipts_resource(receipts(4)))

    assert str(path) in str(raised.value) and SETTING in str(raised.value)
    assert sent_receipts(emulator) == {0: 1, 1: 1, 2: 1}


class NoCompletedLoads:
    """A pipeline as the guard sees it, before any load of it completed."""

    def list_completed_load_packages(self) -> list[str]:
        return []


class PackageState:
    """A load package's state, and what of it dlt last wrote to disk (`commit`)."""

    def __init__(self, state: dict | None = None) -> None:
        self.state = state if state is not None else {}
        self.on_disk: dict = copy.deepcopy(self.state)

    def commit(self) -> None:
        self.on_disk = copy.deepcopy(self.state)

    def guard(self, *, accept_new: bool = False) -> SendLedgerGuard:
        return SendLedgerGuard(self.state, self.commit, accept_new=accept_new)


def ledger_in(path: Path):
    return PipelineState.in_file(path / "customerio" / "state.sqlite").ledger


def test_a_load_killed_inside_its_first_batch_keeps_its_emails_on_their_ledger(tmp_path: Path):
    package = PackageState()
    ledger = ledger_in(tmp_path / "first")
    package.guard().check(ledger, NoCompletedLoads())
    assert ledger.claim("receipts", "key-1", "1") is None
    ledger.mark_sent("key-1", "d-1")
    # killed here: dlt saves a package's progress (and the guard's record with it) only after
    # a whole batch, so what is on disk is what the guard committed before the first claim

    resumed = PackageState(copy.deepcopy(package.on_disk))
    with pytest.raises(SendLedgerLostError):  # the file was deleted or emptied: a new ledger
        resumed.guard().check(ledger_in(tmp_path / "lost"), NoCompletedLoads())
    resumed.guard().check(ledger, NoCompletedLoads())  # the ledger it sent through is fine


def test_a_ledger_accepted_anew_protects_the_load_that_accepted_it(tmp_path: Path):
    older = PackageState()
    older.guard().check(ledger_in(tmp_path / "older"), NoCompletedLoads())
    package = PackageState(copy.deepcopy(older.on_disk))  # resumed with the file gone
    accepted = ledger_in(tmp_path / "accepted")  # a new, empty file
    package.guard(accept_new=True).check(accepted, NoCompletedLoads())
    assert accepted.claim("receipts", "key-1", "1") is None
    # killed inside the batch; the file is lost once more, and the setting was removed

    resumed = PackageState(copy.deepcopy(package.on_disk))
    with pytest.raises(SendLedgerLostError):
        resumed.guard().check(ledger_in(tmp_path / "lost"), NoCompletedLoads())


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["emptied", "deleted"])
def test_a_new_pipeline_killed_in_its_first_email_batch_does_not_resend_after_losing_its_ledger(
    emulator: Emulator, tmp_path: Path, loss: str
):
    pipelines = tmp_path / "pipelines"
    command = [
        sys.executable,
        "-m",
        "tests.send_child",
        str(pipelines),
        emulator.url,
        "300",  # one batch: dlt saves no progress of it before it ends
        str(tmp_path / "done"),
        "4",
    ]
    assert kill_after_progress(command, lambda: len(emulator.deliveries), step=20)
    path = state_path(pipelines / "killed_sends")
    for file in path.parent.glob(f"{path.name}*"):
        if loss == "emptied":
            file.write_bytes(b"")
        else:
            file.unlink()
    before = sent_receipts(emulator)

    rerun = subprocess.run(
        command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600
    )

    assert rerun.returncode != 0
    assert str(path) in rerun.stderr and SETTING in rerun.stderr
    assert sent_receipts(emulator) == before  # not one email again
    assert max(before.values()) == 1


def people(count: int, **mapping):
    rows = [{"uid": f"u{i}", "plan": "pro", "email": f"p{i}@example.com"} for i in range(count)]
    rows.append({"uid": "", "plan": "free", "email": "nobody@example.com"})  # one rejection
    return customerio_adapter(
        dlt.resource(rows, name="people"), action="identify", identifier="uid", **mapping
    )


def identify_pipeline(tmp_path: Path, url: str, name: str) -> dlt.Pipeline:
    destination = customerio(site_id=SITE_ID, api_key=API_KEY, track_url=url)
    return dlt.pipeline(name, destination=destination, pipelines_dir=str(tmp_path))


CORRUPTIONS = {
    "not_sqlite": lambda path: path.write_bytes(b"not a database at all\n" * 200),
    "truncated_mid_file": lambda path: path.write_bytes(
        path.read_bytes()[: path.stat().st_size // 2]
    ),
}


def corrupt(pipeline: dlt.Pipeline, how: str) -> Path:
    path = closed_state_file(pipeline)
    assert path.stat().st_size > 8_192  # several pages, so a cut lands in the middle
    CORRUPTIONS[how](path)
    return path


def assert_names_the_file(error: BaseException, path: Path) -> None:
    assert str(path) in str(error)
    assert "sqlite3" not in str(error)


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize(
    "mapping",
    [{}, {"changes_only": True}, {"mirror": "delete"}],
    ids=["rejections_and_reports", "fingerprints", "mirror"],
)
def test_a_corrupt_state_file_stops_a_load_naming_the_file(
    emulator: Emulator, tmp_path: Path, how: str, mapping: dict
):
    pipeline = identify_pipeline(tmp_path, emulator.url, "corrupt")
    pipeline.run(people(300, **mapping))
    path = corrupt(pipeline, how)

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(people(300, **mapping))

    assert_names_the_file(raised.value, path)
    assert "StateFileError" in str(raised.value)


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_corrupt_state_file_stops_an_email_load_naming_the_file(
    emulator: Emulator, tmp_path: Path, how: str
):
    pipeline = send_pipeline(tmp_path, emulator.url, name="corrupt_sends")
    pipeline.run(receipts_resource(receipts(200)))
    path = corrupt(pipeline, how)

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(receipts_resource(receipts(201)))

    assert_names_the_file(raised.value, path)
    assert SETTING in str(raised.value)
    assert len(emulator.deliveries) == 200


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_reading_rejections_and_reports_from_a_corrupt_state_file_names_the_file(
    emulator: Emulator, tmp_path: Path, how: str
):
    pipeline = identify_pipeline(tmp_path, emulator.url, "corrupt_reads")
    pipeline.run(people(300))
    path = corrupt(pipeline, how)

    with pytest.raises(StateFileError) as report_error:
        sync_report(pipeline)
    assert_names_the_file(report_error.value, path)
    with pytest.raises(Exception) as rejections_error:
        list(rejected_rows(pipeline))
    assert_names_the_file(rejections_error.value, path)


def test_a_lost_ledger_in_state_url_names_the_key_never_a_file_or_the_url(tmp_path: Path):
    def ledger(name: str):
        url = f"sqlite:///{tmp_path / name}"
        store = sql_store(url, None, TABLES, "destination.customerio.state_url")
        return PipelineState(store, "receipts_sync").ledger

    package = PackageState()
    package.guard().check(ledger("s3cret-first.sqlite"), NoCompletedLoads())
    resumed = PackageState(copy.deepcopy(package.on_disk))
    with pytest.raises(SendLedgerLostError) as raised:  # state_url names another database now
        resumed.guard().check(ledger("s3cret-other.sqlite"), NoCompletedLoads())

    message = str(raised.value)
    assert message.startswith("Customer.io destination state in destination.customerio.state_url:")
    assert "state file" not in message and "Restore those tables" in message
    assert "s3cret" not in message and str(tmp_path) not in message
    code, line = exit_status(raised.value)
    assert code == 2 and line.startswith("state error: Customer.io destination state in ")
