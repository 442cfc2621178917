"""The one thread pool of the service's compiled kernels, and when work is split over it.

Large pieces of work (an auction of many candidates, a scan of the whole ad catalog, the per-ad
precompute of a large batch) are cut into contiguous slices scored concurrently: the kernels are
``nogil``, so Python threads run them in parallel.  Python threads rather than numba's
``parallel=True``: no second compiled variant per kernel (prange variants of closures over
other kernels could not be loaded from numba's cache), no threading layer to configure, and
safe when several request threads score at once (numba's default workqueue layer forbids
that).  Below a size threshold the work stays on the calling thread and never touches the pool.

The pool is created on first use, under a lock, with one worker per CPU (threads start lazily,
so a caller using fewer slices starts fewer threads).  Slice tasks run compiled code only and
never submit to the pool themselves, so they cannot wait on each other.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PARALLEL_MIN_CANDIDATES = 4096  # candidates of one auction from which a Scorer splits it (ADRANK_PARALLEL_MIN_CANDIDATES)
PARALLEL_MIN_SCAN = 200_000  # ads of a catalog from which a whole-catalog scan (top-k) is split
PARALLEL_MIN_PRECOMPUTE = 20_000  # ads precomputed at once from which the precompute is split

_POOL: ThreadPoolExecutor | None = None
_LOCK = threading.Lock()


def cpus() -> int:
    return os.cpu_count() or 1


def default_threads() -> int:
    """Slices a Scorer splits a large auction into unless told otherwise (``ADRANK_KERNEL_THREADS``):
    at most two, because every slice of one request takes a core from the requests beside it."""
    return min(2, cpus())


def executor() -> ThreadPoolExecutor:
    """The process-wide pool (created on first use)."""
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=cpus(), thread_name_prefix="adrank-kernel")
        return _POOL


def split(n: int, parts: int, minimum: int = 0) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) ranges of nearly equal size covering range(n): ``parts`` of them (at
    most n) when ``n >= minimum``, else one."""
    edges = np.linspace(0, n, (max(1, min(parts, n)) if n >= minimum else 1) + 1).astype(np.int64)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(len(edges) - 1)]


def run(fn: Callable[..., object], tasks: list[tuple]) -> list:
    """``fn(*task)`` for every task (e.g. the ranges of :func:`split`), the first on the calling
    thread and the others on the pool, concurrently; the results in task order."""
    if len(tasks) == 1:
        return [fn(*tasks[0])]
    futures = [executor().submit(fn, *task) for task in tasks[1:]]
    first = fn(*tasks[0])
    return [first] + [f.result() for f in futures]
