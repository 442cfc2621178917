"""The models: LR, FM, FwFM, pruned FwFM and DPLR-FwFM, built by ``build(kind, ...)``."""

from __future__ import annotations

from torch import nn

from adrank.core import kinds
from adrank.core.schema import Schema
from training.models.dplr import DPLRFwFM
from training.models.fm import FM
from training.models.fwfm import FwFM
from training.models.layers import FieldModel, make_embedding
from training.models.lr import LR
from training.models.pruned import PrunedFwFM, prune_mask

KINDS = kinds.NAMES


def build(kind: str, schema: Schema, n_features: int, embed_dim: int, rank: int | None = None,
          embedding: str = "dense", embedding_opts: dict | None = None, init: str = "fm") -> nn.Module:
    """A fresh model of ``kind``; ``rank`` is rho for "dplr" and "pruned" (rho(m+1) pairs kept).

    A fresh "pruned" model keeps every pair until ``PrunedFwFM.from_fwfm`` (or loading a
    checkpoint) sets its mask.  "lr" has no embeddings (``embed_dim`` is ignored).  ``init`` is
    the field-interaction start of fwfm / pruned / dplr ("fm" or "small", training/models/layers.py).
    """
    args = (schema, n_features, embed_dim, embedding, embedding_opts)
    if kinds.get(kind).ranked:
        if rank is None or int(rank) < 1:
            raise ValueError(f"model {kind!r} needs rank >= 1, got {rank!r}")
        return (DPLRFwFM if kind == "dplr" else PrunedFwFM)(*args, rho=int(rank), init=init)
    if not kinds.get(kind).embedded and embedding != "dense":
        raise ValueError(f"model {kind!r} has no embeddings")
    if kind == "fwfm":
        return FwFM(*args, init=init)
    return {"lr": LR, "fm": FM}[kind](*args)


__all__ = ["build", "KINDS", "LR", "FM", "FwFM", "PrunedFwFM", "DPLRFwFM", "FieldModel", "prune_mask",
           "make_embedding"]
