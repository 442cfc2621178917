"""From raw model outputs to the reply's order and scores: the one sigmoid every path uses.

A ranked reply is the ads best first by raw score, ties in input order (a stable sort of the
negated scores), each with ``sigmoid(raw)`` (the click probability) for ``target == "binary"``
or the raw prediction for regression.  The sigmoid is monotone, so ordering by raw score is
ordering by probability.

**The CTR comes from here only.** :func:`ctr` (and its compiled twin ``ctr_one`` inside the
kernels: the value ordering below, the catalog's top-k by eCPM) maps a raw score to the click
probability through a :class:`Calibration`: ``interp(sigmoid(a * raw + b), xs, ys)``.  The identity
(``a = 1, b = 0``, no knots) is today's sigmoid; Platt scaling is (a, b), isotonic regression the
knots (``xs`` increasing probabilities, ``ys`` non-decreasing).  A model version carries its map as a
``calibration`` attribute (:func:`calibration_of`): the map its artifact carries
(adrank/core/calibration.py, fitted at export: Platt is (a, b), isotonic the knots), else the
identity.  Every CTR, eCPM and reply score then follows it, and since the map is non-decreasing
the order by raw score stays the order by CTR.

**Value ranking** (:func:`order_values`): ``ecpm = bid x ctr x 1000``; ads whose eCPM is below the
request's reserve are dropped; the order is by ``ecpm x boost`` (``rank_by: "ecpm"``) or ``ctr x
boost`` (``rank_by: "ctr"`` with boosts), best first, ties in input order.  The inline generic path (service.ranker), the catalog
(service.catalog.ranking) and the compiled fast path (service.fastpath) all come through here, so
the same request gets the same bytes whichever path answers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np

from service.kernels.codegen import PLAIN

_NO_KNOTS = np.zeros(0)


@dataclass(frozen=True)
class Calibration:
    """raw -> CTR: ``interp(sigmoid(a * raw + b), xs, ys)``; no knots: no interpolation."""

    a: float = 1.0
    b: float = 0.0
    xs: np.ndarray = field(default_factory=lambda: _NO_KNOTS)
    ys: np.ndarray = field(default_factory=lambda: _NO_KNOTS)

    def params(self) -> tuple[float, float, np.ndarray, np.ndarray]:
        return (float(self.a), float(self.b), np.ascontiguousarray(self.xs, np.float64),
                np.ascontiguousarray(self.ys, np.float64))

    @staticmethod
    def of(fitted) -> Calibration:
        """The map of an artifact's calibration (adrank.core.calibration.Calibration; None: the
        identity): Platt ``sigmoid(a * raw + b)`` is (a, b), isotonic ``interp(sigmoid(raw), x, y)``
        the knots."""
        if fitted is None:
            return IDENTITY
        if fitted.method == "platt":
            return Calibration(fitted.a, fitted.b)
        return Calibration(1.0, 0.0, np.asarray(fitted.x, np.float64), np.asarray(fitted.y, np.float64))


IDENTITY = Calibration()


def calibration_of(model) -> Calibration:
    """The calibration a served model version (or ranker) carries, else the identity."""
    cal = getattr(model, "calibration", None)
    return cal if isinstance(cal, Calibration) else Calibration.of(cal)


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


@numba.njit(**PLAIN, inline="always")
def knot_below(xs, p):
    """The knot interval holding ``p`` (xs[0] < p < xs[-1]): the largest i with xs[i] <= p."""
    lo, hi = 0, xs.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if xs[mid] <= p:
            lo = mid
        else:
            hi = mid
    return lo


@numba.njit(**PLAIN, inline="always")
def ctr_one(raw, a, b, xs, ys):
    """One raw score's CTR under the calibration (a, b, xs, ys) (see the module docstring)."""
    x = a * raw + b
    z = math.exp(-abs(x))
    p = 1.0 / (1.0 + z) if x >= 0 else z / (1.0 + z)
    n = xs.shape[0]
    if n == 0 or p != p:
        return p
    if p <= xs[0]:
        return ys[0]
    if p >= xs[n - 1]:
        return ys[n - 1]
    lo = knot_below(xs, p)
    hi = lo + 1
    t = (p - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + t * (ys[hi] - ys[lo])


@numba.njit(**PLAIN)
def _ctr_array(raw, a, b, xs, ys):
    out = np.empty(raw.shape[0])
    for i in range(raw.shape[0]):
        out[i] = ctr_one(raw[i], a, b, xs, ys)
    return out


def ctr(raw: np.ndarray, cal: Calibration = IDENTITY) -> np.ndarray:
    """The click probabilities of raw scores float64[n] under ``cal``: the one raw -> CTR map."""
    if cal is IDENTITY:
        return sigmoid(raw)
    return _ctr_array(np.ascontiguousarray(raw, np.float64).ravel(), *cal.params())


def reply_scores(raw: np.ndarray, binary: bool, cal: Calibration = IDENTITY) -> np.ndarray:
    """A reply's ``score`` column: the CTR (click models) or the raw prediction (regression)."""
    return ctr(raw, cal) if binary else np.asarray(raw, np.float64)


def order(raw: np.ndarray, top_k: int, binary: bool, cal: Calibration = IDENTITY) -> tuple[np.ndarray, np.ndarray]:
    """:func:`order_scores` under a calibration (the order is by raw score either way)."""
    if cal is IDENTITY or not binary:
        return order_scores(raw, top_k, binary)
    rows, _ = order_scores(raw, top_k, False)
    return rows, ctr(raw[rows], cal)


@numba.njit(**PLAIN)
def order_values(raw, bid, boost, by_value, has_reserve, reserve, top_k, a, b, xs, ys):
    """(order int64[n'], ctr float64[n'], ecpm float64[n']) of ads with raw scores ``raw``, bids
    ``bid`` and multipliers ``boost`` (float64[n] each): ads with ``ecpm < reserve`` dropped (when
    ``has_reserve``), the rest best first by ``ecpm * boost`` (``by_value``) or ``ctr * boost``,
    ties in input order, at most ``top_k`` (< 0: all)."""
    n = raw.shape[0]
    c = np.empty(n)
    e = np.empty(n)
    key = np.empty(n)
    keep = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        p = ctr_one(raw[i], a, b, xs, ys)
        v = bid[i] * p * 1000.0
        c[i] = p
        e[i] = v
        if has_reserve and not v >= reserve:  # a NaN eCPM never clears a reserve
            continue
        keep[m] = i
        key[m] = -((v if by_value else p) * boost[i])
        m += 1
    sub = np.argsort(key[:m], kind="mergesort")  # stable: ties keep input order
    if 0 <= top_k < m:
        sub = sub[:top_k]
    rows = np.empty(sub.shape[0], np.int64)
    oc = np.empty(sub.shape[0])
    oe = np.empty(sub.shape[0])
    for j in range(sub.shape[0]):
        r = keep[sub[j]]
        rows[j] = r
        oc[j] = c[r]
        oe[j] = e[r]
    return rows, oc, oe


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
