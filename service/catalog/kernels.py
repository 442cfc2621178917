"""Catalog scoring kernels: score(x, a) = const_x + c_a + <z_x, W_a> (see precompute.py).

For DPLR this is Algorithm 1 of the DPLR-FwFM paper with U_I V_I, its norm terms and the item
linear part cached per ad: a rho*k dot product plus a constant per candidate.

Three entry points, all on one catalog snapshot (W float32[N, D], c float64[N]):
  * ``score_ids``   — a subset given by row indices (a request naming ads by id): a gather.
  * ``score_all``   — every ad, sequential read.
  * ``top_k``       — the best k of every ad without a full sort: each chunk of the catalog keeps
                      a size-k min-heap (nogil kernel; a large catalog is split over the kernel
                      pool, service/kernels/pool.py), then the chunk winners are merged.  Ties
                      break by row index.
Compiled with the scoring kernels' options and prefetch hints (service/kernels/codegen.py).
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np

from service.kernels import pool
from service.kernels.codegen import KERNEL, closure_njit, prefetch_row
from service.kernels.schedule import CATALOG_PREFETCH
from service.kernels.vec import vdot, vload


@cache
def rows_kernel(D: int, prefetch: bool = True):
    """The per-candidate catalog kernel for D = rho*k (a compile-time trip count LLVM unrolls).

    out[n] = const + c[a] + <z, W[a]> with a = rows[n]; the W row (D*4 bytes, 64-byte aligned
    when the store allocated it) and c[a] of the candidate CATALOG_PREFETCH ahead are prefetched.
    """
    lines = max(1, (4 * D + 63) // 64)

    vec_dot = _vec_dot(D)

    @closure_njit
    def score_rows(z, const, W, c, rows, out):
        flat = W.reshape(-1)
        n_rows = rows.shape[0]
        for n in range(n_rows):
            if prefetch and n + CATALOG_PREFETCH < n_rows and D > 0:
                b = rows[n + CATALOG_PREFETCH]
                for line in range(lines):
                    prefetch_row(flat, b * D + 16 * line)
                prefetch_row(c, b)
            a = rows[n]
            out[n] = const + c[a] + vec_dot(z, W, a)

    return score_rows


@cache
def _vec_dot(D: int):
    """<z, W[a]> in float32 with both rows as ``<D x float>`` register vectors (service/kernels/vec.py:
    numba's scalar loop compiled to a serial chain of scalar FMAs here)."""
    if D == 0:
        @closure_njit(inline="always")
        def dot0(z, W, a):
            return np.float32(0.0)
        return dot0

    @closure_njit(inline="always")
    def dot(z, W, a):
        return vdot(vload(z, 0, D), vload(W, a, D))

    return dot


@numba.njit(inline="always", **KERNEL)
def _sift_down(hs, hi, size, pos):
    """Restore the min-heap (score, then *larger* row = worse) below ``pos``."""
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and (hs[right] < hs[left] or (hs[right] == hs[left] and hi[right] > hi[left])):
            child = right
        if hs[child] < hs[pos] or (hs[child] == hs[pos] and hi[child] > hi[pos]):
            hs[child], hs[pos] = hs[pos], hs[child]
            hi[child], hi[pos] = hi[pos], hi[child]
            pos = child
        else:
            return


@cache
def scan_kernels(D: int):
    """(score_range, topk_range) for D = rho*k: sequential scans of catalog rows [lo, hi)."""

    vec_dot = _vec_dot(D)

    @closure_njit(inline="always")
    def score(z, const, W, c, a):
        return const + c[a] + vec_dot(z, W, a)

    @closure_njit
    def score_range(z, const, W, c, lo, hi, out):
        """out[a - lo] = score of ad a for a in [lo, hi)."""
        for a in range(lo, hi):
            out[a - lo] = score(z, const, W, c, a)

    @closure_njit
    def topk_range(z, const, W, c, lo, hi, k, heap_s, heap_i):
        """The best min(k, hi-lo) ads of [lo, hi) into an (unsorted) min-heap; returns its size."""
        size = 0
        for a in range(lo, hi):
            s = score(z, const, W, c, a)
            if size < k:  # fill, then heapify once full
                heap_s[size] = s
                heap_i[size] = a
                size += 1
                if size == k:
                    for p in range(k // 2 - 1, -1, -1):
                        _sift_down(heap_s, heap_i, k, p)
            elif s > heap_s[0]:  # rows ascend, so an equal score never beats the root
                heap_s[0] = s
                heap_i[0] = a
                _sift_down(heap_s, heap_i, k, 0)
        return size

    return score_range, topk_range


def top_k(z, const: float, W, c, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64[<=k], scores float64[<=k]) of the best k ads, best first, ties by row."""
    n = W.shape[0]
    k = int(min(max(k, 0), n))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    ranges = pool.split(n, threads or pool.cpus(), pool.PARALLEL_MIN_SCAN)
    hs = np.empty((len(ranges), k))
    hi = np.empty((len(ranges), k), np.int64)
    topk_range = scan_kernels(W.shape[1])[1]

    def run(t: int, lo: int, hi_: int) -> int:  # chunk t keeps its heap in hs[t], hi[t]
        return topk_range(z, const, W, c, lo, hi_, k, hs[t], hi[t])

    sizes = pool.run(run, [(t, lo, hi_) for t, (lo, hi_) in enumerate(ranges)])
    s = np.concatenate([hs[t, :sz] for t, sz in enumerate(sizes)])
    r = np.concatenate([hi[t, :sz] for t, sz in enumerate(sizes)])
    order = np.lexsort((r, -s))[:k]
    return r[order], s[order]


def score_all(z, const: float, W, c) -> np.ndarray:
    """Scores of every ad, float64[N]."""
    out = np.empty(W.shape[0])
    scan_kernels(W.shape[1])[0](z, const, W, c, 0, W.shape[0], out)
    return out


def score_ids(z, const: float, W, c, rows: np.ndarray) -> np.ndarray:
    """Scores of the ads at ``rows`` (int64), float64[len(rows)]."""
    out = np.empty(len(rows))
    rows_kernel(W.shape[1])(z, const, W, c, np.asarray(rows, np.int64), out)
    return out


def warm(D: int) -> None:
    """Compile (or load from the cache) every kernel for D, so no request pays for it."""
    z, W, c = np.zeros(D, np.float32), np.zeros((2, D), np.float32), np.zeros(2)
    score_ids(z, 0.0, W, c, np.zeros(1, np.int64))
    rows_kernel(D, False)(z, 0.0, W, c, np.zeros(1, np.int64), np.empty(1))
    score_all(z, 0.0, W, c)
    top_k(z, 0.0, W, c, 1)
