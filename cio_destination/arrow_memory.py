"""Which allocator the load step's Arrow buffers come from, and handing freed pages back.

Arrow's default pool (mimalloc in pyarrow's wheels) keeps the pages a thread freed for that
thread's later allocations. A job reads its file on one thread, maps units on another and frees
them on a third once they are recorded, so each thread's heap keeps its own pages, and at
500 ms latency, with fifty requests and several units in flight, a 1M-row sync peaked at
325-336 MB with it, 291-299 MB with the C library's allocator (do-nothing: 221-228 MB), and
jemalloc's was between (310-326 MB). So while a load job of this destination
runs, pyarrow allocates from the system pool (`pa.system_memory_pool()`): every call that does
not name a pool, the parquet reader's included. The switch is pyarrow's process-wide default,
taken when the first job starts and given back when the last one ends; a buffer made before or
after keeps the pool it came from, so nothing else changes for other code in the process. A user
who set `ARROW_DEFAULT_MEMORY_POOL` has chosen an allocator: it is left as it is.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

RELEASE_EVERY = 3
"""Units finished between two hand-backs of freed pages. Every hand-back makes the next units
fault their pages in again, and its cost grows with the pages handed back: at 500 ms a 1M-row
sync spent 0.13 s trimming after every unit and 0.075 s after every third, for a peak 3-6 MB
higher (295-299 against 291-293 MB); after every twelfth, 0.03 s but 302-307 MB."""
RELEASE_WHEN_HELD = 6
"""Units held by the process's jobs (mapped, their answers not all in) from which freed pages
are handed back at all. Few are held when answers come quickly (a 1M-row Arrow table: three to
five at 0 ms, five to eight at 50 ms, 18 at 500 ms), and the pages a finished unit frees are
then the next unit's working set: handing them back made the mapping thread fault them in again
(112,000 of the 186,000 page faults of a 1M-row Arrow sync at 0 ms, about 0.4 s of system CPU),
for a peak 12 MB lower (260 against 272 MB, do-nothing 236). With many units held, their
buffers and the freed pages between them add up: at 500 ms, without hand-backs, the peak rose
from 313-319 to 366-368 MB."""

_releases = itertools.count(1)
_lock = threading.Lock()
_jobs = 0
_held = 0
_before: pa.MemoryPool | None = None


def chosen_by_user() -> bool:
    """Whether the process names Arrow's allocator itself (`ARROW_DEFAULT_MEMORY_POOL`)."""
    return bool(os.environ.get("ARROW_DEFAULT_MEMORY_POOL"))


@contextmanager
def load_step_pool() -> Iterator[None]:
    """Within: pyarrow's default pool is the system allocator's (unless the user chose one).
    Nested and concurrent jobs share one switch; the last to leave restores the pool before."""
    global _jobs, _before
    if chosen_by_user():
        yield
        return
    with _lock:
        if _jobs == 0:
            _before = pa.default_memory_pool()
            pa.set_memory_pool(pa.system_memory_pool())
        _jobs += 1
    try:
        yield
    finally:
        with _lock:
            _jobs -= 1
            if _jobs == 0 and _before is not None:
                pa.set_memory_pool(_before)
                _before = None


def unit_held() -> None:
    """A job holds one more unit until `unit_done` (mapped, its answers not all in)."""
    global _held
    with _lock:
        _held += 1


def unit_done() -> None:
    """A unit `unit_held` counted is finished and its buffers gone (made on the reading and
    mapping threads, freed on the job's). While at least `RELEASE_WHEN_HELD` units were held,
    hand the pages the current pool holds but no longer uses back to the system on every
    `RELEASE_EVERY`-th such unit (for the system pool, the C library's `malloc_trim`): without
    it a 1M-row sync at 500 ms peaked about 40 MB higher."""
    global _held
    with _lock:
        held, _held = _held, max(_held - 1, 0)
    if held >= RELEASE_WHEN_HELD and next(_releases) % RELEASE_EVERY == 0:
        pa.default_memory_pool().release_unused()
