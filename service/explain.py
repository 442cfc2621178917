"""Per-field explanations of a score: ``"explain": true`` on ``POST /v1/rank``.

Every kind is additive over fields and field pairs.  With field vectors V_f (the mean of a field's
non-PAD embeddings), first-order terms w_f (the mean of its values' weights) and the pair
weights R_ij of the model (fm: 1; fwfm: R; pruned: R on the kept pairs; dplr: (U^T diag(e) U)_ij;
lr: none), the raw score is

    raw = b + sum_f w_f + sum_{i<j} R_ij <V_i, V_j>

and the explanation gives the bias ``b`` and, per field f,

    contribution_f = w_f + 1/2 sum_{j != f} R_fj <V_f, V_j>

**the rule: each pair's interaction is split evenly between its two fields**, so the bias and the
fields sum to the raw score (the logit of a click model).  The artifact folds the diagonal terms
of single-valued fields into ``linear`` (docs/internals.md "Artifact"); they are attributed back to
their own field here (``self_f = 1/2 (R_ff + d_f)``, times ||V_f||^2), so a field's value is its
paper term w_f plus its half of its pairs.

The matrix comes from the catalog's :class:`~service.catalog.precompute.Plan` (the one split every
kind already has: the context and item sides' blocks, their same-side pairs), so the explanation
reads exactly the arrays the scorer reads, codebook models included (their rows decoded as the
catalog decodes them).  The kernel runs on the full encoded rows of the explained ads only
(context + item slots): at most the request's cap of ads, a few microseconds each.
"""

from __future__ import annotations

import numba
import numpy as np

from adrank.core import kinds
from service.catalog.precompute import Plan, pool_field, rows_of
from service.kernels.codegen import PLAIN


def pair_matrix(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(R float64[m, m] symmetric with a zero diagonal, self float64[m]) of a plan."""
    mc = len(plan.context.offsets) - 1
    m = mc + len(plan.item.offsets) - 1
    R = np.zeros((m, m))
    self_w = 0.5 * np.concatenate([plan.context.d, plan.item.d])
    if plan.B == 0 or plan.k == 0:
        return R, np.zeros(m) if plan.k == 0 else self_w
    if not kinds.KINDS[plan.kind].low_rank:  # fwfm, pruned: same-side pairs listed, cross pairs in the blocks
        for side, off in ((plan.context, 0), (plan.item, mc)):
            R[side.pair_p + off, side.pair_q + off] += side.pair_r
        cstar = np.argmax(plan.context.M, axis=1)  # block b selects context field cstar[b]
        R[cstar[:, None], mc + np.arange(m - mc)[None, :]] += plan.item.M
        R = R + R.T
    else:  # low rank (fm, dplr): R = U^T diag(e) U over both sides' columns of U
        U = np.concatenate([plan.context.M, plan.item.M], axis=1)
        full = U.T @ (plan.context.g[:, None] * U)
        self_w = self_w + 0.5 * np.diag(full)
        R = full - np.diag(np.diag(full))
    return R, self_w


@numba.njit(**PLAIN)
def explain_rows(rows, offsets, emb, linear, R, self_w, out):
    """out[n, f] = field f's contribution (see the module docstring) for encoded rows int32[N, S]."""
    m = offsets.shape[0] - 1
    k = emb.shape[1]
    V = np.zeros((m, k))
    for n in range(rows.shape[0]):
        for f in range(m):
            lin, sq = pool_field(rows, n, offsets[f], offsets[f + 1], emb, linear, V, f)
            out[n, f] = lin + self_w[f] * sq
        for i in range(m):
            for j in range(i + 1, m):
                r = R[i, j]
                if r != 0.0:
                    dot = 0.0
                    for t in range(k):
                        dot += V[i, t] * V[j, t]
                    half = 0.5 * r * dot
                    out[n, i] += half
                    out[n, j] += half


def _matrix(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, self, full slot offsets) of a model, computed once and kept on it."""
    got = getattr(model, "_explain_matrix", None)
    if got is None:
        plan = model.plan
        R, self_w = pair_matrix(plan)
        offs = np.concatenate([plan.context.offsets, plan.item.offsets[1:] + plan.context.offsets[-1]])
        got = (R, self_w, offs)
        object.__setattr__(model, "_explain_matrix", got)  # a frozen dataclass: a private cache
    return got


def contributions(model, rows: np.ndarray) -> np.ndarray:
    """float64[N, m]: per-field contributions of full encoded rows int32[N, S] for a catalog
    :class:`~service.catalog.store.Model` (its plan, arrays and codebook source)."""
    plan = model.plan
    R, self_w, offs = _matrix(model)
    rows, emb, linear = rows_of(plan, np.ascontiguousarray(rows, np.int32), model.arrays["emb"],
                                 model.arrays["linear"])
    out = np.empty((rows.shape[0], len(offs) - 1))
    explain_rows(rows, offs, np.ascontiguousarray(emb), np.ascontiguousarray(linear).ravel(), R, self_w, out)
    return out


def explain(model, ctx: np.ndarray, items: np.ndarray) -> list[dict]:
    """``{"bias", "fields": {name: contribution}}`` per item row int32[N, S_I] under context ``ctx``."""
    if len(items) == 0:
        return []
    rows = np.concatenate([np.repeat(np.asarray(ctx, np.int32)[None, :], len(items), 0),
                           np.asarray(items, np.int32)], axis=1)
    out = contributions(model, rows)
    names = [f.name for f in model.preprocessor.schema.fields]
    bias = float(model.plan.bias)
    return [{"bias": bias, "fields": dict(zip(names, row, strict=True))} for row in out.tolist()]
