"""Field vectors from encoded slots, shared by every kernel family.

A field f of a row ``x`` owns slots ``offs[f]:offs[f+1]``.  Its vector is
``v_f = (1/n) sum_{s: x_s != PAD} emb[x_s]`` and its linear term the same mean of
``linear[x_s]`` (the paper's Sec. 3.2: x_j = 1/n on each of n values); a field with no
non-PAD slot contributes the zero vector.  Single-slot fields take an inlined fast path in the
kernels; this module is the general (multi-valued) path, the prefetch hints, and the
per-candidate walk every item loop shares (:func:`candidate_walk`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit

from service.kernels.codegen import KERNEL, closure_njit, prefetch_row, prefetch_row_l2
from service.kernels.rows import add_row, prefetch_codes, prefetch_emb, prefetch_emb_k, prefetch_feature
from service.kernels.schedule import PF_L2, PF_LINEAR, prefetch_schedule


@njit(**KERNEL)
def field_vector(X, r, lo, hi, src, f, linear, V, j):
    """Write v_f of row ``X[r]``'s slots ``lo:hi`` (mean of the non-PAD slots' rows; global
    field ``f``, rows from the embedding source ``src``, see rows.py) into ``V[j]``; return the
    mean linear term.  Rows are passed whole with indices (no slices) so the per-candidate call
    allocates and reference-counts nothing."""
    k = V.shape[1]
    for t in range(k):
        V[j, t] = 0.0
    n = 0
    lin = 0.0
    for s in range(lo, hi):
        idx = X[r, s]
        if idx >= 0:
            n += 1
            lin += linear[idx]
            add_row(src, f, idx, V, j)
    if n > 1:
        inv = np.float32(1.0 / n)
        for t in range(k):
            V[j, t] *= inv
        lin /= n
    return lin


@njit(**KERNEL)
def norm2(V, j):
    """||V[j]||^2 in float64."""
    s = 0.0
    for t in range(V.shape[1]):
        s += V[j, t] * V[j, t]
    return s


@njit(**KERNEL, inline="always")
def hint(table, idx, mode):
    """Prefetch ``table[idx]`` into L2 (``mode & PF_L2``) or into L1."""
    if mode & PF_L2:
        prefetch_row_l2(table, idx)
    else:
        prefetch_row(table, idx)


@njit(**KERNEL)
def prefetch_candidate(items, p, stop, src, linear, single, single_f, g0, mode, K=0):
    """Prefetch the embedding rows of candidate ``p`` (the kernels pass ``n`` + their family's
    distance, schedule.py) if ``p < stop``, and with ``mode & PF_LINEAR`` (mode: a compile-time
    constant of the calling kernel) their linear weights.  No test for PAD (-1): a prefetch
    never faults.  ``K`` (the kernel's compile-time row width; 0 = unknown) makes a row's address a
    shift instead of a multiply by the runtime row stride.
    Codebook sources prefetch the packed codes of the single-slot fields (``single`` slots,
    global fields ``single_f + g0``) instead of rows; for a dense table that loop is empty."""
    if p < stop:
        for s in range(items.shape[1]):
            prefetch_emb_k(src, items[p, s], mode & PF_L2, K)
            if mode & PF_LINEAR:
                hint(linear, items[p, s], mode)
        prefetch_codes(src, items, p, single, single_f, g0)


@njit(**KERNEL, inline="always")
def prefetch_field(X, p, slot, src, f, linear, mode):
    """Prefetch feature ``X[p, slot]`` of global field ``f``: its row (dense) or packed codes
    (codebook) and, with ``mode & PF_LINEAR``, its linear weight (the interleaved schedule)."""
    idx = X[p, slot]
    prefetch_feature(src, f, idx, mode & PF_L2)
    if mode & PF_LINEAR:
        hint(linear, idx, mode)


@njit(**KERNEL)
def prefetch_context(ctx, offs, src, linear, mode):
    """Prefetch every context slot's row (codes, for a codebook source) and linear weight before
    the context pass: the fields' rows are independent, so their cache misses overlap instead of
    being met one field at a time (after a large auction they are usually cold)."""
    for f in range(offs.shape[0] - 1):
        for s in range(offs[f], offs[f + 1]):
            prefetch_feature(src, f, ctx[s], mode & PF_L2)
            hint(linear, ctx[s], mode)


@njit(**KERNEL)
def prefetch_multi(X, p, stop, src, linear, multi, mode):
    """Prefetch the slots of the multi-valued fields of candidate ``p`` (interleaved schedule:
    the single-slot fields are prefetched inside the field loop)."""
    if p < stop:
        for j in range(multi.shape[0]):
            for s in range(multi[j, 0], multi[j, 1]):
                prefetch_emb(src, X[p, s], mode & PF_L2)
                if mode & PF_LINEAR:
                    hint(linear, X[p, s], mode)


@cache
def candidate_walk(dist: int, mode: int, K: int, ident: bool):
    """``(ahead, slot)``: the per-candidate prefetch and slot addressing every item loop shares,
    compiled for one kernel's schedule (``dist`` candidates ahead, ``mode`` bits: schedule.py), row
    width ``K`` and plan shape (``ident``: every item field single-slot, field i is slot i).
    Both are inlined into the calling loop, where the closed-over constants fold away::

        for n in range(start, stop):
            pn = ahead(X, n, stop, src, linear, single, single_f, g0, multi)
            for i in range(single.shape[0]):
                idx, a = slot(X, n, pn, i, single, single_f, g0, src, linear)
                # a: the field's position among the item fields, global field a + g0

    ``ahead`` prefetches candidate ``n + dist`` whole (burst schedule) and its multi-valued
    slots, and returns the candidate ``slot`` prefetches field by field (interleaved
    schedule).  ``slot`` returns the feature id of single-slot field ``i`` of candidate ``n``
    (-1 = PAD) and the field's item position."""
    pf_in, whole, _ = prefetch_schedule(dist, mode)

    @closure_njit(inline="always")
    def ahead(X, n, stop, src, linear, single, single_f, g0, multi):
        if whole:
            prefetch_candidate(X, n + dist, stop, src, linear, single, single_f, g0, mode, K)
        if pf_in and not ident:
            prefetch_multi(X, n + dist, stop, src, linear, multi, mode)
        return min(n + dist, stop - 1)

    @closure_njit(inline="always")
    def slot(X, n, pn, i, single, single_f, g0, src, linear):
        s = np.uint64(i) if ident else single[i]
        a = i if ident else single_f[i]
        if pf_in:
            prefetch_field(X, pn, s, src, a + g0, linear, mode)
        return X[n, s], a

    return ahead, slot


def split_fields(offs: np.ndarray):
    """Split a slot layout into the single-slot fast path and the multi-valued rest.

    ``offs`` int64[F+1] are the slot offsets of F fields.  Returns ``(single, single_f, multi)``:
    ``single`` uint64[F1] the slot of each single-slot field and ``single_f`` its field position
    in ``offs``; ``multi`` int64[F2, 3] rows ``(lo, hi, f)`` for the other fields.  Kernels loop
    over ``single`` with no branch or call, then over ``multi`` through :func:`field_vector`;
    plans permute per-field coefficients into the same order.
    """
    offs = np.asarray(offs, dtype=np.int64)
    width = np.diff(offs)
    one = np.flatnonzero(width == 1)
    many = np.flatnonzero(width != 1)
    multi = np.stack([offs[many], offs[many + 1], many], axis=1).astype(np.int64).reshape(-1, 3)
    return offs[one].astype(np.uint64), one.astype(np.int64), multi  # unsigned: no wraparound code


@njit(**KERNEL)
def id_bound(X):
    """max over X of uint32(x + 1): ids are valid (PAD = -1 or in [0, n)) iff this is <= n.
    One branch-free unsigned max, which LLVM vectorises (the scorer's check before any gather)."""
    flat = X.reshape(-1)
    hi = np.uint32(0)
    for i in range(flat.shape[0]):
        hi = max(hi, np.uint32(flat[i] + 1))
    return hi
