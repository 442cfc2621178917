"""Field-weighted factorization machine (Pan et al., 2018), DPLR-FwFM paper Eq. 3.

    Phi_FwFM(x) = b0 + <b, x> + sum_{i<j} <v_i, v_j> R_ij

R [m, m] is symmetric with a zero diagonal; only its m(m-1)/2 entries above the diagonal are
parameters (``R_upper``, row-major).  ``init="fm"`` (default) starts at R = 1 off the diagonal,
exactly an FM (Eq. 7); ``init="small"`` near zero, as the paper's code (adrank/core/train_config.py says
why the default differs).  Cost O(m^2 k) per row.
Input x: LongTensor [B, S] of slot ids (PAD = -1); output: raw score [B].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.models.layers import (
    FieldModel,
    check_init,
    pairwise,
    small_normal,
    symmetric_from_upper,
    to_numpy,
)


class FwFM(FieldModel):
    kind = "fwfm"
    interaction_params = ("R_upper",)

    def __init__(self, *args, init: str = "fm", **kwargs):
        super().__init__(*args, **kwargs)
        n_pairs = self.m * (self.m - 1) // 2
        self.R_upper = nn.Parameter(torch.ones(n_pairs) if check_init(init) == "fm" else small_normal(n_pairs))

    @property
    def R(self) -> torch.Tensor:
        """The field interaction matrix [m, m] (symmetric, zero diagonal)."""
        return symmetric_from_upper(self.R_upper, self.m)

    def interaction(self, V: torch.Tensor) -> torch.Tensor:
        return pairwise(V, self.R)

    def export_arrays(self) -> dict[str, np.ndarray]:
        out = super().export_arrays()
        with torch.no_grad():
            out["R"] = to_numpy(self.R)
        return out
