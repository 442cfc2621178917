"""FM scoring with a cached context (DPLR-FwFM paper, Eq. 1 and 2d).

Artifact semantics (diagonals folded, ``d`` left only for multi-valued fields, -1 there)::

    score(x) = b + sum_f lin_f + 1/2 ( || sum_f v_f ||^2 + sum_f d_f ||v_f||^2 )

Once per request (context fields C):  a_C = sum_{f in C} v_f,
``const = b + sum_{f in C} lin_f + 1/2 sum_{f in C} d_f ||v_f||^2``.
Per candidate (item fields I), O(|I| k):  a = a_C + sum_{f in I} v_f,
``score = const + sum_{f in I} lin_f + 1/2 (||a||^2 + sum_{f in I} d_f ||v_f||^2)``.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from service.kernels.base import Scorer
from service.kernels.codegen import SOURCE_STAMP, closure_njit
from service.kernels.fields import candidate_walk, field_vector, norm2, prefetch_context, split_fields
from service.kernels.rows import fetch
from service.kernels.schedule import PF_LINEAR, prefetch_schedule
from service.kernels.vec import vadd, vdot, vload, vstore, vzero


@cache
def build(K: int, dist: int, D: int = 1, mode: int = PF_LINEAR):
    """(context, items) kernels specialised for embedding dimension ``K`` (and, for codebook
    sources, D codebooks per field; rows.py); rows of the candidate ``dist`` ahead are prefetched
    (0: none).  ``items[True]`` serves plans whose item fields are all single-slot (field i is
    slot i: no per-field slot lookup, no multi-valued path compiled), ``items[False]`` the rest."""
    stamp = SOURCE_STAMP  # closed over: helper edits invalidate the numba cache
    ctx_prefetch = prefetch_schedule(dist, mode)[2]

    @closure_njit
    def context(ctx, offs, src, linear, d):
        _ = stamp  # noqa: F841 (keeps the stamp a closure cell)
        if ctx_prefetch:
            prefetch_context(ctx, offs, src, linear, mode)
        a = vzero(K)
        v = np.empty((1, K), np.float32)
        x = ctx.reshape(1, -1)
        lin = 0.0
        dn = 0.0
        for f in range(offs.shape[0] - 1):
            lin += field_vector(x, 0, offs[f], offs[f + 1], src, f, linear, v, 0)
            a = vadd(a, vload(v, 0, K))
            dn += d[f] * norm2(v, 0)
        a_c = np.empty(K, np.float32)
        vstore(a_c, 0, a)
        return a_c, lin + 0.5 * dn

    def make_items(IDENT):
        ahead, slot = candidate_walk(dist, mode, K, IDENT)

        @closure_njit
        def items(a_c, const, X, single, single_f, g0, multi, d_m, src, linear, out, start, stop):
            _ = stamp  # noqa: F841 (keeps the stamp a closure cell)
            v = np.empty((1, K), np.float32)
            a0 = vload(a_c, 0, K)
            for n in range(start, stop):
                pn = ahead(X, n, stop, src, linear, single, single_f, g0, multi)
                a = a0
                lin = np.float32(0.0)
                for i in range(single.shape[0]):  # single-valued: d_f already folded into linear
                    idx, pos = slot(X, n, pn, i, single, single_f, g0, src, linear)
                    if idx >= 0:
                        lin += linear[idx]
                        a = vadd(a, fetch(src, pos + g0, idx, K, D))
                dn = 0.0
                if not IDENT:
                    for j in range(multi.shape[0]):
                        lin += field_vector(X, n, multi[j, 0], multi[j, 1], src, multi[j, 2] + g0, linear, v, 0)
                        a = vadd(a, vload(v, 0, K))
                        dn += d_m[j] * norm2(v, 0)
                out[n] = const + lin + 0.5 * (vdot(a, a) + dn)

        return items

    items = {True: make_items(True), False: make_items(False)}  # True: every item field single-slot

    return context, items


class FMScorer(Scorer):
    kind = "fm"

    def _setup(self, arrays):
        self.d = np.ascontiguousarray(arrays["d"], dtype=np.float64)
        if self.d.shape != (self.m,):
            raise ValueError(f"fm artifact: 'd' must have shape ({self.m},), got {self.d.shape}")
        self._ctx_fn, self._items_fns = build(self.k, self.prefetch, self.D, self.prefetch_mode)

    def _plan(self, ctx_fields, item_fields, item_offs):
        single, single_f, multi = split_fields(item_offs)
        d_m = self.d[item_fields][multi[:, 2]].copy()
        g0 = int(item_fields[0]) if len(item_fields) else 0  # global index of the first item field
        return (self.d[ctx_fields].copy(),), (single, single_f, g0, multi, d_m)

    def _context(self, ctx, offs, d_c):
        a_c, c = self._ctx_fn(ctx, offs, self.src, self.linear, d_c)
        return a_c, self.bias + c

    def _items(self, state, X, single, single_f, g0, multi, d_m, out, start, stop):
        a_c, const = state
        args = (a_c, const, X, single, single_f, g0, multi, d_m, self.src, self.linear, out)
        self._items_fns[multi.shape[0] == 0](*args, start, stop)
