"""Full FwFM scoring (paper Eq. 3): every field pair i < j weighted by R_ij — the O(m^2 k) baseline.

    score(x) = b + sum_f lin_f + sum_{i<j} R_ij <v_i, v_j>

This is the pruned kernel (pruned.py) with every above-diagonal pair of the artifact's ``R``
kept (pairs whose weight is exactly 0 contribute nothing and are skipped): context x context
pairs once per request, context partial vectors q_j for the item fields, and per candidate
one axpy per item x item pair.
"""

from __future__ import annotations

import numpy as np

from service.kernels.pruned import PrunedScorer


class FwFMScorer(PrunedScorer):
    kind = "fwfm"

    def _setup(self, arrays):
        R = np.asarray(arrays["R"], dtype=np.float32)
        if R.shape != (self.m, self.m):
            raise ValueError(f"fwfm artifact: 'R' must have shape ({self.m}, {self.m}), got {R.shape}")
        i, j = np.triu_indices(self.m, k=1)
        keep = R[i, j] != 0
        self._set_pairs(i[keep], j[keep], R[i, j][keep])
