"""Where the tables the kernels read at random live in memory: alignment and huge pages.

* **64-byte alignment.**  A 64-byte row is one cache line (and one prefetch) only when the
  table starts on a 64-byte boundary; aligned tables were faster at k = 16 (DESIGN.md §7).
  :func:`aligned` guarantees it, copying only when needed (an aligned read-only map view stays
  shared between worker processes).
* **Huge pages.**  A model loaded from its artifact file (``service.ranker.Ranker.load``) has its
  embedding rows and linear weights read into private memory advised for 2 MiB transparent huge
  pages (:func:`resident_empty`, service/modelfile.py): from 4 KiB pages nearly every random row
  is also a TLB miss (docs/results/table-pages.md).  The serving setting ``ADRANK_HUGE_PAGES=0``
  (service/settings.py) keeps them in ordinary private memory.  Arrays built in memory
  (benchmarks, tests, exporter checks) stay as given; :func:`resident` copies one into such
  memory, or returns it when it is there already.
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
    if a.dtype == dtype and a.flags.c_contiguous and is_resident(a):
        return a  # read straight into such memory (service/modelfile.py): no second copy
    return _copy_into(_resident_buffer(nbytes), a, dtype, HUGE_PAGE)


class _Resident(mmap.mmap):
    """The anonymous private map behind :func:`resident` memory (its type marks such memory)."""


def _resident_buffer(nbytes: int) -> np.ndarray:
    # private: a shared anonymous map would be shmem, whose huge pages are a separate, usually off, setting
    mm = _Resident(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # kept alive by the view
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no madvise/THP here
        pass
    return np.frombuffer(mm, dtype=np.uint8)


def resident_empty(nbytes: int) -> np.ndarray:
    """Uninitialised ``uint8[nbytes]`` in :func:`resident` memory (starts on a 2 MiB boundary)."""
    buf = _resident_buffer(nbytes)
    start = (-buf.ctypes.data) % HUGE_PAGE
    return buf[start : start + nbytes]


def is_resident(a: np.ndarray) -> bool:
    """``a`` lies in memory made by :func:`resident_empty` / :func:`resident`."""
    base: object = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(getattr(base, "obj", base), _Resident)


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
