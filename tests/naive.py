"""The one oracle: every model kind by the paper's literal double sums, in float64.

Slow on purpose and written straight from the equations of the DPLR-FwFM paper, never from
the fast code it checks.  One encoded row ``x`` is int32[S] of feature ids (PAD = -1 in the
unused slots of multi-valued fields); ``offsets`` is the schema's ``slot_offsets`` (field f owns
slots ``offsets[f]:offsets[f+1]``).  A multi-valued field is x_j = 1/n on each of its n values
(Sec. 3.2): its field vector and linear term are means, and it never interacts with itself.

    LR     b + sum_f w_f                                                  (Eq. 1)
    FM     b + sum_f w_f + sum_{i<j} <v_i, v_j>                           (Eq. 2b)
    FwFM   b + sum_f w_f + sum_{i<j} <v_i, v_j> R_ij                      (Eq. 3)
    pruned FwFM with R zeroed outside the rho(m+1) largest |R_ij|, i<j    (Sec. 5.1)
    DPLR   FwFM with R = U^T diag(e) U + diag(d), d = -diag(U^T diag(e) U) (Eq. 10), R densely

All return the raw score (logit for click models, prediction for regression).

``pair_terms`` lists every pair's interaction term R_ij <v_i, v_j> (i < j) and ``explain`` splits
the score into the bias and one value per field: its first-order term w_f plus half of each of
its pairs' terms (the rule service/explain.py documents), by the same literal sums.
"""

from __future__ import annotations

import numpy as np


def field_vectors(x, offsets, emb, linear):
    """(V [m, k], per-field linear terms [m]) of one row, by explicit loops."""
    m = len(offsets) - 1
    k = emb.shape[1]
    V = np.zeros((m, k))
    lin = np.zeros(m)
    for f in range(m):
        ids = [int(t) for t in x[offsets[f] : offsets[f + 1]] if t >= 0]
        for t in ids:
            V[f] += np.asarray(emb[t], dtype=np.float64) / len(ids)
            lin[f] += float(linear[t]) / len(ids)
    return V, lin


def lr_score(x, offsets, bias, linear):
    """b + sum_f w_f: a field's w_f is the mean of its non-PAD values' weights (no embeddings)."""
    s = float(np.asarray(bias).reshape(-1)[0])
    for f in range(len(offsets) - 1):
        ids = [int(t) for t in x[offsets[f] : offsets[f + 1]] if t >= 0]
        for t in ids:
            s += float(linear[t]) / len(ids)
    return s


def fwfm_score(x, offsets, bias, linear, emb, R):
    V, lin = field_vectors(x, offsets, emb, linear)
    m = V.shape[0]
    s = float(np.asarray(bias).reshape(-1)[0]) + lin.sum()  # bias is float32 [1]
    for i in range(m):
        for j in range(i + 1, m):
            s += float(R[i][j]) * float(np.dot(V[i], V[j]))
    return s


def fm_score(x, offsets, bias, linear, emb):
    m = len(offsets) - 1
    return fwfm_score(x, offsets, bias, linear, emb, np.ones((m, m)))


def prune_mask(R, rho):
    """The rho(m+1) largest-magnitude entries of R above the diagonal (ties: row-major order)."""
    m = R.shape[0]
    pairs = [(abs(float(R[i][j])), i, j) for i in range(m) for j in range(i + 1, m)]
    pairs.sort(key=lambda t: -t[0])  # stable: equal magnitudes keep row-major order
    keep = min(rho * (m + 1), len(pairs))
    mask = np.zeros((m, m), dtype=bool)
    for _, i, j in pairs[:keep]:
        mask[i, j] = mask[j, i] = True
    return mask


def pruned_score(x, offsets, bias, linear, emb, R, rho):
    return fwfm_score(x, offsets, bias, linear, emb, np.where(prune_mask(np.asarray(R), rho), R, 0.0))


def dplr_matrix(U, e):
    """R = U^T diag(e) U + diag(d) with d = -diag(U^T diag(e) U), built densely entry by entry."""
    rho, m = np.asarray(U).shape
    R = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            R[i, j] = sum(float(e[r]) * float(U[r][i]) * float(U[r][j]) for r in range(rho))
    d = -np.diag(R).copy()
    return R + np.diag(d)


def dplr_score(x, offsets, bias, linear, emb, U, e):
    return fwfm_score(x, offsets, bias, linear, emb, dplr_matrix(U, e))


def pair_weights(kind, m, params, rho=None):
    """The dense pair matrix R of a kind (its entries above the diagonal are used)."""
    p = params
    if kind == "lr":
        return np.zeros((m, m))
    if kind == "fm":
        return np.ones((m, m))
    if kind == "fwfm":
        return np.asarray(p["R"], dtype=np.float64)
    if kind == "pruned":
        R = np.asarray(p["R"], dtype=np.float64)
        mask = p["mask"] if "mask" in p else prune_mask(R, rho)
        return np.where(mask, R, 0.0)
    if kind == "dplr":
        return dplr_matrix(p["U"], p["e"])
    raise ValueError(f"unknown model kind {kind!r}")


def pair_terms(kind, x, offsets, params, rho=None):
    """{(i, j): R_ij <v_i, v_j>} for every field pair i < j of one row."""
    m = len(offsets) - 1
    if kind == "lr":
        return {(i, j): 0.0 for i in range(m) for j in range(i + 1, m)}
    V, _ = field_vectors(x, offsets, params["emb"], params["linear"])
    R = pair_weights(kind, m, params, rho)
    return {(i, j): float(R[i][j]) * float(np.dot(V[i], V[j])) for i in range(m) for j in range(i + 1, m)}


def explain(kind, x, offsets, params, rho=None):
    """(bias, contributions float64[m]): w_f + 1/2 sum of field f's pair terms; they sum to ``score``."""
    m = len(offsets) - 1
    out = np.zeros(m)
    for f in range(m):
        ids = [int(t) for t in x[offsets[f] : offsets[f + 1]] if t >= 0]
        for t in ids:
            out[f] += float(params["linear"][t]) / len(ids)
    for (i, j), term in pair_terms(kind, x, offsets, params, rho).items():
        out[i] += term / 2
        out[j] += term / 2
    return float(np.asarray(params["bias"]).reshape(-1)[0]), out


def score(kind, x, offsets, params, rho=None):
    """Dispatch by model kind with the shared parameter names (bias, linear, emb, R, U, e)."""
    p = params
    if kind == "lr":
        return lr_score(x, offsets, p["bias"], p["linear"])
    if kind == "fm":
        return fm_score(x, offsets, p["bias"], p["linear"], p["emb"])
    if kind == "fwfm":
        return fwfm_score(x, offsets, p["bias"], p["linear"], p["emb"], p["R"])
    if kind == "pruned":
        if "mask" in p:
            return fwfm_score(x, offsets, p["bias"], p["linear"], p["emb"], np.where(p["mask"], p["R"], 0.0))
        return pruned_score(x, offsets, p["bias"], p["linear"], p["emb"], p["R"], rho)
    if kind == "dplr":
        return dplr_score(x, offsets, p["bias"], p["linear"], p["emb"], p["U"], p["e"])
    raise ValueError(f"unknown model kind {kind!r}")


def scores(kind, X, offsets, params, rho=None):
    return np.array([score(kind, x, offsets, params, rho) for x in np.asarray(X)])
