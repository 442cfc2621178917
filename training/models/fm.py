"""Factorization machine (Rendle, 2010), as in the DPLR-FwFM paper Eq. 1-2.

    Phi_FM(x) = b0 + <b, x> + sum_{i<j} <v_i, v_j>
              = b0 + <b, x> + 1/2 (||sum_i v_i||^2 - sum_i ||v_i||^2)      (Eq. 2c)

Input x: LongTensor [B, S] of slot ids (PAD = -1); output: raw score [B].
"""

from __future__ import annotations

import torch

from training.models.layers import FieldModel


class FM(FieldModel):
    kind = "fm"

    def interaction(self, V: torch.Tensor) -> torch.Tensor:
        square_of_sum = V.sum(1).pow(2).sum(1)  # V [B, m, k]
        sum_of_squares = V.pow(2).sum(dim=(1, 2))
        return 0.5 * (square_of_sum - sum_of_squares)
