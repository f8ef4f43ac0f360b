"""SIGKILL a child run at a point of observed progress, never after a delay.

A kill after a fixed delay lands anywhere on a loaded machine (before the first request, or after
the last one); a kill after the emulator has seen N more requests lands in the middle of a load
however fast or slow the machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# only a hung child trips this: kills never depend on it
_HUNG = 600.0


def child_env() -> dict[str, str]:
    return {**os.environ, "RUNTIME__LOG_LEVEL": "ERROR"}


def kill_after_progress(command: Sequence[str], progress: Callable[[], int], step: int) -> bool:
    """Run `command`; SIGKILL it as soon as `progress()` has grown by `step` since it started.

    Returns True when it was killed, False when it ended on its own first.
    """
    start = progress()
    child = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + _HUNG
    try:
        while child.poll() is None:
            if progress() - start >= step:
                child.send_signal(signal.SIGKILL)
                child.wait()
                return True
            if time.monotonic() > deadline:
                raise AssertionError(f"{command[2]} did not reach its kill point in {_HUNG:.0f} s")
            time.sleep(0.002)  # how often progress is looked at, not when the kill fires
        return False
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def run_to_completion(command: Sequence[str]) -> None:
    subprocess.run(
        command, cwd=REPO, env=child_env(), check=True, timeout=_HUNG, stdout=subprocess.DEVNULL
    )


def wait_for(condition: Callable[[], bool]) -> float:
    """Wait until `condition()` holds; returns when it was first seen to (`time.monotonic()`).
    Only a hung process makes this fail, after `_HUNG` seconds."""
    deadline = time.monotonic() + _HUNG
    while not condition():
        assert time.monotonic() < deadline, "no progress was seen"
        time.sleep(0.005)  # how often progress is looked at, not when anything happens
    return time.monotonic()
