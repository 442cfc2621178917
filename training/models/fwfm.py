"""Field-weighted factorization machine (Pan et al., 2018), DPLR-FwFM paper Eq. 3.

    Phi_FwFM(x) = b0 + <b, x> + sum_{i<j} <v_i, v_j> R_ij

R [m, m] is symmetric with a zero diagonal; only its m(m-1)/2 entries above the diagonal are
parameters (``R_upper``, row-major).  Cost O(m^2 k) per row.
Input x: LongTensor [B, S] of slot ids (PAD = -1); output: raw score [B].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.models.layers import FieldModel, pairwise, symmetric_from_upper, to_numpy


class FwFM(FieldModel):
    kind = "fwfm"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # R = 1 off the diagonal is exactly an FM (Eq. 7): a neutral start.
        self.R_upper = nn.Parameter(torch.ones(self.m * (self.m - 1) // 2))

    @property
    def R(self) -> torch.Tensor:
        """The field interaction matrix [m, m] (symmetric, zero diagonal)."""
        return symmetric_from_upper(self.R_upper, self.m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        V, first = self.fields(x)
        return first + pairwise(V, self.R)

    def export_arrays(self) -> dict[str, np.ndarray]:
        out = super().export_arrays()
        with torch.no_grad():
            out["R"] = to_numpy(self.R)
        return out
