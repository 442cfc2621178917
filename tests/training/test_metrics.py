"""training/metrics.py: AUC, LogLoss and MSE by their definitions (AUC against a brute-force count
over every positive-negative pair, ties counting one half)."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import auc, logloss, mse, report


def brute_auc(y, p) -> float:
    """Over every (positive, negative) pair: 1 if ordered right, 1/2 if tied."""
    pos = [a for a, t in zip(p, y, strict=True) if t == 1]
    neg = [a for a, t in zip(p, y, strict=True) if t == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=200)
    y[:2] = [0, 1]
    p = np.round(rng.random(200) + 0.3 * y, 1)  # rounding forces many ties
    assert auc(y, p) == pytest.approx(brute_auc(y, p), abs=1e-12)


def test_auc_extremes_and_constant_predictions():
    y = np.array([0, 0, 1, 1])
    assert auc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auc(y, [0.5] * 4) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        auc([1, 1], [0.2, 0.3])


def test_logloss_and_mse_by_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50).astype(float)
    p = rng.uniform(0.01, 0.99, 50)
    want = -sum(t * np.log(q) + (1 - t) * np.log(1 - q) for t, q in zip(y, p, strict=True)) / 50
    assert logloss(y, p) == pytest.approx(want, rel=1e-12)
    assert np.isfinite(logloss([1, 0], [0.0, 1.0]))  # clipped, not infinite
    r = rng.normal(size=30)
    assert mse(r, r + 0.5) == pytest.approx(0.25)
    assert set(report("binary", y, p)) == {"auc", "logloss"} and set(report("regression", y, p)) == {"mse"}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ in length"):
        logloss([0, 1], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        mse([0.0], [np.nan])
    with pytest.raises(ValueError, match="zero rows"):
        mse([], [])
