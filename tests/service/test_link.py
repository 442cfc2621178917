"""service.link: the reply's order and scores, against NumPy's stable argsort and a direct sigmoid."""

import numpy as np
import pytest

from service.link import order_scores, sigmoid


@pytest.mark.parametrize("seed", range(4))
def test_order_scores_equals_numpy_stable_argsort(seed):
    rng = np.random.default_rng(seed)
    for t in range(60):
        n = int(rng.integers(1, 300))
        # few distinct values: many ties, which must stay in input order
        raw = rng.integers(-3, 3, n).astype(float) * rng.choice([1.0, 0.5, 1e-300, 800.0])
        if t % 3 == 0:
            raw[rng.integers(0, n, 3)] = np.nan
        if t % 5 == 0:
            raw[rng.integers(0, n, 2)] = [np.inf, -np.inf]
        for top_k in (-1, 0, 1, 5, n, n + 3):
            order, scores = order_scores(raw, top_k, True)
            ref = np.argsort(-raw, kind="stable")
            ref = ref if top_k < 0 else ref[:top_k]
            np.testing.assert_array_equal(order, ref)
            with np.errstate(over="ignore"):
                expect = 1.0 / (1.0 + np.exp(-raw[ref]))
            np.testing.assert_allclose(scores, expect, rtol=1e-15, atol=0)
            _, plain = order_scores(raw, top_k, False)  # regression: the raw predictions
            np.testing.assert_array_equal(plain, raw[ref])


def test_sigmoid_saturates_without_overflow():
    x = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise"):
        s = sigmoid(x)
    assert s[0] == 0.0 and s[2] == 0.5 and s[-1] == 1.0
    assert np.all(np.diff(s) >= 0)
