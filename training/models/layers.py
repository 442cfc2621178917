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
    registers itself in ``EMBEDDINGS`` with the same call signature; models never look inside.
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


EMBEDDINGS: dict[str, type[nn.Module]] = {"dense": DenseEmbedding}


def make_embedding(n_features: int, k: int, kind: str = "dense", **opts) -> nn.Module:
    """An embedding module ``ids [...] -> [..., k]`` of the registered ``kind``."""
    if kind not in EMBEDDINGS:
        import training.quantize  # noqa: F401  (registers the codebook kinds, see its _register)
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown embedding kind {kind!r}; known: {sorted(EMBEDDINGS)}")
    if n_features < 1 or k < 1:
        raise ValueError(f"embedding needs n_features >= 1 and k >= 1, got {n_features}, {k}")
    return EMBEDDINGS[kind](n_features, k, **opts)


class FieldModel(nn.Module):
    """Base of every model: bias ``b0``, linear weights ``b`` and embeddings ``w`` (Sec. 3.1).

    ``fields(x)`` turns x [B, S] into the field matrix V [B, m, k] and the first-order part
    ``b0 + <b, x>`` [B].  Subclasses add the pairwise term in ``forward``.
    """

    kind: str = ""

    def __init__(self, schema: Schema, n_features: int, embed_dim: int, embedding: str = "dense",
                 embedding_opts: dict | None = None):
        super().__init__()
        self.schema, self.n_features, self.embed_dim = schema, int(n_features), int(embed_dim)
        self.m = schema.m
        self.embedding_kind, self.embedding_opts = embedding, dict(embedding_opts or {})
        self.embedding = make_embedding(n_features, embed_dim, embedding, **self.embedding_opts)
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

    def fields(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V [B, m, k], b0 + <b, x> [B]) of a batch of encoded rows x [B, S]."""
        if x.dim() != 2 or x.shape[1] != self.schema.n_slots:
            raise ValueError(f"expected x of shape [B, {self.schema.n_slots}], got {tuple(x.shape)}")
        x = x.long()
        if self.single_slot:  # every field one slot: V is the gathered rows
            return self.embedding(x), self.bias + self.linear(x).squeeze(-1).sum(1)
        present = (x >= 0).to(self.pool.dtype)  # [B, S]
        ids = x.clamp(min=0)
        counts = (present @ self.pool).clamp(min=1.0)  # [B, m] non-PAD slots per field
        E = self.embedding(ids) * present.unsqueeze(-1)  # [B, S, k]
        V = torch.einsum("bsk,sm->bmk", E, self.pool) / counts.unsqueeze(-1)
        lin = ((self.linear(ids).squeeze(-1) * present) @ self.pool) / counts  # [B, m]
        return V, self.bias + lin.sum(1)

    def export_arrays(self) -> dict[str, np.ndarray]:
        """float32 arrays named as in docs/internals.md: bias [1], linear [n], emb [n, k] (decoded),
        plus a codebook embedding's own ``export_arrays()`` (codebooks, codes, ...)."""
        with torch.no_grad():
            out = {
                "bias": to_numpy(self.bias),
                "linear": to_numpy(self.linear.table()[:, 0]),
                "emb": to_numpy(self.embedding.table()),
            }
        if hasattr(self.embedding, "export_arrays"):
            out.update({k: v for k, v in self.embedding.export_arrays().items() if k not in out})
        return out

    def describe(self) -> dict:
        """What ``build`` needs to recreate this model (stored in checkpoints)."""
        return {"kind": self.kind, "rank": self.rank, "embed_dim": self.embed_dim,
                "n_features": self.n_features, "embedding": self.embedding_kind,
                "embedding_opts": self.embedding_opts, "schema": self.schema.to_dict()}


def symmetric_from_upper(upper: torch.Tensor, m: int) -> torch.Tensor:
    """The symmetric zero-diagonal m x m matrix whose i<j entries (row-major) are ``upper``."""
    i, j = torch.triu_indices(m, m, offset=1, device=upper.device)
    R = upper.new_zeros(m, m)
    R = R.index_put((i, j), upper)
    return R + R.T


def pairwise(V: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v_i, v_j> R_ij = 1/2 sum_{i,j} <v_i, v_j> R_ij (Eq. 3, 5), R zero-diagonal."""
    G = torch.einsum("bik,bjk->bij", V, V)
    return 0.5 * (G * R).sum(dim=(1, 2))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))
