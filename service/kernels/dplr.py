"""DPLR-FwFM scoring with a cached context: the paper's Algorithm 1 (Sec. 4.2, Eq. 9-10).

With R = U^T diag(e) U + diag(d) (Eq. 10) and field vectors V = [V_C; V_I] (Eq. 4),
Proposition 1 gives  sum_{i<j} R_ij <v_i, v_j> = 1/2 ( sum_f d_f ||v_f||^2 + sum_r e_r ||P_r||^2 ),
P = U V.  The artifact folds d_f ||v_f||^2 of single-valued fields into ``linear``; ``d`` keeps
the multi-valued ones (0 elsewhere).

Once per request (step 1):  P_C = U_C V_C  [rho, k],
``const = b + sum_{f in C} lin_f + 1/2 sum_{f in C} d_f ||v_f||^2``  (s_C folded in).
Per candidate (steps 2-3), O(rho |I| k):  P_r = (P_C)_r + sum_{f in I} U_rf v_f,
``score = const + sum_{f in I} lin_f + 1/2 (sum_{f in I} d_f ||v_f||^2 + sum_r e_r ||P_r||^2)``.

For rho <= 4 every P_r stays in registers and each row is read once; larger ranks take one
P_r at a time.

Lane-paired ranks (rho = 2..4, k even).  Per row, the per-field coefficients U_rf are what the
kernel loads besides the rows themselves; one broadcast load per rank per field was the cost
that set DPLR apart from FM on cold rows (docs/results/kernels-micro.md).  Ranks are therefore
taken in pairs (r, r+1) held in two register vectors with the ranks interleaved over the lanes:

    A[t] = P_{r + t%2}[t],   B[t] = P_{r + t%2}[t ^ 1]         (t = 0 .. k-1)
    per field:  w = (U_rf, U_{r+1}f, U_rf, ...)  (one 8-byte load),
                A += w * v_f,   B += w * swap(v_f)              (swap: lanes exchanged in pairs)
    e_r ||P_r||^2 + e_{r+1} ||P_{r+1}||^2 = sum_t E[t] (A[t]^2 + B[t]^2),  E[t] = e_{r + t%2}

so a pair of ranks costs one coefficient load, one in-register lane swap and two FMAs per field
(rho = 3: the pair (0, 1) and rank 2 on its own; rho = 4: pairs (0, 1) and (2, 3)).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from service.kernels.base import Scorer
from service.kernels.codegen import SOURCE_STAMP, closure_njit
from service.kernels.fields import candidate_walk, field_vector, norm2, prefetch_context, split_fields
from service.kernels.rows import fetch
from service.kernels.schedule import PF_LINEAR, prefetch_schedule
from service.kernels.vec import vaxpy, vdot, vfma, vload, vmul, vpair, vstore, vsum, vswap

MAX_REGISTER_RANK = 4  # rho up to this keeps every P_r in registers (one pass over the fields)


def register_rank(rho: int, k: int) -> int:
    """The ``R`` :func:`build` takes for rank rho and dimension k: rho itself when every P_r fits
    in registers (rho <= 4; the lane-paired form needs k even when rho >= 2), else 0 (any rank)."""
    return rho if rho == 1 or (rho <= MAX_REGISTER_RANK and k % 2 == 0) else 0


@cache
def build(K: int, R: int, dist: int, D: int = 1, mode: int = PF_LINEAR):
    """(context, items) for embedding dimension ``K`` and rank ``R`` (:func:`register_rank`;
    ``R == 0``: any rank, one register vector at a time, see ``items_any_rank``); D codebooks
    per field for codebook sources (rows.py); rows of the candidate ``dist`` ahead are prefetched
    (0: none).  ``items`` is a dict: ``items[True]`` for plans whose item fields are all
    single-slot (field i is slot i, no per-field slot lookup, no multi-valued path compiled),
    ``items[False]`` for the rest."""
    stamp = SOURCE_STAMP  # closed over: helper edits invalidate the numba cache
    ctx_prefetch = prefetch_schedule(dist, mode)[2]
    SOLO = 0 if R == 1 else 2 if R == 3 else -1  # the rank held on its own (not lane-paired), if any

    @closure_njit
    def context(ctx, offs, src, linear, U_c, d_c):
        _ = stamp  # noqa: F841 (keeps the stamp a closure cell)
        if ctx_prefetch:
            prefetch_context(ctx, offs, src, linear, mode)
        rho = U_c.shape[0]
        P_c = np.zeros((rho, K), np.float32)
        v = np.empty((1, K), np.float32)
        row = ctx.reshape(1, -1)
        lin = 0.0
        dn = 0.0
        for f in range(offs.shape[0] - 1):
            lin += field_vector(row, 0, offs[f], offs[f + 1], src, f, linear, v, 0)
            x = vload(v, 0, K)
            for r in range(rho):
                vstore(P_c, r, vaxpy(vload(P_c, r, K), U_c[r, f], x))
            dn += d_c[f] * norm2(v, 0)
        return P_c, lin + 0.5 * dn

    @closure_njit
    def paired_start(P_c, e, r):
        """(A, B, E) of the rank pair (r, r+1) as arrays of K lanes (module docstring)."""
        A, B, E = np.empty((1, K), np.float32), np.empty((1, K), np.float32), np.empty((1, K), np.float32)
        for t in range(K):
            A[0, t] = P_c[r + t % 2, t]
            B[0, t] = P_c[r + t % 2, t ^ 1]
            E[0, t] = e[r + t % 2]
        return A, B, E

    @closure_njit(inline="always")
    def accumulate(U, i, x, a, b, c, d, p):
        """Field vector ``x`` with coefficients ``U[i]`` into the rank registers: pair (0, 1) in
        (a, b), pair (2, 3) in (c, d), the solo rank in p (module docstring)."""
        if R >= 2:
            w = vpair(U, i, 0, K)
            xs = vswap(x)
            a = vfma(a, w, x)
            b = vfma(b, w, xs)
            if R == 4:
                w = vpair(U, i, 2, K)
                c = vfma(c, w, x)
                d = vfma(d, w, xs)
        if SOLO >= 0:
            p = vaxpy(p, U[i, SOLO], x)
        return a, b, c, d, p

    def make_registers(IDENT):
        ahead, slot = candidate_walk(dist, mode, K, IDENT)

        @closure_njit
        def items_registers(P_c, const, X, single, single_f, g0, multi, U_s, U_m, d_m, e, src, linear, out, start, stop):
            """rho = R <= 4: every P_r lives in registers (pairs of ranks lane-paired, module
            docstring) and each row is read once; ``if R ...`` tests compile-time constants."""
            _ = stamp  # noqa: F841 (keeps the stamp a closure cell)
            A01, B01, E01 = paired_start(P_c, e, 0) if R >= 2 else (P_c[:1], P_c[:1], P_c[:1])
            A23, B23, E23 = paired_start(P_c, e, 2) if R == 4 else (A01, B01, E01)
            a01, b01, a23, b23, w01 = vload(A01, 0, K), vload(B01, 0, K), vload(A23, 0, K), vload(B23, 0, K), vload(E01, 0, K)
            w23 = vload(E23, 0, K)
            s0 = vload(P_c, max(SOLO, 0), K)
            e_s = e[max(SOLO, 0)]
            v = np.empty((1, K), np.float32)
            for n in range(start, stop):
                pn = ahead(X, n, stop, src, linear, single, single_f, g0, multi)
                a, b, c, d, p, lin = a01, b01, a23, b23, s0, np.float32(0.0)
                for i in range(single.shape[0]):  # single-valued: d_f ||v_f||^2 folded into linear
                    idx, pos = slot(X, n, pn, i, single, single_f, g0, src, linear)
                    if idx >= 0:
                        lin += linear[idx]
                        a, b, c, d, p = accumulate(U_s, i, fetch(src, pos + g0, idx, K, D), a, b, c, d, p)
                dn = 0.0
                if not IDENT:
                    for j in range(multi.shape[0]):  # multi-valued fields: mean vectors, kept diagonal terms
                        lin += field_vector(X, n, multi[j, 0], multi[j, 1], src, multi[j, 2] + g0, linear, v, 0)
                        dn += d_m[j] * norm2(v, 0)
                        a, b, c, d, p = accumulate(U_m, j, vload(v, 0, K), a, b, c, d, p)
                quad = 0.0
                if R >= 2:
                    quad += vsum(vmul(w01, vfma(vmul(a, a), b, b)))
                if R == 4:
                    quad += vsum(vmul(w23, vfma(vmul(c, c), d, d)))
                if SOLO >= 0:
                    quad += e_s * vdot(p, p)
                out[n] = const + lin + 0.5 * (dn + quad)

        return items_registers

    ahead_any, slot_any = candidate_walk(dist, mode, K, False)

    @closure_njit
    def items_any_rank(P_c, const, X, single, single_f, g0, multi, U_s, U_m, d_m, e, src, linear, out, start, stop):
        """Any rho: one P_r in registers at a time (r outer); the first pass gathers the rows
        from memory, the other rho - 1 passes re-read them from L1."""
        _ = stamp  # noqa: F841 (keeps the stamp a closure cell)
        rho = e.shape[0]
        n_m = multi.shape[0]
        V_m = np.empty((max(n_m, 1), K), np.float32)
        for n in range(start, stop):
            pn = ahead_any(X, n, stop, src, linear, single, single_f, g0, multi)
            lin = np.float32(0.0)
            dn = 0.0
            for j in range(n_m):
                lin += field_vector(X, n, multi[j, 0], multi[j, 1], src, multi[j, 2] + g0, linear, V_m, j)
                dn += d_m[j] * norm2(V_m, j)
            for i in range(single.shape[0]):
                idx = slot_any(X, n, pn, i, single, single_f, g0, src, linear)[0]
                if idx >= 0:
                    lin += linear[idx]
            quad = 0.0
            for r in range(rho):
                p = vload(P_c, r, K)
                for i in range(single.shape[0]):
                    idx = X[n, single[i]]
                    if idx >= 0:
                        p = vaxpy(p, U_s[i, r], fetch(src, single_f[i] + g0, idx, K, D))
                for j in range(n_m):
                    p = vaxpy(p, U_m[j, r], vload(V_m, j, K))
                quad += e[r] * vdot(p, p)
            out[n] = const + lin + 0.5 * (dn + quad)

    items = {True: make_registers(True), False: make_registers(False)} if R > 0 else \
        {True: items_any_rank, False: items_any_rank}
    return context, items


class DPLRScorer(Scorer):
    kind = "dplr"

    def _setup(self, arrays):
        self.U = np.ascontiguousarray(arrays["U"], dtype=np.float32)
        self.e = np.ascontiguousarray(np.asarray(arrays["e"]).reshape(-1), dtype=np.float64)
        self.d = np.ascontiguousarray(arrays["d"], dtype=np.float64)
        rho = self.e.shape[0]
        if self.U.shape != (rho, self.m):
            raise ValueError(f"dplr artifact: 'U' must have shape ({rho}, {self.m}), got {self.U.shape}")
        if self.d.shape != (self.m,):
            raise ValueError(f"dplr artifact: 'd' must have shape ({self.m},), got {self.d.shape}")
        self.rho = rho
        self._ctx_fn, self._items_fns = build(self.k, register_rank(rho, self.k), self.prefetch, self.D,
                                              self.prefetch_mode)

    def _plan(self, ctx_fields, item_fields, item_offs):
        single, single_f, multi = split_fields(item_offs)
        U_i = self.U[:, item_fields]
        g0 = int(item_fields[0]) if len(item_fields) else 0  # global index of the first item field
        item = (single, single_f, g0, multi, np.ascontiguousarray(U_i[:, single_f].T),  # [fields, rho]: one row per field
                np.ascontiguousarray(U_i[:, multi[:, 2]].T), self.d[item_fields][multi[:, 2]].copy())
        return (np.ascontiguousarray(self.U[:, ctx_fields]), self.d[ctx_fields].copy()), item

    def _context(self, ctx, offs, U_c, d_c):
        P_c, c = self._ctx_fn(ctx, offs, self.src, self.linear, U_c, d_c)
        return P_c, self.bias + c

    def _items(self, state, X, single, single_f, g0, multi, U_s, U_m, d_m, out, start, stop):
        P_c, const = state
        args = (P_c, const, X, single, single_f, g0, multi, U_s, U_m, d_m, self.e, self.src, self.linear, out)
        self._items_fns[multi.shape[0] == 0](*args, start, stop)
