"""Progress of a sync that stays quiet on short syncs and helps on long ones.

dlt's `progress="log"` writes a block of counters when each step (extract, normalize, load)
starts, every second, and when it ends: about 50 lines for a sync of a few rows. The shipped
pipelines default to `sync_progress("auto")` instead:

* on a terminal, `TerminalBar`: one line on stderr, redrawn in place (a bar where dlt knows the
  total), erased when the step ends, so nothing is left behind;
* elsewhere (a scheduler's log), `PeriodicLog`: nothing until a step has run `log_period`
  seconds, then dlt's block of counters every `log_period` seconds and once more when that step
  ends. A sync shorter than that prints only its own summary.

Both count what dlt counts (rows, files, jobs), never a value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

import dlt
from dlt.common.runtime.collector import LogCollector

__all__ = ["PROGRESS", "PeriodicLog", "TerminalBar", "sync_progress"]

PROGRESS = ("auto", "log", "tqdm", "enlighten", "alive_progress", "none")
"""The names `sync_progress` takes (the shipped pipelines' `--progress`)."""
LOG_PERIOD = 30.0
"""Seconds between two blocks of `PeriodicLog` (and before its first)."""
BAR_PERIOD = 0.25
"""Seconds between two redraws of `TerminalBar`."""
BAR_WIDTH = 20


class PeriodicLog(LogCollector):
    """dlt's log collector, silent until a step has run `log_period` seconds.

    Then it writes dlt's block of counters every `log_period` seconds, and once more when the
    step ends; a step that ended sooner wrote nothing. `clock` (monotonic seconds) is for tests.
    """

    def __init__(
        self,
        log_period: float = LOG_PERIOD,
        logger: TextIO | str = "stdout",
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(log_period=log_period, logger=logger, dump_system_stats=False)
        if clock is not None:
            self._clock = clock
        self._reported = False

    def _start(self, step: str) -> None:
        super()._start(step)
        self.last_log_time = self._clock()  # the first block after a whole period, not at once
        self._reported = False

    def on_log(self) -> None:
        self._reported = True
        super().on_log()

    def _stop(self) -> None:
        if self._reported:
            super()._stop()  # the step's last counters close what was reported
            return
        self.counters = None
        self.counter_info = None
        self.messages = None
        self.last_log_time = None


class TerminalBar(PeriodicLog):
    """One line on a terminal, redrawn in place every `BAR_PERIOD` seconds and erased when the
    step ends: the step, then each counter (`load: jobs 3/8 [#######.....] 38% | items 12000`)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] | None = None) -> None:
        super().__init__(log_period=BAR_PERIOD, logger=stream, clock=clock)
        self._stream = stream
        self._drawn = False

    def dump_counters(self) -> None:
        parts = [str(self.step)]
        for key, count in self.counters.items():
            total = self.counter_info[key].total
            name = self.counter_info[key].description
            if total:
                done = min(count / total, 1.0)
                bar = "#" * round(done * BAR_WIDTH)
                parts.append(f"{name} {count}/{total} [{bar:.<{BAR_WIDTH}}] {done:.0%}")
            else:
                parts.append(f"{name} {count}")
        self._stream.write("\r" + " | ".join(parts) + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def _stop(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False
        self._reported = False  # the line is erased: nothing to close
        super()._stop()


def sync_progress(progress: str = "auto", stream: TextIO | None = None) -> Any:
    """The `progress=` of `dlt.pipeline` for one of `PROGRESS`.

    `auto`: a `TerminalBar` on `stream` (default stderr) when it is a terminal, else a
    `PeriodicLog` on stdout. `log`: dlt's own log (every second, without system stats).
    `tqdm`, `enlighten`, `alive_progress`: dlt's bars (each needs its package). `none`: None.
    """
    if progress not in PROGRESS:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS)}")
    if progress == "none":
        return None
    if progress == "log":
        return dlt.progress.log(dump_system_stats=False)
    if progress == "auto":
        stream = sys.stderr if stream is None else stream
        return TerminalBar(stream) if stream.isatty() else PeriodicLog()
    return progress
