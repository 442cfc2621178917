"""Shared layers: swappable embedding tables and the field pooling every model starts from.

Notation (DPLR-FwFM paper, Sec. 3): an encoded row ``x`` is int32/int64 [S] of global feature
ids (PAD = -1 in the unused slots of multi-valued fields); field f owns slots
``schema.slot_offsets[f]:slot_offsets[f+1]``.  The field vector ``v_f`` (a row of ``V``,
Eq. 4) is the mean of the embeddings of field f's non-PAD slots, and its linear term is the
mean of their linear weights (Sec. 3.2: a multi-valued field is x_j = 1/n on its n values).

The embedding seam
    ``make_embedding(n_features, k, kind="dense", **opts)`` returns a module mapping LongTensor
    ids ``[...]`` (all >= 0) to ``[..., k]`` and exposing ``table() -> Tensor [n_features, k]``
    (the decoded table, used by ``export_arrays``).  A codebook embedding (LightFM / xLightFM)
    (LightFM / xLightFM) is named in ``CODEBOOK_EMBEDDINGS`` and built by ``training.quantize``
    with the same call signature; models never look inside.

Regularisation (adrank/core/train_config.py): ``forward(x, penalty=True)`` also returns the batch means
of the squared norms of the embedding vectors and linear weights the batch looked up, and the
squared Frobenius norm of the effective interaction matrix R (not of U and e, whose scale is
free: U -> aU, e -> e/a^2 is the same model, and a penalty on them pulls the near-zero start
into the saddle at U = e = 0), which the trainer weighs by its own coefficients.  A
multi-valued field's n values weigh 1/n each, as they do in its field vector.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adrank.core.schema import Schema


class DenseEmbedding(nn.Module):
    """A plain table ``W`` [n_features, k]: ``ids [...] -> W[ids] [..., k]``."""

    def __init__(self, n_features: int, k: int, init_std: float = 0.01):
        super().__init__()
        self.n_features, self.k = int(n_features), int(k)
        self.weight = nn.Parameter(torch.randn(n_features, k) * init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)

    def table(self) -> torch.Tensor:
        return self.weight


CODEBOOK_EMBEDDINGS = ("lightfm", "xlightfm")  # built by training.quantize.make_codebook_embedding


def make_embedding(n_features: int, k: int, kind: str = "dense", **opts) -> nn.Module:
    """An embedding module ``ids [...] -> [..., k]`` of ``kind`` ("dense" or a codebook kind)."""
    if kind != "dense" and kind not in CODEBOOK_EMBEDDINGS:
        raise ValueError(f"unknown embedding kind {kind!r}; known: {['dense', *CODEBOOK_EMBEDDINGS]}")
    if n_features < 1 or k < 1:
        raise ValueError(f"embedding needs n_features >= 1 and k >= 1, got {n_features}, {k}")
    if kind == "dense":
        return DenseEmbedding(n_features, k, **opts)
    from training.quantize import make_codebook_embedding  # torch modules of their own, loaded on demand

    return make_codebook_embedding(n_features, k, kind, **opts)


class FieldModel(nn.Module):
    """Base of every model: bias ``b0``, linear weights ``b`` and embeddings ``w`` (Sec. 3.1).

    ``fields(x)`` turns x [B, S] into the field matrix V [B, m, k] and the first-order part
    ``b0 + <b, x>`` [B]; subclasses add ``interaction(V)`` [B], the pairwise term, and name
    their field-interaction parameters in ``interaction_params``.  A kind without embeddings
    (logistic regression) sets ``uses_embedding = False``: V is then None.
    """

    kind: str = ""
    uses_embedding = True
    interaction_params: tuple[str, ...] = ()

    def __init__(self, schema: Schema, n_features: int, embed_dim: int, embedding: str = "dense",
                 embedding_opts: dict | None = None):
        super().__init__()
        self.schema, self.n_features = schema, int(n_features)
        self.embed_dim = int(embed_dim) if self.uses_embedding else 0
        self.m = schema.m
        self.embedding_kind, self.embedding_opts = embedding, dict(embedding_opts or {})
        self.embedding = (make_embedding(n_features, embed_dim, embedding, **self.embedding_opts)
                          if self.uses_embedding else None)
        self.linear = make_embedding(n_features, 1, "dense", init_std=0.0)
        self.bias = nn.Parameter(torch.zeros(1))
        offs = np.asarray(schema.slot_offsets)
        self.single_slot = bool(np.all(np.diff(offs) == 1))
        # pool[s, f] = 1 when slot s belongs to field f: V = (E^T pool) / counts
        pool = np.zeros((schema.n_slots, schema.m), dtype=np.float32)
        for f in range(schema.m):
            pool[offs[f]:offs[f + 1], f] = 1.0
        self.register_buffer("pool", torch.from_numpy(pool), persistent=False)

    @property
    def rank(self) -> int | None:
        return None

    def forward(self, x: torch.Tensor, penalty: bool = False):
        """Raw scores [B]; with ``penalty`` also (emb_sq, lin_sq, interaction_sq): the batch means
        of the looked-up embeddings' and linear weights' squared norms, and the squared norm of
        the interaction parameters (see the module docstring)."""
        V, first, sq = self._fields(x, penalty)
        out = first if V is None else first + self.interaction(V)
        if not penalty:
            return out
        inter = self.R.pow(2).sum() if self.interaction_params else out.new_zeros(())
        return out, sq[0], sq[1], inter

    def interaction(self, V: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fields(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(V [B, m, k] or None, b0 + <b, x> [B]) of a batch of encoded rows x [B, S]."""
        V, first, _ = self._fields(x, False)
        return V, first

    def set_penalty_weights(self, w) -> None:
        """Per-feature weights of the looked-up penalties (float [n]; None = every occurrence 1).
        The trainer passes 1 / (training count) for ``l2_scale="feature"``."""
        self.penalty_weight = None if w is None else torch.as_tensor(np.asarray(w), dtype=torch.float32)

    penalty_weight: torch.Tensor | None = None

    def _fields(self, x: torch.Tensor, penalty: bool):
        if x.dim() != 2 or x.shape[1] != self.schema.n_slots:
            raise ValueError(f"expected x of shape [B, {self.schema.n_slots}], got {tuple(x.shape)}")
        x = x.long()
        if self.single_slot:  # every field one slot: V is the gathered rows
            E = self.embedding(x) if self.uses_embedding else None
            b = self.linear(x).squeeze(-1)
            sq = None
            if penalty:
                w = self.penalty_weight[x] if self.penalty_weight is not None else None
                sq = (self._sq(E.pow(2).sum(-1), w) if E is not None else b.new_zeros(()), self._sq(b.pow(2), w))
            return E, self.bias + b.sum(1), sq
        present = (x >= 0).to(self.pool.dtype)  # [B, S]
        ids = x.clamp(min=0)
        counts = (present @ self.pool).clamp(min=1.0)  # [B, m] non-PAD slots per field
        weight = present / (counts @ self.pool.T)  # [B, S]: 1/n on each of a field's n values, 0 on PAD
        if penalty and self.penalty_weight is not None:
            weight = weight * self.penalty_weight[ids]
        b = self.linear(ids).squeeze(-1)
        lin = ((b * present) @ self.pool) / counts  # [B, m]
        V = sq_e = None
        if self.uses_embedding:
            E = self.embedding(ids) * present.unsqueeze(-1)  # [B, S, k]
            V = torch.einsum("bsk,sm->bmk", E, self.pool) / counts.unsqueeze(-1)
            if penalty:
                sq_e = self._sq(E.pow(2).sum(-1), weight)
        sq = None
        if penalty:
            sq = (sq_e if sq_e is not None else b.new_zeros(()), self._sq(b.pow(2), weight))
        return V, self.bias + lin.sum(1), sq

    @staticmethod
    def _sq(sq: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """Batch mean of sum over slots of (weighted) squared norms, sq [B, S]."""
        return (sq if weight is None else sq * weight).sum(1).mean()

    def export_arrays(self) -> dict[str, np.ndarray]:
        """float32 arrays named as in docs/internals.md: bias [1], linear [n], emb [n, k] (decoded),
        plus a codebook embedding's own ``export_arrays()`` (codebooks, codes, ...)."""
        with torch.no_grad():
            out = {"bias": to_numpy(self.bias), "linear": to_numpy(self.linear.table()[:, 0])}
            if self.uses_embedding:
                out["emb"] = to_numpy(self.embedding.table())
        if hasattr(self.embedding, "export_arrays"):
            out.update({k: v for k, v in self.embedding.export_arrays().items() if k not in out})
        return out

    def describe(self) -> dict:
        """What ``build`` needs to recreate this model (stored in checkpoints)."""
        return {"kind": self.kind, "rank": self.rank, "embed_dim": self.embed_dim,
                "n_features": self.n_features, "embedding": self.embedding_kind,
                "embedding_opts": self.embedding_opts, "schema": self.schema.to_dict()}


INITS = ("fm", "small")


def check_init(init: str) -> str:
    """The field-interaction start: "fm" (R = 11^T - I) or "small" (near zero)."""
    if init not in INITS:
        raise ValueError(f"interaction init must be one of {INITS}, got {init!r}")
    return init


def small_normal(*shape: int, std: float = 0.01) -> torch.Tensor:
    """Near-zero start of field-interaction parameters (truncated at 2 std, as the paper's code)."""
    return nn.init.trunc_normal_(torch.empty(*shape), std=std, a=-2 * std, b=2 * std)


def symmetric_from_upper(upper: torch.Tensor, m: int) -> torch.Tensor:
    """The symmetric zero-diagonal m x m matrix whose i<j entries (row-major) are ``upper``."""
    i, j = torch.triu_indices(m, m, offset=1, device=upper.device)
    R = upper.new_zeros(m, m)
    R = R.index_put((i, j), upper)
    return R + R.T


def pairwise(V: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v_i, v_j> R_ij = 1/2 sum_i <v_i, (R V)_i> (Eq. 3, 5), R symmetric zero-diagonal.

    R V is one [m, m] x [m, B k] matrix product, cheaper than forming and weighting every row's
    m x m Gram matrix <v_i, v_j> (B small products)."""
    RV = torch.einsum("ij,bjk->bik", R, V)
    return 0.5 * (V * RV).sum(dim=(1, 2))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))
