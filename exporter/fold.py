"""Model parameters -> the artifact's arrays, folding what can be folded (DESIGN.md Sec. 3).

Notation of the DPLR-FwFM paper: m fields with field vectors v_f (means for multi-valued
fields), embeddings emb [n, k], linear weights w [n], bias b.

FM (Eq. 2c)     sum_{i<j} <v_i, v_j> = 1/2 (||sum_f v_f||^2 + sum_f c_f ||v_f||^2),  c_f = -1
DPLR (Eq. 9/10) sum_{i<j} <v_i, v_j> R_ij = 1/2 (sum_f c_f ||v_f||^2 + sum_r e_r ||P_r||^2),
                P = U V,  c = d = -diag(U^T diag(e) U)

For a single-valued field f, v_f = emb_j for the one id j it holds, and every id belongs to
exactly one field, so 1/2 c_f ||v_f||^2 is a per-feature scalar: it is added to ``linear[j]``
and ``d[f]`` is stored as 0.  A multi-valued field's v_f is a mean, whose squared norm is not
the mean of squared norms, so its c_f stays in ``d``.  Folds are computed in float64 and
stored as float32.

Pruned FwFM (Sec. 5.1) becomes the list of kept pairs (i < j, R_ij), ordered context x context,
context x item, item x item (then by i, j) so kernels can do the context block once per
request.  Full FwFM (Eq. 3) keeps the dense R, symmetrised from its upper triangle with a
zero diagonal (R_ff = 0, Sec. 3.2).
"""

from __future__ import annotations

import numpy as np

from adrank.core import kinds
from adrank.core.schema import Schema


class ExportError(ValueError):
    """Parameters that cannot become an artifact: names the array and the problem."""


def check_params(kind: str, p: dict, n: int, m: int, embed_dim: int | None = None) -> int:
    """Validate the shapes of ``export_arrays()``; returns the embedding dimension k.
    With ``embed_dim`` (codebook models, exporter/codebook.py) no ``emb`` table is needed."""
    if kind not in kinds.KINDS:
        raise ExportError(f"unknown model kind {kind!r} (known: {kinds.NAMES})")
    params = kinds.KINDS[kind].params
    if not kinds.KINDS[kind].embedded:
        embed_dim = 0  # no embedding table
    names = ("bias", "linear", *params) if embed_dim is not None else ("bias", "linear", "emb", *params)
    for name in names:
        if name not in p:
            raise ExportError(f"model kind {kind!r} exported no array {name!r}")
        if not np.all(np.isfinite(p[name])):
            raise ExportError(f"array {name!r} holds NaN or infinite values")
    if embed_dim is None:
        emb = p["emb"]
        if emb.ndim != 2 or emb.shape[0] != n:
            raise ExportError(f"emb has shape {emb.shape}, expected ({n}, k): the vocabulary has {n} features")
    expect = {"bias": (1,), "linear": (n,), "R": (m, m), "mask": (m, m)}
    if kind == "dplr":
        rho = p["U"].shape[0] if p["U"].ndim == 2 else -1
        expect.update({"U": (rho, m), "e": (rho,)})
        if rho < 1:
            raise ExportError(f"U has shape {p['U'].shape}, expected (rho, {m})")
    for name, shape in expect.items():
        if name in p and np.shape(p[name]) != shape:
            raise ExportError(f"{name} has shape {np.shape(p[name])}, expected {shape}")
    return int(embed_dim if embed_dim is not None else p["emb"].shape[1])


def diag_coefficients(kind: str, p: dict, m: int) -> np.ndarray:
    """c_f with pairwise = 1/2 (... + sum_f c_f ||v_f||^2): -1 for FM, d for DPLR (Eq. 10)."""
    if kind == "fm":
        return -np.ones(m)
    U = np.asarray(p["U"], dtype=np.float64)
    e = np.asarray(p["e"], dtype=np.float64)
    return -np.einsum("r,rf,rf->f", e, U, U)


def fold_diagonal(kind: str, p: dict, schema: Schema, id_offsets: np.ndarray, sq_norms=None):
    """(linear with single-valued fields' 1/2 c_f ||emb_j||^2 folded in, d for the rest);
    ``sq_norms`` float64 [n] gives ||emb_j||^2 when there is no dense ``emb`` (codebooks)."""
    c = diag_coefficients(kind, p, schema.m)
    linear = np.asarray(p["linear"], dtype=np.float64).copy()
    d = np.zeros(schema.m)
    for f, fld in enumerate(schema.fields):
        if fld.type == "multi":
            d[f] = c[f]
            continue
        lo, hi = int(id_offsets[f]), int(id_offsets[f + 1])
        if sq_norms is not None:
            linear[lo:hi] += 0.5 * c[f] * sq_norms[lo:hi]
        else:
            rows = np.asarray(p["emb"][lo:hi], dtype=np.float64)
            linear[lo:hi] += 0.5 * c[f] * np.einsum("jk,jk->j", rows, rows)
    return linear.astype(np.float32), d.astype(np.float32)


def kept_pairs(R: np.ndarray, mask: np.ndarray, m_context: int):
    """(pair_i, pair_j, pair_r, blocks) of the kept i < j pairs, block-ordered cc, ci, ii."""
    m = R.shape[0]
    i, j = np.nonzero(np.triu(np.asarray(mask, dtype=bool), 1))
    block = (i >= m_context).astype(np.int64) + (j >= m_context)
    order = np.lexsort((j, i, block))
    i, j, block = i[order], j[order], block[order]
    blocks = [int(np.sum(block == b)) for b in range(3)]
    assert np.all(j < m)
    return (i.astype(np.int32), j.astype(np.int32),
            np.asarray(R, dtype=np.float32)[i, j].copy(), blocks)


def fold(kind: str, params: dict, schema: Schema, id_offsets: np.ndarray, sq_norms=None,
         embed_dim: int | None = None) -> tuple[dict, dict]:
    """(arrays for the artifact minus the vocabulary, extra manifest fields) of one model.
    Codebook models pass ``sq_norms`` (||emb_j||^2) and ``embed_dim``; no ``emb`` is written."""
    n = int(id_offsets[-1])
    p = {name: np.asarray(a) for name, a in params.items()}
    k = check_params(kind, p, n, schema.m, embed_dim)
    arrays = {"bias": np.asarray(p["bias"], dtype=np.float32).reshape(1),
              "linear": np.asarray(p["linear"], dtype=np.float32)}
    if embed_dim is None and kinds.KINDS[kind].embedded:
        arrays["emb"] = np.ascontiguousarray(p["emb"], dtype=np.float32)
    extra: dict = {"embed_dim": k, "rank": None}
    if kinds.KINDS[kind].low_rank:
        arrays["linear"], arrays["d"] = fold_diagonal(kind, p, schema, id_offsets, sq_norms)
    if kind == "dplr":
        arrays["U"] = np.asarray(p["U"], dtype=np.float32)
        arrays["e"] = np.asarray(p["e"], dtype=np.float32)
        extra["rank"] = int(p["U"].shape[0])
    elif kind == "fwfm":
        upper = np.triu(np.asarray(p["R"], dtype=np.float32), 1)
        arrays["R"] = upper + upper.T
    elif kind == "pruned":
        i, j, r, blocks = kept_pairs(p["R"], p["mask"], schema.m_context)
        arrays.update(pair_i=i, pair_j=j, pair_r=r)
        extra.update(n_pairs=len(i), pair_blocks=blocks)
    return arrays, extra
