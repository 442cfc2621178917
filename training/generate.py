"""A synthetic CTR data set drawn from a *planted* FwFM, so accuracy has a known ceiling.

The planted model is the paper's Eq. 3::

    score(x) = b + sum_f w_f + sum_{i<j} <v_i, v_j> R_ij,    label ~ Bernoulli(sigmoid(score)),

with a symmetric zero-diagonal field interaction matrix R chosen by ``interactions``:

* ``dplr`` (default): diagonal plus low rank (Eq. 10), R = U^T diag(e) U + diag(d),
  d = -diag(U^T diag(e) U) -- the model DPLR-FwFM is.  ``U`` (rho x m) is block-structured:
  field j belongs to group ``j mod rho`` and loads strongly on that group's row, weakly (0.3x)
  on the others.  ``e_r = +-0.8^r``: with ``signs="mixed"`` (default) the signs alternate, so R
  is indefinite (some field groups interact negatively); ``signs="positive"`` keeps e_r > 0.
* ``block``: full rank and block-structured, like the FwFM matrices learned on real data that
  motivated the DPLR paper: fields fall into ``groups`` groups (mixing context and item
  fields), R_ij = S[g_i, g_j] + noise, with group-pair strengths S (symmetric, N(0, 1) entries;
  within-group strengths |S_gg| + 0.5, positive) and i.i.d. N(0, ``noise``^2) noise on every
  pair.  Neither DPLR (low rank) nor pruning (a few pairs) is the true model.
* ``sparse``: ``pairs`` strong pairs (|R_ij| uniform in [1, 2], random signs), every other
  pair zero: the case pruning is made for (at rho = 1 it can keep them all when pairs <= m + 1)
  and low rank is not -- the honest control.  Feature frequencies are Zipf-like per field (value of popularity
rank p has probability proportional to (p+1)^-zipf); the last item field is multi-valued
(a list of 1..L distinct values, its vector and linear term are means, Sec. 3.2).

With ``clusters=C`` the embeddings get the structure learned ones show (xLightFM): the C
most popular values of each field are drawn independently (well separated), every other
value sits near one of C per-field centroids.

Weights fade with rarity: the value of popularity rank p has its linear weight and (without
clusters) its embedding scaled by ``(1+p)^-decay`` (default 0.5), as learned models show and
so that the signal sits mostly where the data can teach it; ``decay=0`` spreads it evenly.

Scales are calibrated on a sample so the logit has standard deviation ``signal`` (70% of its
variance from interactions) and the mean CTR is ``ctr``.

Files written to ``out_dir``:

* ``data.tsv.gz`` (or ``data.tsv``): a header (``label`` then the field names), one row per
  line, tokens like ``f3_17`` (field 3's 17th most popular value, 0-based), multi values
  joined by ``|``.  Read it with ``training.data.read_raw("synthetic", out_dir)``.
* ``schema.json``: the :class:`adrank.core.schema.Schema`.
* ``planted.npz``: ``bias`` [1], ``linear`` [V], ``emb`` [V, k], ``R`` [m, m] (dense, zero
  diagonal), ``field_offsets`` [m+1]: token ``f{j}_{p}`` is planted row ``field_offsets[j] + p``;
  ``U`` [rho, m], ``e`` [rho] for ``dplr``, ``group`` [m] for ``block``; with clusters also
  ``cluster`` [V] (-1 = head) and ``centroids`` [m, C, k].
* ``truth.json``: the planted model's AUC / logloss on each split of
  ``training.data.split_of_rows(idx, seed=0)`` — seed 0 is the trainer's default split seed —
  and ``"R"``, the planted m x m interaction matrix (what ``adrank inspect`` compares a trained
  model's effective R with).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adrank.core.gcpause import gc_paused
from adrank.core.schema import Field, Schema
from training.data import SPLITS, split_of_rows
from training.metrics import auc, logloss

INTERACTION_SHARE = 0.7  # fraction of the logit's variance from field interactions
CROSS_GROUP = 0.3  # loading of a field on the other groups' rows of U
INTERACTIONS = ("dplr", "block", "sparse")


def make_schema(fields: int, context_fields: int, multi_max: int) -> Schema:
    """Fields f0.. (context first); the last field is multi-valued when multi_max > 0."""
    if fields < 2 or not 1 <= context_fields < fields:
        raise ValueError(f"need fields >= 2 and 1 <= context_fields < fields, got {fields}, {context_fields}")
    out = []
    for j in range(fields):
        role = "context" if j < context_fields else "item"
        if j == fields - 1 and multi_max > 0:
            out.append(Field(f"f{j}", "multi", role, max_values=multi_max))
        else:
            out.append(Field(f"f{j}", "categorical", role))
    return Schema("synthetic", tuple(out), target="binary", label="label")


class Planted:
    """The planted model over raw tokens and the sampler of raw rows."""

    def __init__(self, schema: Schema, vocab: int, rank: int, embed_dim: int, zipf: float,
                 clusters: int, rng: np.random.Generator, signs: str = "mixed", decay: float = 0.5,
                 interactions: str = "dplr", groups: int = 4, noise: float = 0.3, pairs: int | None = None):
        m = schema.m
        if interactions not in INTERACTIONS:
            raise ValueError(f"interactions must be one of {INTERACTIONS}, got {interactions!r}")
        if vocab < 2 * m:
            raise ValueError(f"vocab must be at least 2 per field ({2 * m}), got {vocab}")
        if rank < 1 or embed_dim < 1 or zipf < 0:
            raise ValueError("rank and embed_dim must be >= 1 and zipf >= 0")
        self.schema, self.k, self.rho = schema, embed_dim, rank
        w = rng.uniform(0.25, 1.75, m)  # fields of different cardinalities
        sizes = np.maximum(np.floor(w / w.sum() * vocab).astype(np.int64), 2)
        sizes[np.argmax(sizes)] += vocab - sizes.sum()
        self.sizes = sizes
        self.field_offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        self.cdf = [np.cumsum(p) / p.sum() for p in (np.arange(1, n + 1) ** -float(zipf) for n in sizes)]
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        popularity_rank = np.concatenate([np.arange(n) for n in sizes])
        scale = (1.0 + popularity_rank) ** -float(decay)  # rarer values matter less
        self.linear = rng.standard_normal(vocab) * scale
        self.emb = rng.standard_normal((vocab, embed_dim)) / np.sqrt(embed_dim)
        self.extra = {}
        if clusters > 0:
            self._plant_clusters(clusters, rng)
        else:
            self.emb *= scale[:, None]
        group = np.arange(m) % rank
        self.U = np.where(group[None, :] == np.arange(rank)[:, None], 1.0, CROSS_GROUP) * rng.uniform(0.5, 1.5, m)
        if signs not in ("mixed", "positive"):
            raise ValueError(f"signs must be 'mixed' or 'positive', got {signs!r}")
        flip = signs == "mixed"  # mixed: e alternates in sign, R is indefinite
        self.e = np.array([(-1.0 if flip and r % 2 else 1.0) * 0.8**r for r in range(rank)])
        self.bias = 0.0
        self.interactions = interactions
        R = self.U.T @ np.diag(self.e) @ self.U
        if interactions == "block":
            R = self._block(groups, noise, rng)
        elif interactions == "sparse":
            R = self._sparse(m if pairs is None else pairs, rng)
        np.fill_diagonal(R, 0.0)
        self._R = R

    def _block(self, groups: int, noise: float, rng) -> np.ndarray:
        """S[g_i, g_j] + N(0, noise^2) per pair; every group has >= 1 field, context and item mixed."""
        m = self.schema.m
        if not 1 <= groups <= m or noise < 0:
            raise ValueError(f"block interactions need 1 <= groups <= m ({m}) and noise >= 0")
        self.group = rng.permutation(np.arange(m) % groups)
        S = rng.standard_normal((groups, groups))
        S = (S + S.T) / np.sqrt(2)
        np.fill_diagonal(S, np.abs(np.diag(S)) + 0.5)
        E = rng.standard_normal((m, m)) * noise
        return S[self.group][:, self.group] + np.triu(E, 1) + np.triu(E, 1).T

    def _sparse(self, pairs: int, rng) -> np.ndarray:
        m = self.schema.m
        i, j = np.triu_indices(m, 1)
        if not 1 <= pairs <= len(i):
            raise ValueError(f"sparse interactions need 1 <= pairs <= m(m-1)/2 = {len(i)}, got {pairs}")
        pick = rng.choice(len(i), pairs, replace=False)
        R = np.zeros((m, m))
        R[i[pick], j[pick]] = rng.uniform(1.0, 2.0, pairs) * rng.choice([-1.0, 1.0], pairs)
        return R + R.T

    def _plant_clusters(self, C: int, rng) -> None:
        """Head (C most popular values per field) independent; tail = centroid + small noise."""
        cluster = np.full(len(self.linear), -1, dtype=np.int64)
        centroids = rng.standard_normal((self.schema.m, C, self.k)) / np.sqrt(self.k)
        for f, (lo, n) in enumerate(zip(self.field_offsets[:-1], self.sizes, strict=True)):
            tail = np.arange(lo + min(C, n), lo + n)
            c = rng.integers(0, C, len(tail))
            cluster[tail] = c
            self.emb[tail] = centroids[f, c] + 0.15 * rng.standard_normal((len(tail), self.k)) / np.sqrt(self.k)
        self.extra = {"cluster": cluster, "centroids": centroids}

    @property
    def R(self) -> np.ndarray:
        return self._R

    def sample(self, n: int, rng) -> np.ndarray:
        """Raw rows as planted indices, int64 [n, S] (PAD = -1 in unused multi slots)."""
        offs = self.schema.slot_offsets
        X = np.full((n, self.schema.n_slots), -1, dtype=np.int64)
        for f, fld in enumerate(self.schema.fields):
            base, cdf = self.field_offsets[f], self.cdf[f]
            if fld.type != "multi":
                X[:, offs[f]] = base + np.searchsorted(cdf, rng.random(n), side="right").clip(max=len(cdf) - 1)
                continue
            L = fld.max_values
            v = base + np.searchsorted(cdf, rng.random((n, L)), side="right").clip(max=len(cdf) - 1)
            keep = np.arange(L)[None, :] < rng.integers(1, L + 1, n)[:, None]
            for j in range(1, L):  # drop repeats: the preprocessor keeps distinct values
                keep[:, j] &= (v[:, j : j + 1] != v[:, :j]).all(axis=1)
            order = np.argsort(~keep, axis=1, kind="stable")  # kept values first, in order
            v, keep = np.take_along_axis(v, order, 1), np.take_along_axis(keep, order, 1)
            X[:, offs[f] : offs[f + 1]] = np.where(keep, v, -1)
        return X

    def pooled(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(V [n, m, k] each field's mean embedding, linear part [n], values per field [n, m])."""
        offs, n = self.schema.slot_offsets, len(X)
        V = np.zeros((n, self.schema.m, self.k))
        lin = np.zeros(n)
        counts = np.zeros((n, self.schema.m))
        for f in range(self.schema.m):
            ids = X[:, offs[f] : offs[f + 1]]
            valid = ids >= 0
            cnt = valid.sum(axis=1)
            safe = np.where(valid, ids, 0)
            V[:, f] = (self.emb[safe] * valid[..., None]).sum(axis=1) / cnt[:, None]
            lin += (self.linear[safe] * valid).sum(axis=1) / cnt
            counts[:, f] = cnt
        return V, lin, counts

    def interaction(self, V: np.ndarray) -> np.ndarray:
        """The interaction part of rows with field vectors V; DPLR by Proposition 1 (Eq. 9), the
        others as 1/2 sum_ij R_ij <v_i, v_j>."""
        if self.interactions != "dplr":
            return 0.5 * np.einsum("nik,ij,njk->n", V, self.R, V, optimize=True)
        P = np.einsum("rm,nmk->nrk", self.U, V)
        d = -(self.e[:, None] * self.U**2).sum(axis=0)
        return 0.5 * (np.einsum("r,nrk->n", self.e, P**2) + np.einsum("m,nmk->n", d, V**2))

    def parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(linear part, interaction part) of each row."""
        V, lin, _ = self.pooled(X)
        return lin, self.interaction(V)

    def score(self, X: np.ndarray) -> np.ndarray:
        lin, inter = self.parts(X)
        return self.bias + lin + inter

    def calibrate(self, X: np.ndarray, ctr: float, signal: float) -> None:
        """Scale linear terms and embeddings, then set the bias, to hit (signal, ctr) on X."""
        lin, inter = self.parts(X)
        a_lin = np.sqrt(1 - INTERACTION_SHARE) * signal / max(lin.std(), 1e-12)
        a_int = np.sqrt(INTERACTION_SHARE) * signal / max(inter.std(), 1e-12)
        self.linear *= a_lin
        self.emb *= np.sqrt(a_int)  # interactions are quadratic in the embeddings
        if "centroids" in self.extra:
            self.extra["centroids"] *= np.sqrt(a_int)
        z = a_lin * lin + a_int * inter
        lo, hi = -20.0, 20.0
        for _ in range(60):  # mean sigmoid is increasing in the bias
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(z + mid)))) < ctr else (lo, mid)
        self.bias = (lo + hi) / 2

    def arrays(self) -> dict[str, np.ndarray]:
        f32 = np.float32
        out = {"bias": np.array([self.bias], f32), "linear": self.linear.astype(f32),
               "emb": self.emb.astype(f32), "R": self.R.astype(f32), "field_offsets": self.field_offsets,
               **self.extra}
        if self.interactions == "dplr":
            out.update(U=self.U.astype(f32), e=self.e.astype(f32))
        elif self.interactions == "block":
            out["group"] = self.group
        return out


def token_table(planted: Planted) -> np.ndarray:
    """Raw token string of every planted row: 'f{j}_{p}'."""
    return np.array([f"{fld.name}_{p}" for fld, n in zip(planted.schema.fields, planted.sizes, strict=True)
                     for p in range(n)], dtype=object)


def _lines(X: np.ndarray, y: np.ndarray, planted: Planted, tokens: np.ndarray) -> str:
    offs = planted.schema.slot_offsets
    cols = [np.where(y > 0, "1", "0").tolist()]
    for f, fld in enumerate(planted.schema.fields):
        if fld.type != "multi":
            cols.append(tokens[X[:, offs[f]]].tolist())
        else:
            cols.append(["|".join(tokens[r[r >= 0]]) for r in X[:, offs[f] : offs[f + 1]]])
    return "".join("\t".join(r) + "\n" for r in zip(*cols, strict=True))


def generate(out_dir, rows: int = 150_000, seed: int = 0, rank: int = 2, vocab: int = 20_000,
             fields: int = 16, context_fields: int = 8, embed_dim: int = 8, zipf: float = 1.1,
             multi_max: int = 4, clusters: int = 0, ctr: float = 0.2, signal: float = 1.2,
             signs: str = "mixed", decay: float = 0.5, interactions: str = "dplr", groups: int = 4,
             noise: float = 0.3, pairs: int | None = None, compress: bool = True, chunk_rows: int = 100_000,
             progress: bool = True) -> dict:
    """Write a planted-model data set to ``out_dir`` (atomically) and return its truth.json."""
    if rows < 10:
        raise ValueError(f"rows must be >= 10, got {rows}")
    if not 0 < ctr < 1 or signal <= 0:
        raise ValueError("ctr must be in (0, 1) and signal > 0")
    schema = make_schema(fields, context_fields, multi_max)
    planted = Planted(schema, vocab, rank, embed_dim, zipf, clusters,
                      np.random.default_rng(np.random.SeedSequence([seed, 0])), signs, decay,
                      interactions, groups, noise, pairs)
    planted.calibrate(planted.sample(min(rows, 50_000), np.random.default_rng([seed, 1])), ctr, signal)
    tokens = token_table(planted)

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        name = "data.tsv.gz" if compress else "data.tsv"
        opener = (lambda p: gzip.open(p, "wt", compresslevel=1)) if compress else (lambda p: open(p, "w"))
        scores, labels = np.empty(rows), np.empty(rows, dtype=np.float32)
        with gc_paused(), opener(tmp / name) as fh, \
                tqdm(total=rows, desc="generate", unit=" rows", disable=None if progress else True) as bar:
            fh.write("\t".join([schema.label] + [f.name for f in schema.fields]) + "\n")
            for c, start in enumerate(range(0, rows, chunk_rows)):
                rng = np.random.default_rng([seed, 2, c])
                X = planted.sample(min(chunk_rows, rows - start), rng)
                s = planted.score(X)
                y = (rng.random(len(s)) < 1 / (1 + np.exp(-s))).astype(np.float32)
                scores[start : start + len(s)], labels[start : start + len(s)] = s, y
                fh.write(_lines(X, y, planted, tokens))
                bar.update(len(s))
        (tmp / "schema.json").write_text(json.dumps(schema.to_dict(), indent=1))
        np.savez(tmp / "planted.npz", **planted.arrays())
        params = dict(rows=rows, seed=seed, interactions=interactions, vocab=vocab, fields=fields,
                      context_fields=context_fields, embed_dim=embed_dim, zipf=zipf, multi_max=multi_max,
                      clusters=clusters, ctr=ctr, signal=signal, decay=decay)
        if interactions == "dplr":
            params.update(rank=rank, signs=signs)
        elif interactions == "block":
            params.update(groups=groups, noise=noise)
        else:
            params["pairs"] = fields if pairs is None else pairs
        truth = _truth(scores, labels, params)
        truth["R"] = planted.R.tolist()
        (tmp / "truth.json").write_text(json.dumps(truth, indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return truth


def _truth(scores: np.ndarray, labels: np.ndarray, params: dict) -> dict:
    """Planted AUC / logloss on every split of split_of_rows(idx, seed=0), and overall."""
    p = 1 / (1 + np.exp(-scores))
    split = split_of_rows(np.arange(len(scores)), 0)
    out = {"rows": len(scores), "split_seed": 0, "params": params, "ctr": float(labels.mean())}
    for s, name in enumerate(SPLITS):
        m = split == s
        ys, ps = labels[m], p[m]
        ok = 0 < ys.sum() < len(ys)
        out[name] = {"rows": int(m.sum()), "ctr": float(ys.mean()) if m.any() else None,
                     "auc": auc(ys, ps) if ok else None, "logloss": logloss(ys, ps) if m.any() else None}
    out["all"] = {"auc": auc(labels, p), "logloss": logloss(labels, p)}
    return out
