"""The paired test of the paper-table experiment: Student's t on per-seed differences.

For n seeds with differences d_1..d_n (DPLR minus pruned, signed so that > 0 = DPLR better),
t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom; the two-sided p-value is
I_{df/(df+t^2)}(df/2, 1/2), the regularised incomplete beta function (evaluated by its continued
fraction, Numerical Recipes' ``betacf``).  Pure Python: no scipy dependency for one formula.
"""

from __future__ import annotations

import math

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        de = d * c
        h *= de
        if abs(de - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_pvalue(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired(diffs) -> dict:
    """{"n", "mean", "sd", "t", "p", "all_same_sign"} of per-seed differences (p None for n < 2
    or when every difference is identical)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else float("nan"), "sd": None, "t": None, "p": None,
           "all_same_sign": bool(n and (np.all(d > 0) or np.all(d < 0)))}
    if n >= 2:
        sd = float(d.std(ddof=1))
        out["sd"] = sd
        if sd > 0:
            out["t"] = float(d.mean() / (sd / math.sqrt(n)))
            out["p"] = t_pvalue(out["t"], n - 1)
        elif d.mean() != 0:
            out["t"], out["p"] = math.copysign(math.inf, d.mean()), 0.0
    return out


def verdict(test: dict, alpha: float = 0.05, better: str = "DPLR", worse: str = "pruned") -> str:
    """"<better> better" / "<worse> better" when every seed agrees and p < alpha, else a tie."""
    if test["n"] < 2:
        sign = better if test["mean"] > 0 else worse if test["mean"] < 0 else None
        return f"{sign} better (one seed: no test)" if sign else "tie"
    if test["p"] is not None and test["p"] < alpha and test["all_same_sign"]:
        return f"{better} better" if test["mean"] > 0 else f"{worse} better"
    return "tie (within seed spread)"
