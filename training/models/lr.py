"""Logistic regression: the first-order part of every model, alone (the honest floor).

    Phi_LR(x) = b0 + <b, x> = b0 + sum_f w_f                            (DPLR-FwFM paper, Eq. 1)

with w_f the linear weight of field f's value (the mean over a multi-valued field's values).
No embeddings, no interactions: any model of this project that does not beat it on held-out
data has learned nothing from its field interactions.
Input x: LongTensor [B, S] of slot ids (PAD = -1); output: raw score [B].
"""

from __future__ import annotations

from training.models.layers import FieldModel


class LR(FieldModel):
    kind = "lr"
    uses_embedding = False
