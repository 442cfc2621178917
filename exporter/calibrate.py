"""Fitting a calibration map on the validation split at export (``adrank export --calibrate``).

A model trained with heavy regularisation, or pruned without fine-tuning, ranks well but reports
probabilities that are off (its logloss is worse than its AUC suggests).  A monotone map fitted
on held-out rows fixes the reported probability without touching the order:

* ``platt``: ``sigmoid(a z + b)`` by maximum likelihood (Newton's method on the two parameters);
* ``isotonic``: pool-adjacent-violators on ``p = sigmoid(z)``, stored as knots (one per pooled
  block: its mean ``p`` and its click rate; linear in between), probabilities clipped to
  ``[0.5 / n, 1 - 0.5 / n]`` (half an observation: a block of only negatives never claims a
  probability of 0, which would make one positive on new data cost an infinite logloss).

The section written to the manifest is read and applied by adrank/core/calibration.py (the
server's side); :class:`Fitted` here applies the fitted map by its own code, the reference the
serving path is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.fold import ExportError

METHODS = ("platt", "isotonic")


def _sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # another formula than the server's, on purpose


def logloss(y, p, eps: float = 1e-15) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass(frozen=True)
class Fitted:
    """A fitted map: ``predict(p)`` takes uncalibrated probabilities, as the oracle gives them."""

    method: str
    params: dict

    def predict(self, p) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.method == "platt":
            with np.errstate(divide="ignore"):
                z = np.log(p) - np.log1p(-p)
            return _sigmoid(self.params["a"] * z + self.params["b"])
        return np.interp(p, self.params["x"], self.params["y"])

    def section(self, rows: int, logloss_raw: float, logloss_cal: float) -> dict:
        """The manifest's ``calibration`` member (docs/artifact-format.md section 4.1)."""
        return {"method": self.method, **self.params,
                "fitted_on": {"split": "valid", "rows": int(rows), "logloss_raw": round(logloss_raw, 6),
                              "logloss_calibrated": round(logloss_cal, 6)}}


def fit_platt(z, y, iters: int = 100) -> Fitted:
    """Maximum-likelihood ``a``, ``b`` of ``sigmoid(a z + b)`` (Newton with step halving)."""
    z, y = np.asarray(z, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = 1.0, 0.0

    def loss(a, b):
        t = a * z + b
        return float(np.mean(np.logaddexp(0, t) - y * t))

    cur = loss(a, b)
    for _ in range(iters):
        p = _sigmoid(a * z + b)
        r, w = p - y, np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.mean(r * z), np.mean(r)])
        H = np.array([[np.mean(w * z * z), np.mean(w * z)], [np.mean(w * z), np.mean(w)]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(H, g)
        s = 1.0
        while s > 1e-8:
            na, nb = a - s * step[0], b - s * step[1]
            new = loss(na, nb)
            if new <= cur:
                break
            s /= 2
        else:
            break
        done = abs(cur - new) < 1e-13
        a, b, cur = na, nb, new
        if done:
            break
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        raise ExportError(f"Platt scaling gives a = {a:.4g} (<= 0): the model's scores do not rise with the "
                          "validation split's click rate, so no order-keeping map fits")
    return Fitted("platt", {"a": float(a), "b": float(b)})


def fit_isotonic(p, y) -> Fitted:
    """Pool-adjacent-violators on (p, y): the non-decreasing step function of least squares,
    stored as one knot per pooled block at (the block's mean p, its click rate): linear between
    blocks' centres rather than steps, which generalises better from a few thousand rows."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(p)
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    ux, start = np.unique(ps, return_index=True)  # equal probabilities pool first
    cnt = np.diff(np.append(start, n)).astype(np.float64)
    sums = np.add.reduceat(ys, start)
    psum = np.add.reduceat(ps, start)
    s, w, q = [], [], []  # blocks: sum of y, rows, sum of p
    for i in range(len(ux)):
        s.append(sums[i])
        w.append(cnt[i])
        q.append(psum[i])
        while len(s) > 1 and s[-2] / w[-2] >= s[-1] / w[-1]:  # a violation: pool the last two
            t, c, r = s.pop(), w.pop(), q.pop()
            s[-1] += t
            w[-1] += c
            q[-1] += r
    eps = 0.5 / n
    x = [qi / wi for qi, wi in zip(q, w, strict=True)]
    out = [min(max(si / wi, eps), 1 - eps) for si, wi in zip(s, w, strict=True)]
    keep = [0] + [i for i in range(1, len(x)) if x[i] > x[i - 1]]  # centres rounding to one float
    x, out = [x[i] for i in keep], [out[i] for i in keep]
    if len(x) < 2:
        raise ExportError("isotonic calibration: the validation rows pool into one block; nothing to fit")
    return Fitted("isotonic", {"x": [float(v) for v in x], "y": [float(v) for v in out]})


def fit(method: str, z, y) -> Fitted:
    if method == "platt":
        return fit_platt(z, y)
    if method == "isotonic":
        return fit_isotonic(_sigmoid(z), y)
    raise ExportError(f"calibration method must be one of {METHODS}, got {method!r}")


def calibration_section(method: str, z, y) -> dict:
    """Fit ``method`` on raw scores ``z`` and labels ``y``; the manifest member, with the
    validation logloss before and after."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 2 or y.min() == y.max():
        raise ExportError(f"calibration needs validation rows with both labels; got {len(y)} rows")
    f = fit(method, z, y)
    p = _sigmoid(z)
    return f.section(len(y), logloss(y, p), logloss(y, f.predict(p)))


def validation_scores(run_dir: Path, model, config: dict, pre, data, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """(raw scores, labels) of the run's validation split, re-derived from the raw ``data`` with
    the run's own split and encoding settings (the encoding must equal the run's preprocessing)."""
    import torch

    from adrank.core.train_config import default_split
    from training.data import prepare

    if pre.schema.target != "binary":
        raise ExportError("calibration maps click probabilities: the run's target is not binary")
    dataset = config.get("dataset")
    split = config.get("split") or default_split(dataset)
    encoded = prepare(dataset, data, seed=config.get("split_seed", 0), min_count=config.get("min_count", 10),
                      max_rows=config.get("max_rows"), cache_dir=cache_dir, progress=False, split=split)
    if not _same_preprocessing(encoded.preprocessor, pre):
        raise ExportError(f"{data}: encoding it with the run's settings does not give the run's vocabulary; "
                          f"pass the raw data {run_dir} was trained on")
    X, y = encoded.split("valid")
    model.eval()
    out = np.empty(len(X))
    with torch.no_grad():
        for s in range(0, len(X), 16384):
            out[s:s + 16384] = model(torch.from_numpy(np.asarray(X[s:s + 16384], dtype=np.int64))).double().numpy()
    return out, np.asarray(y, dtype=np.float64)


def _same_preprocessing(a, b) -> bool:
    da, aa = a.to_state()
    db, ab = b.to_state()
    return (da.get("schema") == db.get("schema") and set(aa) == set(ab)
            and all(np.array_equal(aa[k], ab[k]) for k in aa))
