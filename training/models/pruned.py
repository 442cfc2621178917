"""Pruned FwFM: an FwFM keeping only the rho(m+1) largest-magnitude entries of R (i<j).

DPLR-FwFM paper Sec. 3.3 and 5.1: the pruned model matched to a rank-rho DPLR model keeps
rho(m+1) interaction coefficients, i.e. 100 * 2 rho (m+1) / (m(m-1)) percent of them.  The mask
is an explicit function of R (``prune_mask``) stored as a buffer; there is no train/eval switch.
``PrunedFwFM.from_fwfm(fwfm, rho)`` prunes a trained FwFM, ready for fine-tuning with the mask.
Input x: LongTensor [B, S] of slot ids (PAD = -1); output: raw score [B].
"""

from __future__ import annotations

import numpy as np
import torch

from training.models.fwfm import FwFM


def prune_mask(R, rho: int) -> np.ndarray:
    """bool [m, m]: the rho(m+1) largest |R_ij|, i<j, mirrored; ties keep row-major order."""
    R = np.asarray(R.detach().cpu() if isinstance(R, torch.Tensor) else R, dtype=np.float64)
    m = R.shape[0]
    if R.shape != (m, m):
        raise ValueError(f"R must be square, got shape {R.shape}")
    if rho < 1:
        raise ValueError(f"rho must be >= 1, got {rho}")
    i, j = np.triu_indices(m, k=1)  # row-major order of the upper triangle
    order = np.argsort(-np.abs(R[i, j]), kind="stable")[: rho * (m + 1)]
    mask = np.zeros((m, m), dtype=bool)
    mask[i[order], j[order]] = True
    return mask | mask.T


class PrunedFwFM(FwFM):
    kind = "pruned"

    def __init__(self, *args, rho: int = 1, init: str = "fm", **kwargs):
        super().__init__(*args, init=init, **kwargs)
        self.rho = int(rho)
        self.register_buffer("mask", torch.ones(self.m, self.m, dtype=torch.bool).fill_diagonal_(False))

    @property
    def rank(self) -> int:
        return self.rho

    @classmethod
    def from_fwfm(cls, fwfm: FwFM, rho: int) -> PrunedFwFM:
        """Copy a trained FwFM and keep the rho(m+1) largest |R_ij| (prune_mask)."""
        model = cls(fwfm.schema, fwfm.n_features, fwfm.embed_dim, fwfm.embedding_kind,
                    fwfm.embedding_opts, rho=rho)
        model.load_state_dict(fwfm.state_dict(), strict=False)  # everything but the mask
        with torch.no_grad():
            model.mask.copy_(torch.from_numpy(prune_mask(fwfm.R, rho)))
        return model

    @property
    def R(self) -> torch.Tensor:
        """The masked interaction matrix: zero outside the kept pairs."""
        return super().R * self.mask

    def export_arrays(self) -> dict[str, np.ndarray]:
        out = super().export_arrays()  # R is already masked
        out["mask"] = self.mask.detach().cpu().numpy().astype(bool)
        return out


__all__ = ["PrunedFwFM", "prune_mask"]
