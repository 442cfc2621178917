"""Pruned FwFM scoring with a cached context (paper Eq. 3 restricted to the kept pairs, Sec. 5.1).

    score(x) = b + sum_f lin_f + sum_{kept (i, j), i < j} R_ij <v_i, v_j>

Kept pairs split by role.  Once per request:  context x context pairs into ``const``, and
for each item field a the context partial vector  q_a = sum_{kept (i, a), i in C} R_ia v_i.
Per candidate, with the item vectors v_a gathered once, everything is accumulated *lane-wise*
into one k-vector and summed horizontally once at the end:

    acc = sum_{a in I} q_a * v_a  +  sum_{kept (a, b) in I x I} R_ab (v_a * v_b)      (* lane-wise)
    score = const + sum_{a in I} lin_a + sum_lanes(acc)

The item x item pairs are one flat loop of fixed length (no data-dependent inner loop to
mispredict), with two accumulators to hide the add latency: O((|I| + P_II) k) per candidate.
Full FwFM (fwfm.py) is this kernel with every pair kept.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from service.kernels.base import Scorer
from service.kernels.codegen import SOURCE_STAMP, closure_njit
from service.kernels.fields import candidate_walk, field_vector, prefetch_context, split_fields
from service.kernels.rows import fetch
from service.kernels.schedule import PF_LINEAR, prefetch_schedule
from service.kernels.vec import vadd, vaxpy, vdot, vload, vmul, vstore, vsum, vzero


@cache
def build(K: int, dist: int, D: int = 1, mode: int = PF_LINEAR):
    """(context, items) kernels specialised for embedding dimension ``K`` (and, for codebook
    sources, D codebooks per field; rows.py); rows of the candidate ``dist`` ahead are prefetched
    (0: none).  ``items[True]`` serves plans whose item fields are all single-slot (field i is
    slot i: no per-field slot lookup, no multi-valued path compiled), ``items[False]`` the rest."""
    stamp = SOURCE_STAMP  # closed over: helper edits invalidate the numba cache
    ctx_prefetch = prefetch_schedule(dist, mode)[2]

    @closure_njit
    def context(ctx, offs, src, linear, cc_i, cc_j, cc_r, ci_c, ci_a, ci_r, n_items):
        _ = stamp  # noqa: F841 (keeps the stamp a closure cell)
        if ctx_prefetch:
            prefetch_context(ctx, offs, src, linear, mode)
        V_c = np.zeros((max(offs.shape[0] - 1, 1), K), np.float32)
        row = ctx.reshape(1, -1)
        lin = 0.0
        for f in range(offs.shape[0] - 1):
            lin += field_vector(row, 0, offs[f], offs[f + 1], src, f, linear, V_c, f)
        inter = 0.0
        for p in range(cc_i.shape[0]):
            inter += cc_r[p] * vdot(vload(V_c, cc_i[p], K), vload(V_c, cc_j[p], K))
        Q = np.zeros((max(n_items, 1), K), np.float32)
        for p in range(ci_c.shape[0]):
            vstore(Q, ci_a[p], vaxpy(vload(Q, ci_a[p], K), ci_r[p], vload(V_c, ci_c[p], K)))
        return Q, lin + inter

    def make_items(IDENT):
        ahead, slot = candidate_walk(dist, mode, K, IDENT)

        @closure_njit
        def items(Q, const, X, single, single_f, g0, multi, pa, pb, pw, src, linear, out, start, stop):
            _ = stamp  # noqa: F841 (keeps the stamp a closure cell)
            V = np.zeros((max(Q.shape[0], 1), K), np.float32)
            n_pairs = pa.shape[0]
            for n in range(start, stop):
                pn = ahead(X, n, stop, src, linear, single, single_f, g0, multi)
                lin = np.float32(0.0)
                acc0 = vzero(K)
                acc1 = vzero(K)
                for i in range(single.shape[0]):
                    idx, a = slot(X, n, pn, i, single, single_f, g0, src, linear)
                    x = vzero(K)
                    if idx >= 0:
                        lin += linear[idx]
                        x = fetch(src, a + g0, idx, K, D)
                    vstore(V, a, x)
                    acc0 = vadd(acc0, vmul(vload(Q, a, K), x))
                if not IDENT:
                    for j in range(multi.shape[0]):
                        a = multi[j, 2]
                        lin += field_vector(X, n, multi[j, 0], multi[j, 1], src, a + g0, linear, V, a)
                        acc1 = vadd(acc1, vmul(vload(Q, a, K), vload(V, a, K)))
                p = 0
                while p + 1 < n_pairs:
                    acc0 = vaxpy(acc0, pw[p], vmul(vload(V, pa[p], K), vload(V, pb[p], K)))
                    acc1 = vaxpy(acc1, pw[p + 1], vmul(vload(V, pa[p + 1], K), vload(V, pb[p + 1], K)))
                    p += 2
                if p < n_pairs:
                    acc0 = vaxpy(acc0, pw[p], vmul(vload(V, pa[p], K), vload(V, pb[p], K)))
                out[n] = const + lin + vsum(vadd(acc0, acc1))

        return items

    items = {True: make_items(True), False: make_items(False)}  # True: every item field single-slot

    return context, items


class PrunedScorer(Scorer):
    """Scores the kept pairs ``pair_i < pair_j`` (global field indices) with weights ``pair_r``."""

    kind = "pruned"

    def _setup(self, arrays):
        self._set_pairs(arrays["pair_i"], arrays["pair_j"], arrays["pair_r"])

    def _set_pairs(self, pi, pj, pr):
        pi, pj = np.asarray(pi, dtype=np.int64).reshape(-1), np.asarray(pj, dtype=np.int64).reshape(-1)
        pr = np.asarray(pr, dtype=np.float32).reshape(-1)
        if not (pi.shape == pj.shape == pr.shape):
            raise ValueError(f"{self.kind} artifact: pair_i, pair_j, pair_r must have equal lengths")
        if pi.size and (pi.min() < 0 or pj.max() >= self.m or np.any(pi >= pj)):
            raise ValueError(f"{self.kind} artifact: pairs must satisfy 0 <= pair_i < pair_j < m={self.m}")
        self.pair_i, self.pair_j, self.pair_r = pi, pj, pr
        self._ctx_fn, self._items_fns = build(self.k, self.prefetch, self.D, self.prefetch_mode)

    def _plan(self, ctx_fields, item_fields, item_offs):
        is_ctx = np.zeros(self.m, dtype=bool)
        is_ctx[ctx_fields] = True
        local = np.full(self.m, -1, dtype=np.int64)  # global field -> position within its role
        local[ctx_fields] = np.arange(len(ctx_fields))
        local[item_fields] = np.arange(len(item_fields))
        pi, pj, pr = self.pair_i, self.pair_j, self.pair_r
        cc = is_ctx[pi] & is_ctx[pj]
        ci = is_ctx[pi] & ~is_ctx[pj]  # context fields come first: i in C, j in I
        ii = ~is_ctx[pi] & ~is_ctx[pj]
        ctx = (local[pi[cc]], local[pj[cc]], pr[cc], local[pi[ci]], local[pj[ci]], pr[ci], len(item_fields))
        single, single_f, multi = split_fields(item_offs)
        g0 = int(item_fields[0]) if len(item_fields) else 0  # global index of the first item field
        item = (single, single_f, g0, multi, local[pi[ii]], local[pj[ii]], pr[ii].copy())
        return ctx, item

    def _context(self, ctx, offs, *params):
        Q, c = self._ctx_fn(ctx, offs, self.src, self.linear, *params)
        return Q, self.bias + c

    def _items(self, state, X, single, single_f, g0, multi, pa, pb, pw, out, start, stop):
        Q, const = state
        args = (Q, const, X, single, single_f, g0, multi, pa, pb, pw, self.src, self.linear, out)
        self._items_fns[multi.shape[0] == 0](*args, start, stop)
