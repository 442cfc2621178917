"""Where the tables the kernels read at random live in memory: alignment and huge pages.

* **64-byte alignment.**  A 64-byte row is one cache line (and one prefetch) only when the
  table starts on a 64-byte boundary; aligned tables were faster at k = 16 (DESIGN.md §7).
  :func:`aligned` guarantees it, copying only when needed (an aligned read-only map view stays
  shared between worker processes).
* **Huge pages.**  A model loaded from its artifact file (``service.ranker.Ranker.load``) has its
  embedding rows and linear weights copied out of the file's shared read-only map into private
  memory advised for 2 MiB transparent huge pages (:func:`resident`): served from the map's 4 KiB
  page-cache pages nearly every random row is also a TLB miss, which the copy avoids
  (docs/results/table-pages.md).  The serving setting ``ADRANK_HUGE_PAGES=0``
  (service/settings.py) keeps the map views instead: one copy shared by every worker, at that
  cost.  Arrays built in memory (benchmarks, tests, exporter checks) are private already and
  stay as given.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

ALIGNMENT = 64  # bytes: one cache line
HUGE_PAGE = 2 << 20  # bytes


def aligned(a: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype`` whose data starts on a 64-byte boundary.

    Returns ``a`` itself when it already qualifies (e.g. an aligned read-only mmap view, which
    stays shared between processes); otherwise copies once, at load time.
    """
    a = np.asarray(a)
    if a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0:
        return a
    return _copy_into(np.empty(a.size * np.dtype(dtype).itemsize + ALIGNMENT, dtype=np.uint8), a, dtype, ALIGNMENT)


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary, so that a
    row of 16*j float32 is exactly j cache lines (one prefetch each)."""
    shape = tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = (-buf.ctypes.data) % ALIGNMENT
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def resident(a: np.ndarray, dtype=np.float32) -> np.ndarray:
    """A private copy of ``a`` (C-contiguous ``dtype``) in anonymous memory that starts on a 2 MiB
    boundary and is advised for transparent huge pages, so that one TLB entry covers 2 MiB of a
    table gathered at random.  Arrays under 2 MiB go through :func:`aligned` (no copy when
    aligned).  Where the system has no THP the advice is refused and the copy keeps 4 KiB pages:
    the same values, only without the gain."""
    a = np.asarray(a)
    nbytes = a.size * np.dtype(dtype).itemsize
    if nbytes < HUGE_PAGE:
        return aligned(a, dtype)
    # private: a shared anonymous map would be shmem, whose huge pages are a separate, usually off, setting
    mm = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # kept alive by the view
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no madvise/THP here
        pass
    return _copy_into(np.frombuffer(mm, dtype=np.uint8), a, dtype, HUGE_PAGE)


def anon_huge_kib(addr: int) -> int | None:
    """AnonHugePages (KiB) of this process's mapping that holds address ``addr`` (from
    /proc/self/smaps; None where it cannot be read or no mapping holds ``addr``): how much of a
    :func:`resident` copy the kernel backs with huge pages."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return None


def _copy_into(buf: np.ndarray, a: np.ndarray, dtype, alignment: int) -> np.ndarray:
    """``a`` copied as ``dtype`` into byte buffer ``buf`` (at least ``alignment`` bytes longer than
    the copy), starting at its first ``alignment``-byte boundary."""
    start = (-buf.ctypes.data) % alignment
    out = buf[start : start + a.size * np.dtype(dtype).itemsize].view(dtype).reshape(a.shape)
    out[...] = a
    return out
