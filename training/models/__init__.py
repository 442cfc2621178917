"""The models: FM, FwFM, pruned FwFM and DPLR-FwFM, built by ``build(kind, ...)``."""

from __future__ import annotations

from torch import nn

from adrank.core import kinds
from adrank.core.schema import Schema
from training.models.dplr import DPLRFwFM
from training.models.fm import FM
from training.models.fwfm import FwFM
from training.models.layers import FieldModel, make_embedding
from training.models.pruned import PrunedFwFM, prune_mask

KINDS = kinds.NAMES


def build(kind: str, schema: Schema, n_features: int, embed_dim: int, rank: int | None = None,
          embedding: str = "dense", embedding_opts: dict | None = None) -> nn.Module:
    """A fresh model of ``kind``; ``rank`` is rho for "dplr" and "pruned" (rho(m+1) pairs kept).

    A fresh "pruned" model keeps every pair until ``PrunedFwFM.from_fwfm`` (or loading a
    checkpoint) sets its mask.
    """
    args = (schema, n_features, embed_dim, embedding, embedding_opts)
    if kinds.get(kind).ranked:
        if rank is None or int(rank) < 1:
            raise ValueError(f"model {kind!r} needs rank >= 1, got {rank!r}")
        return (DPLRFwFM if kind == "dplr" else PrunedFwFM)(*args, rho=int(rank))
    return (FM if kind == "fm" else FwFM)(*args)


__all__ = ["build", "KINDS", "FM", "FwFM", "PrunedFwFM", "DPLRFwFM", "FieldModel", "prune_mask",
           "make_embedding"]
