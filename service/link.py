"""From raw model outputs to the reply's order and scores: the one sigmoid every path uses.

A ranked reply is the ads best first by raw score, ties in input order (a stable sort of the
negated scores), each with ``sigmoid(raw)`` (the click probability) for ``target == "binary"``
or the raw prediction for regression.  The sigmoid is monotone, so ordering by raw score is
ordering by probability.  The inline generic path (service.ranker), the catalog
(service.catalog.ranking) and the compiled fast path (service.fastpath) all come through here, so
the same request gets the same bytes whichever path answers it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from service.kernels.codegen import PLAIN


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow for large |x| (compiled: NumPy's seven ufunc calls cost
    ~15 us on a 10-ad request)."""
    x = np.asarray(x, dtype=np.float64)
    return _sigmoid(np.ascontiguousarray(x).ravel()).reshape(x.shape)


@numba.njit(**PLAIN)
def _sigmoid(x):
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        z = math.exp(-abs(x[i]))
        out[i] = 1.0 / (1.0 + z) if x[i] >= 0 else z / (1.0 + z)
    return out


@numba.njit(**PLAIN)
def order_scores(raw, top_k, binary):
    """(order int64[n'], scores float64[n']): the best ``top_k`` (< 0: all) of ``raw`` float64[n],
    best first, ties in input order, and their reply scores (``sigmoid`` when ``binary``) — what
    ``np.argsort(-raw, kind="stable")[:top_k]`` and a ``sigmoid`` call give, in one native call
    (each NumPy call costs 10-30 us when a request finds it out of cache)."""
    order = np.argsort(-raw, kind="mergesort")  # numba's mergesort is stable, like NumPy's "stable"
    if 0 <= top_k < order.shape[0]:
        order = order[:top_k]
    picked = np.empty(order.shape[0])
    for j in range(order.shape[0]):
        picked[j] = raw[order[j]]
    return order, (_sigmoid(picked) if binary else picked)
