"""Pruned FwFM scoring with a cached context (paper Eq. 3 restricted to the kept pairs, Sec. 5.1).

    score(x) = b + sum_f lin_f + sum_{kept (i, j), i < j} R_ij <v_i, v_j>

Kept pairs split by role.  Once per request:  context x context pairs into ``const``, and
for each item field j the context partial vector  q_j = sum_{kept (i, j), i in C} R_ij v_i.
Per candidate, with the item vectors v_a gathered once:

    sum_{a in I active} < q_a + sum_{kept (a, b), b in I, b > a} R_ab v_b , v_a >

i.e. one axpy per kept item x item pair and one dot per item field that has any kept pair —
O((|I| + P_II) k), no per-pair horizontal sums.  Full FwFM (fwfm.py) is this with every pair.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit, prange

from service.kernels.base import Scorer
from service.kernels.config import NJIT, NJIT_PARALLEL, PARALLEL_CHUNK
from service.kernels.fields import field_vector, prefetch_candidate, split_fields
from service.kernels.vec import vaxpy, vdot, vload, vstore, vzero


@cache
def build(K: int, prefetch: bool):
    """(context, items, items_parallel) kernels specialised for embedding dimension ``K``."""

    @njit(**NJIT)
    def context(ctx, offs, emb, linear, cc_i, cc_j, cc_r, ci_c, ci_a, ci_r, n_items):
        V_c = np.zeros((max(offs.shape[0] - 1, 1), K), np.float32)
        lin = 0.0
        for f in range(offs.shape[0] - 1):
            lin += field_vector(ctx, offs[f], offs[f + 1], emb, linear, V_c[f])
        inter = 0.0
        for p in range(cc_i.shape[0]):
            inter += cc_r[p] * vdot(vload(V_c, cc_i[p], K), vload(V_c, cc_j[p], K))
        Q = np.zeros((max(n_items, 1), K), np.float32)
        for p in range(ci_c.shape[0]):
            vstore(Q, ci_a[p], vaxpy(vload(Q, ci_a[p], K), ci_r[p], vload(V_c, ci_c[p], K)))
        return Q, lin + inter

    @njit(**NJIT)
    def items(Q, const, X, single, single_f, multi, act, ptr, nb, w, emb, linear, out, start, stop):
        V = np.zeros((max(Q.shape[0], 1), K), np.float32)
        for n in range(start, stop):
            if prefetch:
                prefetch_candidate(X, n, stop, emb, linear)
            lin = np.float32(0.0)
            for i in range(single.shape[0]):
                idx = X[n, single[i]]
                if idx >= 0:
                    lin += linear[idx]
                    vstore(V, single_f[i], vload(emb, idx, K))
                else:
                    vstore(V, single_f[i], vzero(K))
            for j in range(multi.shape[0]):
                lin += field_vector(X[n], multi[j, 0], multi[j, 1], emb, linear, V[multi[j, 2]])
            inter = np.float32(0.0)
            for a in act:
                t = vload(Q, a, K)
                for p in range(ptr[a], ptr[a + 1]):
                    t = vaxpy(t, w[p], vload(V, nb[p], K))
                inter += vdot(t, vload(V, a, K))
            out[n] = const + lin + inter

    @njit(**NJIT_PARALLEL)
    def items_parallel(Q, const, X, single, single_f, multi, act, ptr, nb, w, emb, linear, out):
        n_chunks = (X.shape[0] + PARALLEL_CHUNK - 1) // PARALLEL_CHUNK
        for c in prange(n_chunks):
            lo = c * PARALLEL_CHUNK
            hi = min(lo + PARALLEL_CHUNK, X.shape[0])
            items(Q, const, X, single, single_f, multi, act, ptr, nb, w, emb, linear, out, lo, hi)

    return context, items, items_parallel


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
        self._ctx_fn, self._items_fn, self._par_fn = build(self.k, self.prefetch)

    def _plan(self, ctx_fields, item_fields, item_offs):
        is_ctx = np.zeros(self.m, dtype=bool)
        is_ctx[ctx_fields] = True
        local = np.full(self.m, -1, dtype=np.int64)  # global field -> position in its role
        local[ctx_fields] = np.arange(len(ctx_fields))
        local[item_fields] = np.arange(len(item_fields))
        pi, pj, pr = self.pair_i, self.pair_j, self.pair_r
        cc = is_ctx[pi] & is_ctx[pj]
        ci = is_ctx[pi] & ~is_ctx[pj]  # context fields come first, so i in C, j in I here
        ii = ~is_ctx[pi] & ~is_ctx[pj]
        ctx = (local[pi[cc]], local[pj[cc]], pr[cc], local[pi[ci]], local[pj[ci]], pr[ci], len(item_fields))
        # item x item pairs as CSR rows a -> (b > a, R_ab); active rows have any kept pair
        a, b, w = local[pi[ii]], local[pj[ii]], pr[ii]
        order = np.lexsort((b, a))
        a, b, w = a[order], b[order], w[order]
        ptr = np.zeros(len(item_fields) + 1, dtype=np.int64)
        np.add.at(ptr, a + 1, 1)
        ptr = np.cumsum(ptr)
        active = np.zeros(len(item_fields), dtype=bool)
        active[a] = True
        active[local[pj[ci]]] = True
        single, single_f, multi = split_fields(item_offs)
        item = (single, single_f, multi, np.flatnonzero(active).astype(np.int64), ptr, b.copy(),
                w.astype(np.float32))
        return ctx, item

    def _context(self, ctx, offs, *params):
        Q, c = self._ctx_fn(ctx, offs, self.emb, self.linear, *params)
        return Q, self.bias + c

    def _items(self, state, X, single, single_f, multi, act, ptr, nb, w, out, parallel):
        Q, const = state
        args = (Q, const, X, single, single_f, multi, act, ptr, nb, w, self.emb, self.linear, out)
        if parallel:
            self._par_fn(*args)
        else:
            self._items_fn(*args, 0, X.shape[0])
