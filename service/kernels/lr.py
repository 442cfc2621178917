"""Logistic-regression scoring: the first-order part alone (DPLR-FwFM paper, Eq. 1).

    score(x) = b + sum_f lin_f,    lin_f = mean of linear[x_s] over field f's non-PAD slots

Once per request: ``const = b + sum_{f in C} lin_f``; per candidate O(|I|): one linear weight
per item slot.  The artifact has no embedding table (``embedding.type == "none"``), so this
scorer reads only ``linear``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from service.kernels.base import Scorer
from service.kernels.codegen import KERNEL


@njit(**KERNEL)
def linear_rows(X, offs, linear, const, out, start, stop):
    """out[n] = const + sum_f (mean of linear[X[n, s]] over field f's non-PAD slots s)."""
    m = offs.shape[0] - 1
    for n in range(start, stop):
        s = const
        for f in range(m):
            lo, hi = offs[f], offs[f + 1]
            if hi - lo == 1:
                idx = X[n, lo]
                if idx >= 0:
                    s += linear[idx]
                continue
            tot = 0.0
            cnt = 0
            for j in range(lo, hi):
                idx = X[n, j]
                if idx >= 0:
                    tot += linear[idx]
                    cnt += 1
            if cnt > 0:
                s += tot / cnt
        out[n] = s


class LRScorer(Scorer):
    kind = "lr"

    def _set_source(self, manifest, arrays) -> None:
        self.embedding = "none"
        self.n_features = int(np.asarray(arrays["linear"]).reshape(-1).shape[0])
        self.k, self.D = 0, 1
        self.src = np.zeros((0, 0), dtype=np.float32)  # no embedding table
        if "n_features" in manifest and int(manifest["n_features"]) != self.n_features:
            raise ValueError(f"lr artifact: 'linear' has {self.n_features} entries, manifest says "
                             f"n_features={manifest['n_features']}")

    @property
    def nbytes(self) -> int:
        return int(self.linear.nbytes)

    def _setup(self, arrays):
        pass

    def _plan(self, ctx_fields, item_fields, item_offs):
        return (), (np.asarray(item_offs, dtype=np.int64),)

    def _context(self, ctx, offs, *_):
        out = np.empty(1, dtype=np.float64)
        linear_rows(np.asarray(ctx, dtype=np.int32).reshape(1, -1), np.asarray(offs, dtype=np.int64),
                    self.linear, self.bias, out, 0, 1)
        return float(out[0])

    def _items(self, const, X, offs, out, start, stop):
        linear_rows(X, offs, self.linear, const, out, start, stop)
