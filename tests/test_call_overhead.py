"""What each call of the destination costs beyond its rows: the per-call look-ups are made once
per load, not once per call."""

from __future__ import annotations

import dlt
import pyarrow as pa
import pytest

from cio_destination import customerio_adapter
from cio_destination.emulator import Emulator


@pytest.mark.slow
def test_the_pipeline_is_looked_up_once_per_load_not_per_call(
    emulator: Emulator, make_pipeline, monkeypatch
) -> None:
    """`dlt.current.pipeline()` makes the pipeline anew on a loader thread (its config resolved
    again, milliseconds a call): a load of three jobs (three calls) looks it up once."""
    looked_up = []
    original = dlt.current.pipeline

    def counted() -> dlt.Pipeline:
        looked_up.append(1)
        return original()

    monkeypatch.setattr(dlt.current, "pipeline", counted)
    rows = 100
    tables = [f"users_{n}" for n in range(3)]  # one call of the destination per load job
    resources = [
        customerio_adapter(
            dlt.resource(
                [pa.table({"uid": [f"{name}-{i}" for i in range(rows)], "plan": ["pro"] * rows})],
                name=name,
            ),
            action="identify",
            identifier="uid",
        )
        for name in tables
    ]
    pipeline = make_pipeline()
    pipeline.run(resources)
    assert len(emulator.people) == 3 * rows
    assert looked_up == [1]
