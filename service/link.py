"""From raw model outputs to the reply's order and scores: the one sigmoid every path uses.

A ranked reply is the ads best first by raw score, ties in input order (a stable sort of the
negated scores), each with ``sigmoid(raw)`` (the click probability) for ``target == "binary"``
or the raw prediction for regression.  The sigmoid is monotone, so ordering by raw score is
ordering by probability.  The inline generic path (service.ranker), the catalog
(service.catalog.ranking) and the compiled fast path (service.fastpath) all come through here, so
the same request gets the same bytes whichever path answers it.

A model whose artifact carries a calibration map (adrank/core/calibration.py) reports the
calibrated probability instead of ``sigmoid(raw)``: :func:`rank_scores` and :func:`probability`
apply it here, the one place raw scores become probabilities, so every path reports the same
calibrated value; the order is still the raw score's (the map is monotone).
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


def probability(raw: np.ndarray, binary: bool, calibration=None) -> np.ndarray:
    """Reply scores of raw scores in any order: the (calibrated) click probability when
    ``binary``, else the raw prediction."""
    if not binary:
        return raw
    return sigmoid(raw) if calibration is None else calibration(raw)


def rank_scores(raw: np.ndarray, top_k: int, binary: bool, calibration=None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`order_scores` with the model's calibration map (None: plain sigmoid) applied to the
    picked ads' raw scores."""
    if calibration is None or not binary:
        return order_scores(raw, top_k, binary)
    order, picked = order_scores(raw, top_k, False)
    return order, calibration(picked)


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
