"""Per-ad precompute: every model kind reduces catalog scoring to one dot product + a constant.

Notation of the DPLR-FwFM paper: context fields C, item fields I, field vectors v_f (the mean
of the non-PAD slot embeddings of field f), lin_f likewise, k the embedding dimension.
Artifact semantics (docs/internals.md "Artifact") for a full row:

    fm      b + sum_f lin_f + 1/2 ( ||sum_f v_f||^2             + sum_f d_f ||v_f||^2 )
    dplr    b + sum_f lin_f + 1/2 ( sum_r e_r ||sum_f U_rf v_f||^2 + sum_f d_f ||v_f||^2 )  (Eq. 9)
    pruned  b + sum_f lin_f + sum_{kept i<j} R_ij <v_i, v_j>
    fwfm    b + sum_f lin_f + sum_{i<j} R_ij <v_i, v_j>                                  (Eq. 3)
    lr      b + sum_f lin_f                                             (no embeddings, Eq. 1)

Splitting every sum into its context and item halves gives, for ad a and context x,

    score(x, a) = const_x + c_a + <z_x, W_a>

with one *block* of k numbers per row b of a coefficient matrix, for both sides alike:

    W_a[b] = h_b * sum_{j in I} M_I[b, j] v_j      z_x[b] = h_b * sum_{i in C} M_C[b, i] v_i
    c      = sum_f lin_f + 1/2 sum_f d_f ||v_f||^2 + 1/2 sum_b g_b ||sum_f M[b, f] v_f||^2
             + sum_{same-side pairs (p, q)} r_pq <v_p, v_q>            (f, p, q on that side)

    dplr    M = U (rows r = 1..rho), g = e, scale h = e on the context side only:
            1/2 sum_r e_r ||P_C,r + Q_a,r||^2 = 1/2 e_r||P_C,r||^2 + 1/2 e_r||Q_a,r||^2
            + <e_r P_C,r, Q_a,r>  (Algorithm 1 with Q_a = U_I V_I cached per ad); D = rho k.
    fm      dplr with rho = 1, U = 1, e = 1 (Eq. 7: R_FM = 11^T - I); D = k.
    pruned  context x item pairs: sum_{kept (i in C, j in I)} R_ij <v_i, v_j>
    / fwfm    = sum_{i in C*} <v_i, w_a,i>,  w_a,i = sum_j R_ij v_j, C* = context fields with a
            kept pair into I; so M_C selects C*, M_I = R[C*, I], g = 0, and the item x item /
            context x context pairs go to the constants; D = |C*| k.
    lr      no blocks (B = 0, k = 0): c is the linear part alone, D = 0.

So per candidate the catalog kernel does one D-long dot product (rho k for DPLR) no matter
how many item fields an ad has.  The kernel below evaluates one side for many rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from adrank.core import kinds
from adrank.core.schema import Schema
from service.kernels import pool
from service.kernels.codegen import PRECOMPUTE
from service.kernels.memory import aligned_empty
from service.kernels.rows import CodebookSource, codebook_source, decode_table


class PlanError(ValueError):
    """Model arrays that cannot be planned (names the array and what is wrong)."""


@dataclass(frozen=True)
class Side:
    """The coefficients of one side (context or item) of the split, see the module docstring."""

    offsets: np.ndarray  # int64[m_side + 1], slot offsets relative to this side's first slot
    M: np.ndarray  # float64[B, m_side]
    g: np.ndarray  # float64[B]
    d: np.ndarray  # float64[m_side]
    h: np.ndarray  # float64[B], output scale of each block
    pair_p: np.ndarray  # int64[P], same-side pairs (local field indices)
    pair_q: np.ndarray  # int64[P]
    pair_r: np.ndarray  # float64[P]


@dataclass(frozen=True)
class Plan:
    """How one model splits into a per-request context part and a per-ad part."""

    kind: str
    k: int
    B: int  # blocks of k numbers: D = B * k
    context: Side
    item: Side
    bias: float
    source: CodebookSource | None = None  # of a codebook model (service/kernels/rows.py), else None

    @property
    def D(self) -> int:
        return self.B * self.k


def _pairs(kind: str, arrays: dict, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All kept pairs (i < j) with their weights, for pruned (pair lists) and fwfm (dense R)."""
    if kind == "pruned":
        i, j, r = (np.asarray(arrays[n]) for n in ("pair_i", "pair_j", "pair_r"))
        if not (len(i) == len(j) == len(r)):
            raise PlanError("pair_i, pair_j and pair_r must have the same length")
        if len(i) and (np.any(i >= j) or i.min() < 0 or j.max() >= m):
            raise PlanError(f"pair_i/pair_j must satisfy 0 <= pair_i < pair_j < m = {m}")
        return i.astype(np.int64), j.astype(np.int64), r.astype(np.float64)
    R = np.asarray(arrays["R"], dtype=np.float64)
    if R.shape != (m, m):
        raise PlanError(f"R has shape {R.shape}, expected ({m}, {m})")
    i, j = np.triu_indices(m, 1)
    return i.astype(np.int64), j.astype(np.int64), R[i, j]


def _side(offsets, M, g, d, h, pp, pq, pr) -> Side:
    f64 = np.float64
    return Side(np.asarray(offsets, np.int64), np.ascontiguousarray(M, f64), np.asarray(g, f64),
                np.asarray(d, f64), np.asarray(h, f64), np.asarray(pp, np.int64),
                np.asarray(pq, np.int64), np.asarray(pr, f64))


def make_plan(kind: str, schema: Schema, arrays: dict) -> Plan:
    """Split a model (artifact arrays, see docs/internals.md) into context and item sides."""
    if kind not in kinds.KINDS:
        raise PlanError(f"unknown model kind {kind!r}; expected one of {kinds.NAMES}")
    m, mc = schema.m, schema.m_context
    offs = np.asarray(schema.slot_offsets, np.int64)
    off_c, off_i = offs[: mc + 1], offs[mc:] - offs[mc]
    none = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    if not kinds.KINDS[kind].embedded:  # lr
        for name in ("bias", "linear"):
            if name not in arrays:
                raise PlanError(f"model arrays lack {name!r}")
        ctx = _side(off_c, np.zeros((0, mc)), np.zeros(0), np.zeros(mc), np.zeros(0), *none)
        item = _side(off_i, np.zeros((0, m - mc)), np.zeros(0), np.zeros(m - mc), np.zeros(0), *none)
        return Plan(kind, 0, 0, ctx, item, float(np.asarray(arrays["bias"]).ravel()[0]))
    source = None
    if "emb" not in arrays and "codebooks" in arrays:  # codebook embedding: decode rows per ad batch
        try:
            k = int(np.asarray(arrays["codebooks"]).shape[1] * np.asarray(arrays["codebook_base"]).shape[1])
            source = codebook_source(arrays, k)
        except (KeyError, ValueError, IndexError) as exc:
            raise PlanError(f"codebook model arrays are unusable: {exc}") from None
    for name in ("bias", "linear") if source is not None else ("bias", "linear", "emb"):
        if name not in arrays:
            raise PlanError(f"model arrays lack {name!r}")
    if source is None:
        k = int(np.asarray(arrays["emb"]).shape[1])
    d = np.asarray(arrays.get("d", np.zeros(m)), np.float64)
    if d.shape != (m,):
        raise PlanError(f"d has shape {d.shape}, expected ({m},)")
    if kinds.KINDS[kind].low_rank:
        if kind == "fm":
            U, e = np.ones((1, m)), np.ones(1)
        else:
            U, e = np.asarray(arrays["U"], np.float64), np.asarray(arrays["e"], np.float64)
            if U.shape[1:] != (m,) or e.shape != (U.shape[0],):
                raise PlanError(f"U {U.shape} / e {e.shape} do not match rho x m = ? x {m}")
        ctx = _side(off_c, U[:, :mc], e, d[:mc], e, *none)
        item = _side(off_i, U[:, mc:], e, d[mc:], np.ones_like(e), *none)
        return Plan(kind, k, U.shape[0], ctx, item, float(np.asarray(arrays["bias"]).ravel()[0]), source)
    pi, pj, pr = _pairs(kind, arrays, m)
    cc, ii, ci = (pj < mc), (pi >= mc), (pi < mc) & (pj >= mc)
    cstar = np.unique(pi[ci])  # context fields with a pair into the item fields
    B = len(cstar)
    M_c = np.zeros((B, mc))
    M_c[np.arange(B), cstar] = 1.0
    M_i = np.zeros((B, m - mc))
    np.add.at(M_i, (np.searchsorted(cstar, pi[ci]), pj[ci] - mc), pr[ci])
    zeros_c, zeros_i, ones_b = np.zeros(mc), np.zeros(m - mc), np.ones(B)
    ctx = _side(off_c, M_c, np.zeros(B), zeros_c, ones_b, pi[cc], pj[cc], pr[cc])
    item = _side(off_i, M_i, np.zeros(B), zeros_i, ones_b, pi[ii] - mc, pj[ii] - mc, pr[ii])
    return Plan(kind, k, B, ctx, item, float(np.asarray(arrays["bias"]).ravel()[0]), source)


@numba.njit(inline="always", **PRECOMPUTE)
def pool_field(rows, n, lo, hi, emb, linear, V, f):
    """V[f] = the mean of the embeddings of row ``n``'s non-PAD slots [lo, hi) (zeros if none);
    returns (the mean of their linear weights, ||V[f]||^2), both 0 without any.  Inlined: the
    caller's compile options apply."""
    k = emb.shape[1]
    V[f, :] = 0.0
    cnt = 0
    lin = 0.0
    for s in range(lo, hi):
        t = rows[n, s]
        if t >= 0:
            cnt += 1
            lin += linear[t]
            for j in range(k):
                V[f, j] += emb[t, j]
    if cnt == 0:
        return 0.0, 0.0
    inv = 1.0 / cnt
    sq = 0.0
    for j in range(k):
        V[f, j] *= inv
        sq += V[f, j] * V[f, j]
    return lin * inv, sq


@numba.njit(**PRECOMPUTE)
def side_parts(rows, offsets, emb, linear, M, g, d, h, pp, pq, pr, W, c):
    """For each encoded row (int32[N, S_side]): W[n] (float32[B*k]) and c[n] (float64).

    V_f = mean of the non-PAD slot embeddings of field f (lin_f likewise); then
    W[b] = h_b sum_f M[b, f] V_f and c = sum_f lin_f + 1/2 sum_f d_f ||V_f||^2
    + 1/2 sum_b g_b ||sum_f M[b, f] V_f||^2 + sum_p r_p <V_{p_p}, V_{q_p}>.
    """
    m = offsets.shape[0] - 1
    k = emb.shape[1]
    B = M.shape[0]
    V = np.zeros((m, k))
    P = np.zeros(k)
    for n in range(rows.shape[0]):
        acc = 0.0
        for f in range(m):
            lin, sq = pool_field(rows, n, offsets[f], offsets[f + 1], emb, linear, V, f)
            acc += lin + 0.5 * d[f] * sq
        for b in range(B):
            P[:] = 0.0
            for f in range(m):
                w = M[b, f]
                if w != 0.0:
                    for j in range(k):
                        P[j] += w * V[f, j]
            sq = 0.0
            for j in range(k):
                sq += P[j] * P[j]
                W[n, b * k + j] = h[b] * P[j]
            acc += 0.5 * g[b] * sq
        for p in range(pp.shape[0]):
            dot = 0.0
            for j in range(k):
                dot += V[pp[p], j] * V[pq[p], j]
            acc += pr[p] * dot
        c[n] = acc


def compute_side(side: Side, rows: np.ndarray, emb: np.ndarray, linear: np.ndarray, B: int):
    """(W float32[N, B*k], c float64[N]) of one side for encoded rows int32[N, S_side]."""
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    if rows.ndim != 2 or rows.shape[1] != side.offsets[-1]:
        raise PlanError(f"encoded rows have shape {rows.shape}, expected (N, {int(side.offsets[-1])})")
    n, k = rows.shape[0], emb.shape[1]
    W = aligned_empty((n, B * k))
    c = np.empty(n, dtype=np.float64)

    def run(lo, hi):
        side_parts(rows[lo:hi], side.offsets, emb, linear, side.M, side.g, side.d, side.h,
                   side.pair_p, side.pair_q, side.pair_r, W[lo:hi], c[lo:hi])

    pool.run(run, pool.split(n, pool.cpus(), pool.PARALLEL_MIN_PRECOMPUTE))  # nogil: big batches use every core
    return W, c


def rows_of(plan: Plan, rows: np.ndarray, emb, linear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, emb, linear) to compute with: for a codebook model, the rows' distinct features
    decoded once into a small table (xLightFM Eq. 3) and the ids renumbered into it; for a model
    without embeddings (lr), a zero-width table."""
    if not kinds.KINDS[plan.kind].embedded:
        return rows, np.zeros((1, 0), np.float32), linear
    if plan.source is None:
        return rows, emb, linear
    rows = np.ascontiguousarray(rows, dtype=np.int32)
    ids = np.unique(rows[rows >= 0])
    if ids.size and ids[-1] >= len(linear):
        raise PlanError(f"feature id {int(ids[-1])} is outside the model's {len(linear)} features")
    local = np.where(rows >= 0, np.searchsorted(ids, rows), -1).astype(np.int32)
    return local, decode_table(plan.source, ids), np.ascontiguousarray(np.asarray(linear)[ids])


def ad_parts(plan: Plan, items: np.ndarray, emb, linear):
    """Per-ad (W_a, c_a) for encoded item rows int32[N, S_I] (``emb`` is ignored, may be None,
    for codebook plans)."""
    return compute_side(plan.item, *rows_of(plan, items, emb, linear), plan.B)


def context_part(plan: Plan, ctx: np.ndarray, emb, linear):
    """Per-request (z float32[D], const float64) for one encoded context row int32[S_C]."""
    z, c = compute_side(plan.context, *rows_of(plan, np.asarray(ctx).reshape(1, -1), emb, linear), plan.B)
    return z[0], float(c[0]) + plan.bias
