"""Catalog scoring kernels: score(x, a) = const_x + c_a + <z_x, W_a> (see precompute.py).

For DPLR this is Algorithm 1 of the DPLR-FwFM paper with U_I V_I, its norm terms and the item
linear part cached per ad: a rho*k dot product plus a constant per candidate.

Three entry points, all on one catalog snapshot (W float32[N, D], c float64[N]):
  * ``score_ids``   — a subset given by row indices (a request naming ads by id): a gather.
  * ``score_all``   — every ad, sequential read.
  * ``top_k``       — the best k of every ad without a full sort: each chunk of the catalog keeps
                      a size-k min-heap (nogil kernel, one Python thread per chunk for large
                      catalogs), then the chunk winners are merged.  Ties break by row index.
Python threads + ``nogil`` kernels rather than numba's ``parallel=True``: the service calls these
from several request threads at once, which numba's default (workqueue) threading layer forbids.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from service.kernels.config import closure_njit
from service.kernels.vec import vdot, vload

JIT = dict(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, error_model="numpy")
PREFETCH = 4  # candidates ahead whose W row and c are prefetched (random gathers)
PARALLEL_MIN = 200_000  # below this many ads a whole-catalog scan stays on the calling thread
_POOL: ThreadPoolExecutor | None = None


@intrinsic
def prefetch_line(typingctx, arr, i):
    """``llvm.prefetch(&arr[i], read, keep in all caches, data)`` for a 1-D array of any dtype.

    (The pointer is cast to i8* so float32 and float64 arrays can share one declaration.)"""
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.bitcast(cgutils.get_item_pointer(context, builder, sig.args[0], ary, [idx]),
                              ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


@cache
def rows_kernel(D: int, prefetch: bool = True):
    """The per-candidate catalog kernel for D = rho*k (a compile-time trip count LLVM unrolls).

    out[n] = const + c[a] + <z, W[a]> with a = rows[n]; the W row (D*4 bytes, 64-byte aligned
    when the store allocated it) and c[a] of the candidate PREFETCH ahead are prefetched.
    """
    lines = max(1, (4 * D + 63) // 64)

    vec_dot = _vec_dot(D)

    @closure_njit(**JIT)
    def score_rows(z, const, W, c, rows, out):
        flat = W.reshape(-1)
        n_rows = rows.shape[0]
        for n in range(n_rows):
            if prefetch and n + PREFETCH < n_rows and D > 0:
                b = rows[n + PREFETCH]
                for line in range(lines):
                    prefetch_line(flat, b * D + 16 * line)
                prefetch_line(c, b)
            a = rows[n]
            out[n] = const + c[a] + vec_dot(z, W, a)

    return score_rows


@cache
def _vec_dot(D: int):
    """<z, W[a]> in float32 with both rows as ``<D x float>`` register vectors (service/kernels/vec.py:
    numba's scalar loop compiled to a serial chain of scalar FMAs here)."""
    if D == 0:
        @closure_njit(inline="always", **JIT)
        def dot0(z, W, a):
            return np.float32(0.0)
        return dot0

    @closure_njit(inline="always", **JIT)
    def dot(z, W, a):
        return vdot(vload(z, 0, D), vload(W, a, D))

    return dot


@numba.njit(inline="always", **JIT)
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

    @closure_njit(inline="always", **JIT)
    def score(z, const, W, c, a):
        return const + c[a] + vec_dot(z, W, a)

    @closure_njit(**JIT)
    def score_range(z, const, W, c, lo, hi, out):
        """out[a - lo] = score of ad a for a in [lo, hi)."""
        for a in range(lo, hi):
            out[a - lo] = score(z, const, W, c, a)

    @closure_njit(**JIT)
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


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="catalog-topk")
    return _POOL


def _chunks(n: int, threads: int, minimum: int | None = None) -> list[tuple[int, int]]:
    """``threads`` equal [lo, hi) ranges of n rows, or one when n < ``minimum`` (PARALLEL_MIN)."""
    parts = max(1, threads if n >= (PARALLEL_MIN if minimum is None else minimum) else 1)
    edges = np.linspace(0, n, parts + 1).astype(np.int64)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(parts)]


def top_k(z, const: float, W, c, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64[<=k], scores float64[<=k]) of the best k ads, best first, ties by row."""
    n = W.shape[0]
    k = int(min(max(k, 0), n))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    chunks = _chunks(n, threads or os.cpu_count() or 1)
    hs = np.empty((len(chunks), k))
    hi = np.empty((len(chunks), k), np.int64)
    topk_range = scan_kernels(W.shape[1])[1]

    def run(t: int) -> int:
        lo, hi_ = chunks[t]
        return topk_range(z, const, W, c, lo, hi_, k, hs[t], hi[t])

    sizes = [run(0)] if len(chunks) == 1 else list(_pool().map(run, range(len(chunks))))
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
