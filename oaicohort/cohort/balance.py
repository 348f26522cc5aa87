"""Standardised mean differences (SMD) between two groups of knees, optionally weighted.

The definitions ``tableone`` uses (and so the baseline table): for a number, Cohen's d with the
groups' own sample SDs, ``(mean1 - mean0) / sqrt((var1 + var0) / 2)``; for a category, Yang &
Dalton's multivariate SMD of the level proportions (the first level dropped). Weights (a matched
control counting 1/k in a set of k) enter the means, variances and proportions; missing values
are left out. |SMD| < 0.1 is the usual mark of a balanced variable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def stratum_key(value: Any) -> str:
    """A value as text for comparing categories: 2.0 and 2 are the same grade."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _weighted_mean_var(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    mean = float(np.average(x, weights=w))
    # reliability-weighted sample variance (unbiased for the weights used; plain ddof=1 when all 1)
    v1, v2 = w.sum(), (w**2).sum()
    var = float((w * (x - mean) ** 2).sum() / (v1 - v2 / v1)) if v1 - v2 / v1 > 0 else float("nan")
    return mean, var


def smd_continuous(x1: np.ndarray, x0: np.ndarray, w1: np.ndarray | None = None, w0: np.ndarray | None = None) -> float:
    """(mean1 - mean0) / sqrt((var1 + var0) / 2), missing values left out."""
    w1 = np.ones_like(x1) if w1 is None else w1
    w0 = np.ones_like(x0) if w0 is None else w0
    ok1, ok0 = ~np.isnan(x1), ~np.isnan(x0)
    if ok1.sum() < 2 or ok0.sum() < 2:
        return float("nan")
    m1, v1 = _weighted_mean_var(x1[ok1], w1[ok1])
    m0, v0 = _weighted_mean_var(x0[ok0], w0[ok0])
    pooled = np.sqrt((v1 + v0) / 2)
    return float((m1 - m0) / pooled) if pooled > 0 else (0.0 if m1 == m0 else float("inf"))


def smd_categorical(
    x1: Sequence[Any], x0: Sequence[Any], w1: np.ndarray | None = None, w0: np.ndarray | None = None
) -> float:
    """Yang & Dalton's multivariate SMD of a category's level proportions (the first level
    dropped), missing values left out; 0 when the proportions are equal."""
    s1, s0 = pd.Series(list(x1), dtype=object), pd.Series(list(x0), dtype=object)
    w1 = np.ones(len(s1)) if w1 is None else w1
    w0 = np.ones(len(s0)) if w0 is None else w0
    ok1, ok0 = s1.notna().to_numpy(), s0.notna().to_numpy()
    levels = sorted({stratum_key(v) for v in s1[ok1]} | {stratum_key(v) for v in s0[ok0]})
    if len(levels) < 2 or not ok1.any() or not ok0.any():
        return 0.0

    def proportions(s: pd.Series, w: np.ndarray, ok: np.ndarray) -> np.ndarray:
        keys = s[ok].map(stratum_key).to_numpy()
        return np.array([w[ok][keys == lv].sum() for lv in levels]) / w[ok].sum()

    p1, p0 = proportions(s1, w1, ok1)[1:], proportions(s0, w0, ok0)[1:]
    diff = p1 - p0
    if np.allclose(diff, 0):
        return 0.0
    cov = (np.diag(p1) - np.outer(p1, p1) + np.diag(p0) - np.outer(p0, p0)) / 2
    try:
        return float(np.sqrt(diff @ np.linalg.inv(cov) @ diff))
    except np.linalg.LinAlgError:
        return float("nan")


__all__ = ["smd_categorical", "smd_continuous", "stratum_key"]
