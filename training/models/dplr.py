"""DPLR-FwFM: an FwFM whose R is diagonal plus low rank (DPLR-FwFM paper, Sec. 4.2).

    R = U^T diag(e) U + diag(d),   d = -diag_of(U^T diag(e) U)                 (Eq. 8, 10)

so R is symmetric with a zero diagonal.  With V [m, k] the field vectors and P = U V [rho, k],
Proposition 1 (Eq. 9) gives the pairwise term without ever forming R:

    sum_{i<j} <v_i, v_j> R_ij = 1/2 (sum_i d_i ||v_i||^2 + sum_r e_r ||P_r||^2)

Parameters U [rho, m], e [rho]; cost O(rho m k) per row.  ``init="fm"`` (default): row 0 of U
all ones with e_0 = 1 is R = 11^T - I, an FM (Eq. 7), the other rows small; ``init="small"``:
both near zero, as the paper's code (adrank/core/train_config.py says why the default differs).
Input x: LongTensor [B, S] of slot ids (PAD = -1); output: raw score [B].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.models.layers import FieldModel, check_init, small_normal, to_numpy


class DPLRFwFM(FieldModel):
    kind = "dplr"
    interaction_params = ("U", "e")

    def __init__(self, *args, rho: int = 1, init: str = "fm", **kwargs):
        super().__init__(*args, **kwargs)
        if rho < 1:
            raise ValueError(f"rank rho must be >= 1, got {rho}")
        self.rho = int(rho)
        if check_init(init) == "fm":
            U = torch.randn(self.rho, self.m) * 0.1
            U[0] = 1.0
            e = torch.full((self.rho,), 0.1)
            e[0] = 1.0
            self.U, self.e = nn.Parameter(U), nn.Parameter(e)
        else:
            self.U = nn.Parameter(small_normal(self.rho, self.m))
            self.e = nn.Parameter(small_normal(self.rho))

    @property
    def rank(self) -> int:
        return self.rho

    @property
    def d(self) -> torch.Tensor:
        """d = -diag(U^T diag(e) U) [m] (Eq. 10)."""
        return -(self.e.unsqueeze(1) * self.U.pow(2)).sum(0)

    @property
    def R(self) -> torch.Tensor:
        """The effective interaction matrix U^T diag(e) U + diag(d) [m, m] (zero diagonal)."""
        R = self.U.T @ (self.e.unsqueeze(1) * self.U)
        return R - torch.diag_embed(torch.diagonal(R))

    def interaction(self, V: torch.Tensor) -> torch.Tensor:
        P = torch.einsum("rm,bmk->brk", self.U, V)  # P = U V, V [B, m, k]
        diag_part = (V.pow(2).sum(2) * self.d).sum(1)  # sum_i d_i ||v_i||^2
        low_rank = (P.pow(2).sum(2) * self.e).sum(1)  # sum_r e_r ||P_r||^2
        return 0.5 * (diag_part + low_rank)

    def export_arrays(self) -> dict[str, np.ndarray]:
        out = super().export_arrays()
        out["U"], out["e"] = to_numpy(self.U), to_numpy(self.e)
        return out
