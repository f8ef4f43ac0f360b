"""Thread pools a whole process shares (the state's readers and writers, the fingerprints'
hasher): each made on first use, and made anew in a forked child.

A child forked from a process that had used a pool inherits the pool's state but not its
threads: an executor believing its threads were there would never run what the child gives it
(its load would hang), and a lock held by a parent's thread at the fork would stay held. After
a fork every `SharedPool` forgets both, so the child starts its own threads on first use.
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

__all__ = ["SharedPool"]

_POOLS: weakref.WeakSet[SharedPool] = weakref.WeakSet()


class SharedPool:
    """A `ThreadPoolExecutor` of `workers` threads named `name`, made when first asked for."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        _POOLS.add(self)

    def executor(self) -> ThreadPoolExecutor:
        """The pool's executor: this process's, made now if it has none yet."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._workers, self._name)
            return self._executor

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._executor = None


def _forget_all() -> None:
    for pool in list(_POOLS):
        pool._forget()


os.register_at_fork(after_in_child=_forget_all)
