"""How an error reaches the user: one readable line, and the shipped pipelines' exit codes.

0 done (rejections included), 1 failed (run again to resume), 2 a setting or mapping to fix.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dlt
import duckdb
import pytest
from dlt.common.configuration.exceptions import ConfigurationValueError
from dlt.extract.incremental.exceptions import (
    IncrementalCursorInvalidCoercion,
    IncrementalCursorPathMissing,
    IncrementalPrimaryKeyMissing,
)
from dlt.pipeline.exceptions import PipelineStepFailed
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from cio_destination import (
    CredentialsError,
    CustomerioTransientError,
    MappingError,
    customerio_adapter,
    customerio_error,
    exit_status,
    run_command,
)
from cio_destination.emulator import Emulator, Faults

from .conftest import API_KEY, SITE_ID

REPO = Path(__file__).resolve().parent.parent
PIPELINES = REPO / "pipelines"


def people(name: str = "people", **mapping):
    rows = [{"uid": i, "plan": "pro"} for i in range(3)]
    keys = {"action": "identify", "identifier": "uid", **mapping}
    return customerio_adapter(dlt.resource(rows, name=name), **keys)


@pytest.fixture
def dlt_records() -> Iterator[list[str]]:
    """Every record dlt's logger emits, formatted as its handlers would (traceback included)."""
    from dlt.common import logger

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(level=logging.WARNING)
    target = logger.LOGGER or logging.getLogger("dlt")
    target.addHandler(handler)
    yield lines
    target.removeHandler(handler)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- what each error amounts to (no pipeline) ---------------------------------------------------


def failed_at(step: str, error: BaseException) -> PipelineStepFailed:
    pipeline = SimpleNamespace(pipeline_name="p", has_pending_data=True)
    return PipelineStepFailed(pipeline, step, "1.5", error)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (
            MappingError("users", "identifier", "column 'x' is not in the table"),
            2,
            "configuration error: Customer.io mapping of table 'users', key 'identifier'",
        ),
        (
            failed_at("load", CredentialsError("Track API", 401, ("site_id", "api_key"))),
            2,
            "EU host); the load package is kept: run again once fixed",
        ),
        (
            failed_at(
                "sync", ConfigurationValueError("destination.customerio.timeout must be > 0")
            ),
            2,
            "configuration error: destination.customerio.timeout must be > 0",
        ),
        (
            CustomerioTransientError("Customer.io kept failing; the next run resumes it"),
            1,
            "failed: Customer.io kept failing; the next run resumes it",
        ),
        (
            failed_at("extract", RuntimeError("boom\nmore")),
            1,
            "failed at dlt's extract step: RuntimeError: boom",
        ),
        (
            ArgumentError("Could not parse URL from string 'postgresql://u:pa55@h:5432/db'"),
            1,
            "warehouse error: Could not parse URL from string 'postgresql://u:***@h:5432/db'",
        ),
    ],
    ids=["mapping", "credentials-in-load", "config", "transient", "other-step", "warehouse"],
)
def test_exit_status_says_what_to_do_in_one_line(error: BaseException, code: int, line: str):
    found, said = exit_status(error)

    assert found == code
    assert line in said
    assert "\n" not in said
    assert "pa55" not in said


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            IncrementalCursorPathMissing("users", "changed_at", {"email": "jane@example.com"}),
            "configuration error: resource 'users': its rows have no incremental cursor column"
            " 'changed_at'",
        ),
        (
            IncrementalPrimaryKeyMissing("users", "user_id", {"email": "jane@example.com"}),
            "configuration error: resource 'users': its rows have no primary key column 'user_id'",
        ),
        (
            IncrementalCursorInvalidCoercion(
                "users",
                "updated_at",
                "yesterday",
                "initial_value",
                {"email": "jane@example.com", "updated_at": "2024"},
                str,
                "'>' not supported",
            ),
            "configuration error: resource 'users': its incremental initial_value (a str) cannot"
            " be compared with the values of its cursor column 'updated_at'",
        ),
        (
            NoSuchModuleError("Can't load plugin: sqlalchemy.dialects:snowflake"),
            "configuration error: SQLAlchemy Can't load plugin: sqlalchemy.dialects:snowflake:"
            " install the package of that dialect",
        ),
    ],
    ids=["cursor", "primary_key", "initial_value", "dialect"],
)
def test_a_source_setting_dlt_meets_while_reading_is_one_to_fix_and_quotes_no_row(
    error: BaseException, line: str
):
    code, said = exit_status(failed_at("extract", error))

    assert code == 2 and said.startswith(line)
    assert "jane" not in said and "yesterday" not in said and "\n" not in said


def test_an_unexpected_error_has_no_exit_status_and_keeps_its_traceback():
    assert exit_status(ValueError("a bug")) is None
    with pytest.raises(ValueError):
        run_command(lambda: int("a bug"))


def test_dlts_records_of_this_destinations_errors_keep_one_line():
    from cio_destination.failures import _JobErrorRecords

    error = CredentialsError("Track API", 401, ("site_id", "api_key"))
    try:
        raise error
    except CredentialsError:
        with_traceback = logging.LogRecord(
            "dlt", logging.ERROR, "load.py", 1, "Terminal exception in job j1", (), sys.exc_info()
        )
    text = "".join(traceback.format_exception(error))
    collected = logging.LogRecord(
        "dlt",
        logging.ERROR,
        "load.py",
        2,
        f"Job for j1 failed terminally with message {text}",
        (),
        None,
    )
    unrelated = logging.LogRecord(
        "dlt",
        logging.ERROR,
        "load.py",
        3,
        "Job for j2 failed: Traceback (most recent call last):\nValueError: x",
        (),
        None,
    )
    keep = _JobErrorRecords()

    assert all(keep.filter(r) for r in (with_traceback, collected, unrelated))

    formatter = logging.Formatter()
    said = "CredentialsError: Customer.io Track API refused the credentials (HTTP 401)."
    assert formatter.format(with_traceback).startswith(f"Terminal exception in job j1: {said}")
    assert formatter.format(collected).startswith(
        f"Job for j1 failed terminally with message {said}"
    )
    assert "\n" not in formatter.format(with_traceback) + formatter.format(collected)
    assert "ValueError: x" in formatter.format(unrelated)


# -- library users: pipeline.run() -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setup", "expected", "key"),
    [
        ({"api_key": "revoked"}, CredentialsError, "destination.customerio.api_key"),
        (
            {"tables": {"people": {"action": "identify", "identifier": "uid", "bogus_key": 1}}},
            MappingError,
            "key 'bogus_key'",
        ),
        ({"faults": True, "max_attempts": 1}, CustomerioTransientError, "next run resumes it"),
    ],
    ids=["credentials", "mapping", "transient"],
)
def test_the_destination_error_is_found_behind_dlts_wrappers(
    emulator: Emulator, make_pipeline, monkeypatch, setup: dict, expected: type, key: str
):
    monkeypatch.setenv("LOAD__RAISE_ON_MAX_RETRIES", "1")
    setup = dict(setup)
    if setup.pop("faults", False):
        emulator.set_faults(Faults(error_rate=1.0))
    pipeline = make_pipeline(**setup)

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(people())

    error = customerio_error(raised.value)
    assert type(error) is expected
    assert key in str(error)
    assert "\n" not in str(error)
    assert customerio_error(ValueError("unrelated")) is None


@pytest.mark.slow
def test_the_mirror_guard_is_a_mapping_to_fix(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    rows = [{"uid": f"u{i}", "plan": "pro"} for i in range(20)]

    def members(count: int):
        resource = dlt.resource(rows[:count], name="members")
        return customerio_adapter(resource, action="identify", identifier="uid", mirror="delete")

    pipeline.run(members(20))
    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(members(10))  # half the table gone: a broken source

    assert isinstance(customerio_error(raised.value), MappingError)
    code, line = exit_status(raised.value)
    assert code == 2
    assert "key 'max_removed_fraction'" in line and "\n" not in line


@pytest.mark.slow
def test_dlt_logs_each_failed_job_in_one_line_without_a_traceback(
    emulator: Emulator, make_pipeline, dlt_records: list[str]
):
    """dlt logged every failed job twice with its traceback (once doubled), three tables of
    one load: the same sentence six times in tracebacks. Now one line per record."""
    pipeline = make_pipeline(api_key="revoked")

    with pytest.raises(PipelineStepFailed):
        pipeline.run([people("a"), people("b"), people("c")])

    about = [line for line in dlt_records if "CredentialsError" in line]
    assert len(about) == 6  # dlt's two records per failed job: kept, one line each
    assert all("\n" not in line and "Traceback" not in line for line in about)
    assert all("refused the credentials" in line for line in about)
    assert not [line for line in dlt_records if "Traceback" in line]


@pytest.mark.slow
def test_each_failed_job_records_its_own_traceback_once(emulator: Emulator, make_pipeline):
    """A load's preflight error is raised again for every later job of the load: raising the
    same object again piled each raise's traceback onto it, so every job's failure message
    (the one in PipelineStepFailed too) held the error three times for three tables."""
    pipeline = make_pipeline(api_key="revoked")

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run([people("a"), people("b"), people("c")])

    jobs = pipeline.get_load_package_info(raised.value.load_id).jobs["new_jobs"]
    messages = [job.failed_message for job in jobs]
    assert len(messages) == 3
    assert [m.count("Traceback (most recent call last)") for m in messages] == [1, 1, 1]
    assert [m.count("in begin_load") for m in messages] == [1, 1, 1]


# -- the shipped pipelines, as a user runs them --------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Iterator[Path]:
    """pipelines/ laid out as the README says, with the demo warehouse, against the emulator."""
    sys.path.insert(0, str(PIPELINES))
    try:
        import demo
    finally:
        sys.path.remove(str(PIPELINES))
    project = tmp_path / "pipelines"
    (project / ".dlt").mkdir(parents=True)
    shutil.copy(PIPELINES / ".dlt" / "config.toml", project / ".dlt" / "config.toml")
    shutil.copy(PIPELINES / ".dlt" / "secrets.toml.example", project / ".dlt" / "secrets.toml")
    demo.build_warehouse(tmp_path / "demo_data" / "warehouse.duckdb")
    yield project


def run_script(
    script: str, project: Path, emulator: Emulator, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DLT_DATA_DIR": str(project.parent / "dlt_data"),
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "DESTINATION__CUSTOMERIO__TRACK_URL": emulator.url,
        "DESTINATION__CUSTOMERIO__SITE_ID": SITE_ID,
        "DESTINATION__CUSTOMERIO__API_KEY": API_KEY,
        **env,
    }
    return subprocess.run(
        [sys.executable, str(PIPELINES / script), *args],
        cwd=project,
        env={k: v for k, v in environment.items() if v != "<unset>"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    """The run ended with `code` and said why in one line, the last on stderr, with no traceback.

    A setting to fix (2) is that line alone. A failure a rerun resumes (1) may follow dlt's own
    warning that the package was not fully loaded.
    """
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    if code == 2:
        assert len(lines) == 1, result.stderr
    else:
        assert all("|dlt|" in line for line in lines[:-1]), result.stderr
    for part in parts:
        assert part in lines[-1]


def unmapped_users(project: Path) -> None:
    config = project / ".dlt" / "config.toml"
    text = config.read_text()
    mapped = '[destination.customerio.tables.users]\naction = "identify"\nidentifier = "email"'
    assert mapped in text
    config.write_text(text.replace(mapped, mapped + '\nno_such_key = "email"'))


@pytest.mark.slow
def test_sync_exits_2_with_one_line_for_credentials_customerio_refuses(
    project: Path, emulator: Emulator
):
    result = run_script(
        "warehouse_to_customerio.py",
        project,
        emulator,
        "--progress",
        "none",
        DESTINATION__CUSTOMERIO__API_KEY="revoked-key",
    )

    assert_one_line(result, 2, "configuration error:", "destination.customerio.api_key")
    assert "revoked-key" not in result.stderr + result.stdout
    assert "the load package is kept" in result.stderr


@pytest.mark.slow
def test_sync_exits_2_with_one_line_for_a_mapping_error_inside_the_load(
    project: Path, emulator: Emulator
):
    unmapped_users(project)

    result = run_script("warehouse_to_customerio.py", project, emulator, "--progress", "none")

    assert_one_line(
        result, 2, "configuration error:", "table 'users', key 'no_such_key'", "not a mapping key"
    )
    assert [r for r in emulator.requests if r.path == "/api/v2/batch"] == []


@pytest.mark.slow
def test_sync_exits_2_with_one_line_for_a_missing_secret(project: Path, emulator: Emulator):
    secrets = project / ".dlt" / "secrets.toml"
    secrets.write_text(secrets.read_text().replace('api_key = "demo-key"', ""))

    result = run_script(
        "warehouse_to_customerio.py",
        project,
        emulator,
        "--progress",
        "none",
        DESTINATION__CUSTOMERIO__API_KEY="<unset>",
    )

    assert_one_line(
        result,
        2,
        "configuration error: destination.customerio.api_key is not set",
        "DESTINATION__CUSTOMERIO__API_KEY",
    )


@pytest.mark.slow
def test_sync_exits_2_with_one_line_naming_the_url_customerio_cannot_be_reached_at(
    project: Path, emulator: Emulator
):
    url = f"http://127.0.0.1:{closed_port()}"

    result = run_script(
        "warehouse_to_customerio.py",
        project,
        emulator,
        "--progress",
        "none",
        DESTINATION__CUSTOMERIO__TRACK_URL=url,
    )

    assert_one_line(result, 2, "configuration error:", url, "destination.customerio.track_url")


@pytest.mark.slow
def test_sync_exits_2_with_one_line_naming_a_state_file_it_cannot_use(
    project: Path, emulator: Emulator
):
    first = run_script("warehouse_to_customerio.py", project, emulator, "--progress", "none")
    assert first.returncode == 0, first.stderr
    state = project.parent / "dlt_data" / "pipelines" / "warehouse_to_customerio" / "customerio"
    (state / "state.sqlite").write_bytes(b"not a database" * 100)
    for leftover in state.glob("state.sqlite-*"):
        leftover.unlink()
    with duckdb.connect(str(project.parent / "demo_data" / "warehouse.duckdb")) as con:
        con.execute("UPDATE users SET updated_at = '2024-07-01 08:00:00+00' WHERE id = 2")

    result = run_script("warehouse_to_customerio.py", project, emulator, "--progress", "none")

    assert_one_line(result, 2, "state file error:", str(state / "state.sqlite"))


@pytest.mark.slow
def test_sync_exits_1_with_one_line_when_customerio_keeps_failing_then_resumes(
    project: Path, emulator: Emulator
):
    emulator.set_faults(Faults(error_rate=1.0))
    result = run_script(
        "warehouse_to_customerio.py",
        project,
        emulator,
        "--progress",
        "none",
        DESTINATION__CUSTOMERIO__MAX_ATTEMPTS="1",
        LOAD__RAISE_ON_MAX_RETRIES="1",
    )

    assert_one_line(result, 1, "failed:", "the next run resumes it")
    emulator.set_faults(None)
    again = run_script("warehouse_to_customerio.py", project, emulator, "--progress", "none")
    assert again.returncode == 0, again.stderr
    assert "left pending by an earlier run" in again.stdout
    assert len(emulator.people) == 3


@pytest.mark.slow
def test_sync_exits_1_with_one_line_when_the_warehouse_is_down(project: Path, emulator: Emulator):
    url = f"postgresql://loader:s3cret-pw@127.0.0.1:{closed_port()}/analytics"

    result = run_script(
        "warehouse_to_customerio.py",
        project,
        emulator,
        "--progress",
        "none",
        SOURCES__WAREHOUSE__CREDENTIALS=url,
    )

    assert_one_line(result, 1, "warehouse error:")
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert emulator.requests == []


@pytest.mark.slow
def test_sync_exits_0_when_done_with_rejections(project: Path, emulator: Emulator):
    result = run_script("warehouse_to_customerio.py", project, emulator, "--progress", "none")

    assert result.returncode == 0, result.stderr
    assert "rejected rows: 3" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
def test_the_demo_exits_2_for_a_setting_and_1_when_customerio_keeps_failing(
    project: Path, emulator: Emulator
):
    remote = run_script("demo.py", project, emulator, "--emulator-url", "http://example.com")
    assert_one_line(remote, 2, "configuration error:", "destination.customerio.track_url")

    emulator.set_faults(Faults(error_rate=1.0))
    failing = run_script(
        "demo.py",
        project,
        emulator,
        "--emulator-url",
        emulator.url,
        "--workdir",
        str(project.parent / "demo_work"),
        DESTINATION__CUSTOMERIO__MAX_ATTEMPTS="1",
        LOAD__RAISE_ON_MAX_RETRIES="1",
    )
    assert_one_line(failing, 1, "failed:")


@pytest.mark.slow
def test_the_audit_loader_exits_2_for_an_unknown_pipeline_and_1_for_a_down_warehouse(
    project: Path, emulator: Emulator
):
    # its earlier name runs it too
    unknown = run_script("rejected_rows_to_warehouse.py", project, emulator, "--pipeline-name", "x")
    assert_one_line(unknown, 2, "configuration error:", "`pipeline_name=x`")

    synced = run_script("warehouse_to_customerio.py", project, emulator, "--progress", "none")
    assert synced.returncode == 0, synced.stderr
    url = f"postgresql://loader:s3cret-pw@127.0.0.1:{closed_port()}/analytics"
    down = run_script("sync_audit_to_warehouse.py", project, emulator, "--destination-url", url)
    assert down.returncode == 1, down.stderr
    assert_one_line(down, 1, "failed")
    assert "s3cret-pw" not in down.stderr + down.stdout
