"""End to end: the project's trainer recovers a planted DPLR-FwFM (rho = 2) from its data.

On data drawn from a planted rank-2 DPLR-FwFM (training/generate.py), a DPLR model with
rho = 2 trained by training.train.fit must reach a test logloss within 1% of the planted
model's own (the Bayes-optimal ceiling, from truth.json on the same split).  Sized so every
feature is frequent (few features, many rows): the remaining gap is optimisation, not data.

The planted eigenvalues e are all positive here.  With alternating signs (the generator's
default, an indefinite R) the trainer sometimes settles in a worse optimum: on seed 1 it
learned e > 0 for both ranks and ended 1.1-1.7% above the planted test logloss depending on
lr/decay (its train loss was above the planted one too: optimisation, not overfitting);
seed 0 stayed within 0.5%.
"""

from __future__ import annotations

import pytest

from training.data import prepare
from training.generate import generate
from training.train import TrainConfig, fit

PLANTED = dict(rows=200_000, vocab=64, fields=8, context_fields=4, embed_dim=4, zipf=0.5, multi_max=3, rank=2,
               signs="positive")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_dplr_rho2_reaches_planted_logloss(tmp_path, seed):
    truth = generate(tmp_path / "data", seed=seed, progress=False, **PLANTED)
    data = prepare("synthetic", tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert data.n_features == 64 + 2 * 8  # every planted value kept (min_count 10), + missing/rare ids
    cfg = TrainConfig(dataset="synthetic", model="dplr", rank=2, embed_dim=4, lr=1e-2, batch_size=4096,
                      epochs=60, patience=5, seed=seed, threads=1, progress=False)
    metrics = fit(cfg, data, tmp_path / "run")
    planted, trained = truth["test"]["logloss"], metrics["test"]["logloss"]
    assert trained <= 1.01 * planted, f"trained {trained:.5f} vs planted {planted:.5f}"
    assert metrics["test"]["auc"] >= truth["test"]["auc"] - 0.01
