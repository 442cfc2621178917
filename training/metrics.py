"""Evaluation metrics of the paper's Table 1: AUC and LogLoss for clicks, MSE for ratings."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.size} vs {p.size}")
    if y.size == 0:
        raise ValueError("cannot compute a metric on zero rows")
    if not np.isfinite(p).all():
        raise ValueError("predictions contain NaN or infinity")
    return y, p


def _average_ranks(p: np.ndarray) -> np.ndarray:
    """1-based ranks of p, tied values sharing their mean rank."""
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    start = np.r_[0, np.flatnonzero(np.diff(sp)) + 1]  # first index of each run of ties
    end = np.r_[start[1:], sp.size]
    mean_rank = (start + end + 1) / 2.0  # mean of ranks start+1..end
    ranks = np.empty(p.size)
    ranks[order] = np.repeat(mean_rank, end - start)
    return ranks


def auc(y, p) -> float:
    """ROC AUC by the Mann-Whitney rank statistic: P(p_pos > p_neg) + 1/2 P(tie)."""
    y, p = _check(y, p)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    r = _average_ranks(p)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(y, p) -> float:
    """Mean binary cross-entropy of probabilities p (clipped to [EPS, 1 - EPS])."""
    y, p = _check(y, p)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def mse(y, p) -> float:
    """Mean squared error of predictions p."""
    y, p = _check(y, p)
    return float(np.mean((y - p) ** 2))


def report(target: str, y, p) -> dict[str, float]:
    """{"auc", "logloss"} for a binary target, {"mse"} for regression (p = probability/prediction)."""
    if target == "regression":
        return {"mse": mse(y, p)}
    return {"auc": auc(y, p), "logloss": logloss(y, p)}


def primary(target: str) -> tuple[str, bool]:
    """(metric used for early stopping, True when higher is better)."""
    return ("mse", False) if target == "regression" else ("logloss", False)
