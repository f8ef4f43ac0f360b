"""The dlt state (incremental cursors) of the last completed load, kept in `state_url` and
brought back on runners that start empty (a SQLite URL here; PostgreSQL in test_state_url.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dlt
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from cio_destination import (
    StateFileError,
    customerio,
    customerio_adapter,
    restore_state,
    run_lease,
)
from cio_destination.emulator import Emulator, Faults

from .conftest import API_KEY, SITE_ID

pytestmark = pytest.mark.slow  # whole dlt pipelines against the emulator


def orders(count: int) -> Any:
    @dlt.resource(name="orders")
    def rows(
        cursor: Any = dlt.sources.incremental("id"),  # noqa: B008 - dlt's idiom
    ) -> Iterator[dict[str, Any]]:
        for i in range(count):
            yield {"id": i, "person": f"p{i % 7}", "amount": i}

    return customerio_adapter(rows, action="event", identifier="person", event_name="buy")


def runner(tmp_path: Path, emulator: Emulator, **settings: Any) -> dlt.Pipeline:
    """The pipeline on a runner whose working directory starts empty."""
    destination = customerio(
        site_id=SITE_ID,
        api_key=API_KEY,
        track_url=emulator.url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        **settings,
    )
    pipelines_dir = str(tmp_path / uuid.uuid4().hex)
    return dlt.pipeline("restored", destination=destination, pipelines_dir=pipelines_dir)


def sent_ops(emulator: Emulator, since: int) -> int:
    return sum(r.ops for r in emulator.requests[since:] if r.path.endswith("/batch"))


def test_restore_state_brings_back_the_cursors_of_the_last_completed_load(
    tmp_path: Path, emulator: Emulator
):
    first = runner(tmp_path, emulator)
    assert restore_state(first) is False  # nothing saved yet
    first.run(orders(20))

    second = runner(tmp_path, emulator)
    assert restore_state(second) is True
    mark = len(emulator.requests)
    second.run(orders(25))

    assert sent_ops(emulator, mark) == 5  # only the rows past the restored cursor
    assert restore_state(second) is False  # its own state is as new as the one saved


def test_a_run_without_restore_state_is_restored_before_its_extract(
    tmp_path: Path, emulator: Emulator
):
    """dlt's Airflow helper runs the pipeline itself: the state comes back all the same."""
    runner(tmp_path, emulator).run(orders(20))
    mark = len(emulator.requests)

    runner(tmp_path, emulator).run(orders(22))

    assert sent_ops(emulator, mark) == 2


def test_a_load_that_did_not_complete_leaves_the_old_cursors(tmp_path: Path, emulator: Emulator):
    runner(tmp_path, emulator).run(orders(10))
    failing = runner(tmp_path, emulator, max_attempts=1)
    emulator.set_faults(Faults(error_rate=1.0))
    with pytest.raises(PipelineStepFailed):
        failing.run(orders(30))  # its cursor moved to 29 locally, and its runner dies
    emulator.set_faults(None)
    mark = len(emulator.requests)

    later = runner(tmp_path, emulator)
    assert restore_state(later) is True
    later.run(orders(30))

    # the rows after the last completed load's cursor are read and sent again (idempotently)
    assert sent_ops(emulator, mark) == 20
    assert emulator.duplicate_events == 0  # the failed run delivered none of them


def test_a_dry_run_saves_no_state_and_takes_no_lease(tmp_path: Path, emulator: Emulator):
    from cio_destination import dry_run

    runner(tmp_path, emulator).run(orders(10))
    report = dry_run(runner(tmp_path, emulator), orders(15))
    assert report.tables[0].operations == 5  # restored before its extract too
    mark = len(emulator.requests)

    runner(tmp_path, emulator).run(orders(15))

    assert sent_ops(emulator, mark) == 5  # the dry run's cursors were not saved


def test_a_run_whose_lease_was_taken_over_sends_nothing_more_and_saves_no_state(
    tmp_path: Path, emulator: Emulator
):
    from cio_destination import LeaseLostError, customerio_error
    from cio_destination.loads import pipeline_state

    runner(tmp_path, emulator).run(orders(10))
    pipeline = runner(tmp_path, emulator)
    with run_lease(pipeline):  # held across the three steps
        pipeline.extract(orders(15))
        pipeline.normalize()
        state = pipeline_state(pipeline, pipeline.destination.configuration(None))  # type: ignore[union-attr]
        # another run found this one's heartbeat too old and took the lease over
        with state.store.transaction() as tx:
            tx.execute("UPDATE {cio_leases} SET heartbeat_at = 0")
        assert state.runs.take_lease("other", "host-b", 2, 120).holder == "other"
        mark = len(emulator.requests)

        with pytest.raises(PipelineStepFailed) as failed:
            pipeline.load()

    assert isinstance(customerio_error(failed.value), LeaseLostError)
    assert sent_ops(emulator, mark) == 0
    assert pipeline.list_normalized_load_packages()  # kept: nothing of it is lost
    state.runs.release("other")
    later = runner(tmp_path, emulator)
    later.run(orders(15))
    assert sent_ops(emulator, mark) == 5  # the cursors saved are the last completed load's


def test_a_dlt_without_the_state_install_stops_the_restore_with_one_line_naming_it(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
):
    """The restore commits the state through a dlt call that is not public (dlt issue 1233): a
    dlt release without it names the versions instead of failing deep inside."""
    runner(tmp_path, emulator).run(orders(3))
    monkeypatch.delattr(dlt.Pipeline, "_install_state_and_schemas")

    with pytest.raises(StateFileError) as raised:
        restore_state(runner(tmp_path, emulator))

    message = str(raised.value)
    assert f"dlt {dlt.__version__}" in message and "state_url" in message
    assert "\n" not in message
