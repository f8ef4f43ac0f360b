"""The shipped pipelines' default progress: quiet on short syncs, useful on long ones.

The collectors run on a fake clock: what they print depends on the seconds a step took, which
the tests set, never on the machine's speed."""

from __future__ import annotations

import io
from pathlib import Path

import dlt
import pytest
from dlt.common.runtime.collector import LogCollector

from cio_destination import customerio, customerio_adapter
from cio_destination.emulator import Emulator
from cio_destination.progress import LOG_PERIOD, PeriodicLog, TerminalBar, sync_progress

from .conftest import API_KEY, SITE_ID


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_step(collector, clock: Clock, seconds: list[float], step: str = "Load") -> None:
    """A step whose counters move at each of `seconds` after its start."""
    start = clock.now
    with collector(step):
        for at in seconds:
            clock.now = start + at
            collector.update("Jobs", inc=1, total=len(seconds))
            collector.update("Items", inc=500)


def test_a_short_step_prints_nothing_in_a_log():
    clock, out = Clock(), io.StringIO()
    collector = PeriodicLog(logger=out, clock=clock)

    run_step(collector, clock, [0.1, 1.0, LOG_PERIOD - 1], "Extract")
    run_step(collector, clock, [0.5, 2.0], "Load")

    assert out.getvalue() == ""


def test_a_long_step_prints_its_counters_every_period_and_at_its_end():
    clock, out = Clock(), io.StringIO()
    collector = PeriodicLog(logger=out, clock=clock)

    run_step(collector, clock, [1, 10, LOG_PERIOD + 1, LOG_PERIOD + 5, 2 * LOG_PERIOD + 2, 70])

    text = out.getvalue()
    blocks = text.count(" Load ".center(80, "-"))
    assert blocks == 3  # at 31 s, at 62 s, and the step's end
    assert "Jobs: 6/6 (100.0%)" in text  # the last block holds the final counters
    assert "Items: 3000" in text
    assert "Memory usage" not in text


def test_on_a_terminal_one_line_is_redrawn_in_place_and_erased_at_the_end():
    clock, terminal = Clock(), Terminal()
    collector = TerminalBar(terminal, clock=clock)

    run_step(collector, clock, [0.0, 0.1, 1.0, 2.0])

    text = terminal.getvalue()
    assert "\n" not in text  # never a new line: the same line is redrawn
    draws = text.split("\r")[1:-1]
    assert len(draws) == 2  # at 1 s and 2 s; redraws are at most every quarter second
    # drawn at the first counter that moved past the period: Items as it was before its update
    assert draws[-1] == "Load | Jobs 4/4 [####################] 100% | Items 1500\x1b[K"
    assert draws[0].startswith("Load | Jobs 3/4 [###############.....] 75%")
    assert text.endswith("\r\x1b[K")  # erased when the step ends


def test_auto_picks_the_bar_on_a_terminal_and_the_periodic_log_elsewhere():
    assert isinstance(sync_progress("auto", Terminal()), TerminalBar)
    periodic = sync_progress("auto", io.StringIO())
    assert isinstance(periodic, PeriodicLog) and not isinstance(periodic, TerminalBar)
    assert sync_progress("none") is None
    assert isinstance(sync_progress("log"), LogCollector)
    assert sync_progress("tqdm") == "tqdm"
    with pytest.raises(ValueError, match="progress must be one of"):
        sync_progress("loud")


@pytest.mark.slow
def test_a_short_sync_with_the_default_progress_prints_nothing_of_dlts(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
):
    people = customerio_adapter(
        dlt.resource([{"uid": f"u-{i}"} for i in range(5)], name="people"),
        action="identify",
        identifier="uid",
    )

    def sync(progress: str) -> str:
        pipeline = dlt.pipeline(
            f"progress_{progress}",
            destination=customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url),
            pipelines_dir=str(tmp_path),
            dev_mode=True,
            progress=sync_progress(progress),
        )
        pipeline.run(people)
        captured = capsys.readouterr()
        return captured.out + captured.err

    assert sync("auto") == ""
    assert sync("log").count("\n") >= 20  # what `--progress log` (the old default) writes
