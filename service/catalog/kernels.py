"""Catalog scoring kernels: score(x, a) = const_x + c_a + <z_x, W_a> (see precompute.py).

For DPLR this is Algorithm 1 of the DPLR-FwFM paper with U_I V_I, its norm terms and the item
linear part cached per ad: a rho*k dot product plus a constant per candidate.

Three entry points on a catalog view's parts (W float32[N, D], c float64[N] per segment: the base,
and optionally the delta, whose rows count after the base's, see segments.py):
  * ``score_ids``   — a subset given by global rows (a request naming ads by id): a gather.
  * ``score_all``   — every ad of one segment, sequential read.
  * ``top_k_value`` — the same by value (eCPM = bid x CTR x 1000, or CTR), the score -> value step
                      inside the kernel (service.link's CTR map, the stored bids).
  * ``top_k``       — the best k live ads without a full sort: each chunk of the base (minus its
                      dead rows) and the delta keeps a size-k min-heap (nogil kernel; a large
                      catalog is split over the kernel pool, service/kernels/pool.py), then the
                      chunk winners are merged.  Ties break by global row.
Compiled with the scoring kernels' options and prefetch hints (service/kernels/codegen.py).
"""

from __future__ import annotations

import math
from functools import cache

import numba
import numpy as np

from service.catalog.idtable import first_at_least
from service.kernels import pool
from service.kernels.codegen import KERNEL, closure_njit, prefetch_row
from service.kernels.schedule import CATALOG_PREFETCH
from service.kernels.vec import vdot, vload
from service.link import ctr_one, knot_below


@cache
def rows_kernel(D: int, prefetch: bool = True):
    """The per-candidate catalog kernel for D = rho*k (a compile-time trip count LLVM unrolls).

    out[n] = const + c[a] + <z, W[a]> for global row a = rows[n] of a view of two segments: rows
    below ``n0`` index (W0, c0) (the base), the others (W1, c1) at a - n0 (the delta).  The W row
    (D*4 bytes, 64-byte aligned when the store allocated it) and c[a] of the candidate
    CATALOG_PREFETCH ahead are prefetched.
    """
    lines = max(1, (4 * D + 63) // 64)

    vec_dot = _vec_dot(D)

    @closure_njit
    def score_rows(z, const, W0, c0, n0, W1, c1, rows, out):
        flat0, flat1 = W0.reshape(-1), W1.reshape(-1)
        n_rows = rows.shape[0]
        for n in range(n_rows):
            if prefetch and n + CATALOG_PREFETCH < n_rows and D > 0:
                b = rows[n + CATALOG_PREFETCH]
                if b < n0:
                    for line in range(lines):
                        prefetch_row(flat0, b * D + 16 * line)
                    prefetch_row(c0, b)
                else:
                    for line in range(lines):
                        prefetch_row(flat1, (b - n0) * D + 16 * line)
                    prefetch_row(c1, b - n0)
            a = rows[n]
            if a < n0:
                out[n] = const + c0[a] + vec_dot(z, W0, a)
            else:
                out[n] = const + c1[a - n0] + vec_dot(z, W1, a - n0)

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
def _heap_offer(hs, hi, size, k, s, row):
    """Offer (value ``s``, ``row``) to the min-heap of the best ``k`` (``size`` held so far: filled
    first, heapified once full, then the root replaced by a better value; rows come in ascending
    order, so an equal value never beats the root).  Returns (new size, whether the heap's worst
    value may have risen)."""
    if size < k:
        hs[size] = s
        hi[size] = row
        size += 1
        if size == k:
            for j in range(k // 2 - 1, -1, -1):
                _sift_down(hs, hi, k, j)
            return size, True
        return size, False
    if s > hs[0]:
        hs[0] = s
        hi[0] = row
        _sift_down(hs, hi, k, 0)
        return size, True
    return size, False


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


@numba.njit(inline="always", **KERNEL)
def _ctr_bound(raw, ca, cb, xs, ys):
    """An upper bound of ``ctr_one(raw, ...)`` without a transcendental call: for x = ca*raw + cb <= 0,
    e^-x >= 1 + y + y^2/2 + y^3/6 (y = -x), so sigmoid(x) <= 1 / (2 + y + y^2/2 + y^3/6); else 1.
    Scaled up by 1e-12 against rounding; an isotonic map is non-decreasing, so map the bound."""
    x = ca * raw + cb
    if x != x:
        return 1.0
    if x < 0.0:
        y = -x
        u = (1.0 + 1e-12) / (2.0 + y + y * y * 0.5 + y * y * y * (1.0 / 6.0))
    else:
        u = 1.0
    n = xs.shape[0]
    if n == 0:
        return u
    if u <= xs[0]:
        return ys[0]
    if u >= xs[n - 1]:
        return ys[n - 1]
    return ys[knot_below(xs, u) + 1]  # the knot above: an upper bound of the interpolation


@numba.njit(inline="always", **KERNEL)
def _x_floor(floor, by_value, max_bid, xs):
    """The calibrated logit x = a * raw + b at or below which no ad can beat ``floor`` (a CTR, or an
    eCPM with bids <= ``max_bid``), less a margin against rounding; -inf when unknown (an isotonic
    map: the bound of ``_ctr_bound`` decides instead)."""
    if xs.shape[0] > 0 or not floor > 0.0:
        return -np.inf
    if by_value and not max_bid > 0.0:
        return np.inf  # no ad has a bid: every eCPM is 0, none beats a positive floor
    p = floor / (max_bid * 1000.0) if by_value else floor
    if not p < 1.0:
        return np.inf
    x = math.log(p / (1.0 - p))
    return x - 1e-6 * (1.0 + abs(x))


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
    def topk_range(z, const, W, c, lo, hi, k, heap_s, heap_i, dead, row0):
        """The best min(k, live rows of [lo, hi)) ads into an (unsorted) min-heap of global rows
        (``row0 + a``); rows in ``dead`` (sorted) are skipped.  Returns the heap's size."""
        size = 0
        p = first_at_least(dead, lo)
        n_dead = dead.shape[0]
        for a in range(lo, hi):
            if p < n_dead and dead[p] == a:
                p += 1
                continue
            size, _ = _heap_offer(heap_s, heap_i, size, k, score(z, const, W, c, a), row0 + a)
        return size

    @closure_njit
    def topk_value_range(z, const, W, c, bids, lo, hi, k, heap_s, heap_i, dead, row0, by_value, has_reserve,
                         reserve, ca, cb, xs, ys, max_bid):
        """``topk_range`` by value: each live ad's score -> CTR (service.link.ctr_one) -> eCPM =
        bid x CTR x 1000 (a NaN bid counts as 0); ads below the reserve (less a 1e-9 margin: the
        caller applies it exactly) are skipped (``has_reserve``) and the heap keeps the best eCPM
        (``by_value``) or CTR."""
        size = 0
        p = first_at_least(dead, lo)
        n_dead = dead.shape[0]
        # the value an ad must beat: the heap's worst once full, and just below the reserve (the
        # kernel's arithmetic is reassociated and its exp approximate: it selects candidates with
        # a margin, the caller re-values them exactly, service.link.order_values)
        res_low = reserve * (1.0 - 1e-9) - 1e-300 if has_reserve else -np.inf
        low = res_low if by_value else -np.inf
        floor = low
        xfloor = _x_floor(floor, by_value, max_bid, xs)
        for a in range(lo, hi):
            if p < n_dead and dead[p] == a:
                p += 1
                continue
            raw = score(z, const, W, c, a)
            if ca * raw + cb < xfloor:  # below the logit even the largest bid needs: no bid, no exp
                continue
            bid = bids[a]
            bid = bid if bid == bid else 0.0
            scale = bid * 1000.0 if by_value else 1.0
            if scale <= floor:  # even a CTR of 1 loses
                continue
            if scale * _ctr_bound(raw, ca, cb, xs, ys) <= floor:  # an upper bound of the CTR loses: no exp
                continue
            pr = ctr_one(raw, ca, cb, xs, ys)
            e = bid * pr * 1000.0
            if has_reserve and not e > res_low:
                continue
            size, raised = _heap_offer(heap_s, heap_i, size, k, e if by_value else pr, row0 + a)
            if raised:
                floor = max(low, heap_s[0])
                xfloor = _x_floor(floor, by_value, max_bid, xs)
        return size

    return score_range, topk_range, topk_value_range


def top_k_value(z, const: float, W, c, bids, k: int, dead=None, delta=None, by_value: bool = True,
                reserve: float | None = None, cal=None, skip=None,
                threads: int | None = None, max_bids=None) -> tuple[np.ndarray, np.ndarray]:
    """(global rows int64[<=k], values float64[<=k]) of the best k live ads by eCPM (``by_value``)
    or CTR, best first, ties by row, those below ``reserve`` left out: :func:`top_k` with the
    score -> value step inside the kernel.  ``delta`` = (W1, c1, bids1); ``skip`` (sorted global
    rows) are left out too (the caller values them itself, e.g. boosted ads); ``max_bids`` the
    largest bid of each (None: computed here, an O(N) pass: a catalog caches it per segment)."""
    dead = NO_ROWS if dead is None else dead
    if max_bids is None:
        def top(b):
            return float(np.nanmax(b)) if len(b) and not np.all(np.isnan(b)) else 0.0
        max_bids = (top(bids), top(delta[2]) if delta is not None else 0.0)
    n0 = W.shape[0]
    skip = NO_ROWS if skip is None else np.asarray(skip, np.int64)
    dead0 = np.union1d(dead, skip[skip < n0]) if len(skip) else dead
    jobs = [(W, c, bids, lo, hi, dead0, 0, max_bids[0])
            for lo, hi in pool.split(n0, threads or pool.cpus(), pool.PARALLEL_MIN_SCAN)]
    n1 = len(delta[1]) if delta is not None else 0
    if n1:
        jobs.append((delta[0], delta[1], delta[2], 0, n1, skip[skip >= n0] - n0, n0, max_bids[1]))
    k = int(min(max(k, 0), n0 + n1))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    hs = np.empty((len(jobs), k))
    hi = np.empty((len(jobs), k), np.int64)
    kern = scan_kernels(W.shape[1])[2]
    has_reserve = reserve is not None
    res = float(reserve) if reserve is not None else 0.0
    ca, cb, xs, ys = cal if cal is not None else (1.0, 0.0, NO_KNOTS, NO_KNOTS)

    def run(t: int) -> int:
        Wt, ct, bt, lo, hi_, dt, row0, mb = jobs[t]
        return kern(z, const, Wt, ct, bt, lo, hi_, k, hs[t], hi[t], dt, row0, by_value, has_reserve, res,
                    ca, cb, xs, ys, mb)

    return _best_of_heaps(run, len(jobs), n0, hs, hi, k)


NO_ROWS = np.zeros(0, np.int64)
NO_KNOTS = np.zeros(0)


def _best_of_heaps(run, n_jobs: int, n0: int, hs: np.ndarray, hi: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Run the scan jobs (``run(t)`` fills heap t, ``hs[t]``/``hi[t]``, and returns its size: on
    the kernel pool for a large base) and merge their heaps: (rows, values) of the best ``k``,
    best first, ties by row."""
    sizes = [run(t) for t in range(n_jobs)] if n0 < pool.PARALLEL_MIN_SCAN else \
        pool.run(run, [(t,) for t in range(n_jobs)])
    s = np.concatenate([hs[t, :sz] for t, sz in enumerate(sizes)])
    r = np.concatenate([hi[t, :sz] for t, sz in enumerate(sizes)])
    order = np.lexsort((r, -s))[:k]
    return r[order], s[order]


def top_k(z, const: float, W, c, k: int, threads: int | None = None, dead=NO_ROWS, delta=None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(global rows int64[<=k], raw scores float64[<=k]) of the best k live ads, best first, ties by
    row: over (W, c) minus the sorted rows ``dead``, and over ``delta`` = (W1, c1) if given, whose
    rows count from len(W).  A large base is split over the kernel pool (nogil kernels)."""
    n0 = W.shape[0]
    jobs = [(W, c, lo, hi, dead, 0) for lo, hi in pool.split(n0, threads or pool.cpus(), pool.PARALLEL_MIN_SCAN)]
    if delta is not None and len(delta[1]):
        jobs.append((delta[0], delta[1], 0, len(delta[1]), NO_ROWS, n0))
    k = int(min(max(k, 0), n0 + (len(delta[1]) if delta is not None else 0)))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    hs = np.empty((len(jobs), k))
    hi = np.empty((len(jobs), k), np.int64)
    topk_range = scan_kernels(W.shape[1])[1]

    def run(t: int) -> int:  # job t keeps its heap in hs[t], hi[t]
        Wt, ct, lo, hi_, dt, row0 = jobs[t]
        return topk_range(z, const, Wt, ct, lo, hi_, k, hs[t], hi[t], dt, row0)

    return _best_of_heaps(run, len(jobs), n0, hs, hi, k)


def score_all(z, const: float, W, c) -> np.ndarray:
    """Scores of every ad, float64[N]."""
    out = np.empty(W.shape[0])
    scan_kernels(W.shape[1])[0](z, const, W, c, 0, W.shape[0], out)
    return out


def score_ids(z, const: float, W, c, rows: np.ndarray, delta=None) -> np.ndarray:
    """Scores of the ads at global ``rows`` (int64), float64[len(rows)]; rows from len(W) on index
    ``delta`` = (W1, c1)."""
    W1, c1 = delta if delta is not None else (W[:0], c[:0])
    out = np.empty(len(rows))
    rows_kernel(W.shape[1])(z, const, W, c, W.shape[0], W1, c1, np.asarray(rows, np.int64), out)
    return out


def warm(D: int) -> None:
    """Compile (or load from the cache) every kernel for D, so no request pays for it."""
    z, W, c = np.zeros(D, np.float32), np.zeros((2, D), np.float32), np.zeros(2)
    score_ids(z, 0.0, W, c, np.zeros(1, np.int64), delta=(W, c))
    rows_kernel(D, False)(z, 0.0, W, c, 2, W, c, np.zeros(1, np.int64), np.empty(1))
    score_all(z, 0.0, W, c)
    top_k(z, 0.0, W, c, 1, dead=np.ones(1, np.int64), delta=(W, c))
    top_k_value(z, 0.0, W, c, np.zeros(2), 1, dead=np.ones(1, np.int64), delta=(W, c, np.zeros(2)), reserve=0.0,
                max_bids=(0.0, 0.0))
