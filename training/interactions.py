"""What a model learned about field interactions: the effective m x m matrix R, per-field
importance, and the comparison with a planted R (numpy only: works on artifacts without torch).

Effective R by kind (the matrix the score uses, sum_{i<j} R_ij <v_i, v_j>, zero diagonal):

    lr      0 (no interactions)
    fm      1 off the diagonal (Eq. 7: R_FM = 11^T - I)
    fwfm    R
    pruned  R on the kept pairs, 0 elsewhere
    dplr    U^T diag(e) U + diag(d), d = -diag(U^T diag(e) U)     (Eq. 10)

Field importance: the DPLR-FwFM paper's future work (Sec. 6) notes that a field whose column of
U is negligible can be dropped.  ``importance`` is, per field f, ``sqrt(sum_r |e_r| U_rf^2)``
for DPLR -- invariant to the free scale (U, e) -> (aU, e/a^2) -- and the root mean square of
row f of R for the other kinds; both are divided by the largest field's, so the most
important field is 1.  Interaction weight alone does not say how much a field moves the score
(that also depends on its embeddings' norms), so ``usage`` adds, per field, the root mean square
of its learned embedding rows times that weight (``embedding_norm`` the rms norm).

Comparing a learned R with a planted one needs a common gauge: the score depends on R only
through R_ij <v_i, v_j>, so scaling or negating every embedding of field i and dividing row and
column i of R alike gives the same model -- a learned R is the planted one only up to
R -> D R D for a diagonal D.  ``planted_gauge`` removes that freedom with the data: on rows of the
generated data set, the learned pair product <v_i, v_j> is regressed on the planted one; its
slope g_ij is (d_i d_j) and R_ij g_ij is the learned interaction in the planted model's units.
``summary`` reports the Pearson correlation in that gauge (and the raw one beside it).
"""

from __future__ import annotations

import numpy as np


def effective_R(kind: str, arrays: dict, m: int) -> np.ndarray:
    """float64 [m, m] effective interaction matrix of a model's arrays (export_arrays() names,
    or an artifact's: pruned ``pair_i``/``pair_j``/``pair_r`` are accepted too)."""
    if kind == "lr":
        return np.zeros((m, m))
    if kind == "fm":
        return np.ones((m, m)) - np.eye(m)
    if kind == "dplr":
        U = np.asarray(arrays["U"], dtype=np.float64)
        e = np.asarray(arrays["e"], dtype=np.float64)
        R = U.T @ (e[:, None] * U)
        np.fill_diagonal(R, 0.0)
        return R
    if kind == "pruned" and "R" not in arrays:
        R = np.zeros((m, m))
        i, j = np.asarray(arrays["pair_i"]), np.asarray(arrays["pair_j"])
        R[i, j] = R[j, i] = np.asarray(arrays["pair_r"], dtype=np.float64)
        return R
    if kind in ("fwfm", "pruned"):
        R = np.asarray(arrays["R"], dtype=np.float64).copy()
        if kind == "pruned" and "mask" in arrays:
            R = np.where(np.asarray(arrays["mask"], dtype=bool), R, 0.0)
        upper = np.triu(R, 1)
        return upper + upper.T
    raise ValueError(f"unknown model kind {kind!r}")


def importance(kind: str, arrays: dict, m: int) -> np.ndarray:
    """Per-field interaction weight in [0, 1] (see the module docstring); zeros for lr."""
    if kind == "dplr":
        U = np.asarray(arrays["U"], dtype=np.float64)
        w = np.sqrt((np.abs(np.asarray(arrays["e"], dtype=np.float64))[:, None] * U**2).sum(0))
    else:
        R = effective_R(kind, arrays, m)
        w = np.sqrt((R**2).sum(1) / max(m - 1, 1))
    top = w.max() if len(w) else 0.0
    return w / top if top > 0 else w


def embedding_norms(arrays: dict, id_offsets) -> np.ndarray:
    """Root mean square norm of each field's embedding rows (0 without an embedding table)."""
    off = np.asarray(id_offsets, dtype=np.int64)
    if "emb" not in arrays:
        return np.zeros(len(off) - 1)
    emb = np.asarray(arrays["emb"], dtype=np.float64)
    return np.array([np.sqrt((emb[a:b] ** 2).sum(1).mean()) if b > a else 0.0 for a, b in zip(off[:-1], off[1:], strict=True)])


def offdiag_pearson(A: np.ndarray, B: np.ndarray) -> float:
    """Pearson correlation of two m x m matrices over their off-diagonal entries (i != j)."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.shape != B.shape or A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"need two square matrices of one shape, got {A.shape} and {B.shape}")
    off = ~np.eye(A.shape[0], dtype=bool)
    a, b = A[off], B[off]
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def planted_gauge(arrays: dict, preprocessor, data_dir, rows: int = 20000) -> np.ndarray | None:
    """g [m, m]: slope of the learned <v_i, v_j> on the planted one over the first ``rows`` rows of
    a generated data set (``data_dir`` with planted.npz and data.tsv[.gz]); None without them."""
    import gzip
    from pathlib import Path

    d = Path(data_dir)
    data = next((d / n for n in ("data.tsv.gz", "data.tsv") if (d / n).is_file()), None)
    if "emb" not in arrays or data is None or not (d / "planted.npz").is_file():
        return None
    with np.load(d / "planted.npz") as z:
        p_emb, fo = np.asarray(z["emb"], dtype=np.float64), np.asarray(z["field_offsets"])
    schema = preprocessor.schema
    opener = gzip.open if data.suffix == ".gz" else open
    raw = []
    with opener(data, "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = [header.index(f.name) for f in schema.fields]
        for line in fh:
            raw.append(line.rstrip("\n").split("\t"))
            if len(raw) >= rows:
                break
    m, n = schema.m, len(raw)
    Vp = np.zeros((n, m, p_emb.shape[1]))
    dicts = []
    for r, toks in enumerate(raw):
        row = {}
        for f, fld in enumerate(schema.fields):
            vals = [v for v in toks[col[f]].split("|") if v] if fld.type == "multi" else [toks[col[f]]]
            Vp[r, f] = p_emb[[fo[f] + int(v.rsplit("_", 1)[1]) for v in vals]].mean(0)
            row[fld.name] = vals if fld.type == "multi" else vals[0]
        dicts.append(row)
    X = preprocessor.encode_rows(dicts)
    emb = np.asarray(arrays["emb"], dtype=np.float64)
    offs = schema.slot_offsets
    Vl = np.zeros((n, m, emb.shape[1]))
    for f in range(m):
        ids = X[:, offs[f]:offs[f + 1]]
        ok = ids >= 0
        Vl[:, f] = (emb[np.where(ok, ids, 0)] * ok[..., None]).sum(1) / np.maximum(ok.sum(1), 1)[:, None]
    g = np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            q = (Vp[:, i] * Vp[:, j]).sum(1)
            lq = (Vl[:, i] * Vl[:, j]).sum(1)
            var = q.var()
            g[i, j] = g[j, i] = ((lq - lq.mean()) * (q - q.mean())).mean() / var if var > 0 else 0.0
    return g


def summary(kind: str, arrays: dict, schema, id_offsets, truth_R=None, gauge=None) -> dict:
    """The ``adrank inspect`` report of one model's arrays (JSON-ready)."""
    m = schema.m
    R = effective_R(kind, arrays, m)
    imp = importance(kind, arrays, m)
    norms = embedding_norms(arrays, id_offsets)
    usage = imp * norms
    top = usage.max() if len(usage) and usage.max() > 0 else 1.0
    fields = [{"name": f.name, "role": f.role, "type": f.type, "importance": float(imp[i]),
               "embedding_norm": float(norms[i]), "usage": float(usage[i] / top)}
              for i, f in enumerate(schema.fields)]
    out = {"kind": kind, "m": m, "fields": fields, "R": R.tolist(),
           "least_important": [fields[i]["name"] for i in np.argsort(usage, kind="stable")]}
    if truth_R is not None:
        out["pearson_vs_planted_raw"] = offdiag_pearson(R, truth_R)
        if gauge is not None:
            out["R_planted_gauge"] = (R * gauge).tolist()
            out["pearson_vs_planted"] = offdiag_pearson(R * gauge, truth_R)
    return out


def plot(R: np.ndarray, names: list[str], out, truth_R=None, title: str = "learned R") -> None:
    """Heatmap PNG of R (beside the planted R when given), one colour scale per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adrank.core.files import replacing

    panels = [(title, np.asarray(R))] + ([("planted R", np.asarray(truth_R))] if truth_R is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, M) in zip(axes[0], panels, strict=True):
        lim = float(np.abs(M).max()) or 1.0
        im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(name)
        ticks = range(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize=6)
        ax.set_yticks(ticks, names, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if truth_R is not None:
        fig.suptitle(f"Pearson over off-diagonal entries: {offdiag_pearson(R, truth_R):.3f}")
    fig.tight_layout()
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
