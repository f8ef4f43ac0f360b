"""The benchmark leaves no server behind: its sink exits with the process that started it, and a
benchmark stopped by SIGTERM runs its `with` blocks' exits (which stop a throwaway PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .kills import wait_for

REPO = Path(__file__).resolve().parents[1]

PARENT = textwrap.dedent(
    """
    import contextlib, sys
    from tests.benchmarks.sink import SinkProcess, terminate_as_exit

    @contextlib.contextmanager
    def server():
        try:
            yield
        finally:
            print("stopped", flush=True)

    terminate_as_exit()
    with server(), SinkProcess("bench-site", "bench-key") as sink:
        print(sink.process.pid, flush=True)
        sys.stdin.read()
    """
)


def _parent() -> tuple[subprocess.Popen[str], int]:
    """A process that starts the sink, prints its pid and waits."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a child of a dead parent is reaped by init; until then it is a zombie, which is gone too
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.slow
def test_the_sink_exits_when_the_benchmark_is_killed() -> None:
    parent, sink = _parent()
    try:
        assert _alive(sink)
        parent.kill()
        parent.wait()
        wait_for(lambda: not _alive(sink))
    finally:
        if _alive(sink):
            os.kill(sink, signal.SIGKILL)


@pytest.mark.slow
def test_a_benchmark_stopped_by_sigterm_stops_what_it_started() -> None:
    parent, sink = _parent()
    try:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        assert parent.stdout is not None
        assert parent.stdout.read().split() == ["stopped"]
        wait_for(lambda: not _alive(sink))
    finally:
        if _alive(sink):
            os.kill(sink, signal.SIGKILL)
