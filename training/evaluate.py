"""Score every row of a raw file with a model's *own* preprocessing: AUC/LogLoss (MSE for ratings).

``score_file`` is torch-free (it takes any ``predict(X int32[B, S]) -> float64[B]``), so the
artifact path of ``adrank evaluate`` (service.ranker.Ranker) never loads torch; ``evaluate_run``
wraps a training run directory.  training/ never imports service/: the command glues them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.data import encode_file
from training.metrics import report


def score_file(dataset: str, path, preprocessor, predict: Callable[[np.ndarray], np.ndarray],
               max_rows: int | None = None) -> dict:
    """{"auc", "logloss", "rows"} ({"mse", "rows"} for regression) of ``predict`` on a raw file."""
    X, y = encode_file(dataset, path, preprocessor, max_rows=max_rows)
    p = np.asarray(predict(X), dtype=np.float64)
    if p.shape != (len(y),):
        raise ValueError(f"predictor returned shape {p.shape} for {len(y)} rows")
    return {**report(preprocessor.schema.target, y, p), "rows": int(len(y))}


def evaluate_run(run_dir, dataset: str, path, max_rows: int | None = None) -> dict:
    """Metrics of a training run directory (``training.checkpoint``) on a raw file."""
    import torch

    from training import checkpoint
    from training.train import predict

    torch.set_num_threads(1)
    model, cfg, pre = checkpoint.load(Path(run_dir))
    out = score_file(dataset, path, pre, lambda X: predict(model, X, pre.schema.target), max_rows)
    return {**out, "model": cfg["kind"], "rank": cfg.get("rank"), "source": "run"}
