"""What each call of the destination costs beyond its rows: the per-call look-ups are made once
per load, not once per call."""

from __future__ import annotations

import dlt
import pyarrow as pa
import pytest

from cio_destination import customerio_adapter
from cio_destination.destination import BATCH_ROWS
from cio_destination.emulator import Emulator


@pytest.mark.slow
def test_the_pipeline_is_looked_up_once_per_load_not_per_call(
    emulator: Emulator, make_pipeline, monkeypatch
) -> None:
    """`dlt.current.pipeline()` makes the pipeline anew on a loader thread (its config resolved
    again, milliseconds a call): a load of three calls looks it up once."""
    looked_up = []
    original = dlt.current.pipeline

    def counted() -> dlt.Pipeline:
        looked_up.append(1)
        return original()

    monkeypatch.setattr(dlt.current, "pipeline", counted)
    rows = 2 * BATCH_ROWS + 5
    table = pa.table({"uid": [f"u{i}" for i in range(rows)], "plan": ["pro"] * rows})
    users = customerio_adapter(
        dlt.resource([table], name="users"), action="identify", identifier="uid"
    )
    pipeline = make_pipeline()
    pipeline.run(users)
    assert len(emulator.people) == rows
    assert looked_up == [1]
