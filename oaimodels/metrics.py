"""Metrics of the paper's evaluation, with a subject-level stratified bootstrap.

Classes follow :data:`CLASSES` (``none``, ``fast``, ``slow``); the binary target is "progressor"
(fast or slow) and the binary score of a knee is ``p(fast) + p(slow)``.

* :func:`average_precision` and :func:`roc_auc` equal scikit-learn's ``average_precision_score``
  and ``roc_auc_score`` (ties included) but are plain numpy, so that 1,000 bootstrap resamples
  cost a fraction of a second instead of a few seconds of scikit-learn call overhead.
* :func:`subject_resamples` draws bootstrap resamples of SUBJECTS, stratified by whether the
  subject has a progressing knee: both knees of a person enter or leave a resample together,
  because they are correlated (the paper's knee-level bootstrap understates the spread).

This module is numpy-only (no torch), so evaluation reports can be recomputed anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from oaicohort.vocabulary import CLASSES

"""Class order of probabilities and labels (the same as ``oaimodels.networks.CLASSES``)."""
N_CLASSES = len(CLASSES)
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


# --------------------------------------------------------------------------- targets and scores


def class_indices(labels: Sequence[str] | np.ndarray) -> np.ndarray:
    """Class names (``none``/``fast``/``slow``) to indices into :data:`CLASSES`."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= N_CLASSES):
            raise ValueError(f"class indices must lie in 0..{N_CLASSES - 1}")
        return arr.astype(np.int64)
    lookup: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
    try:
        return np.array([lookup[str(v)] for v in arr], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"unknown class label {exc.args[0]!r}; expected one of {CLASSES}") from None


def binary_target(classes: np.ndarray) -> np.ndarray:
    """1 for a progressor (fast or slow), 0 for none; input: class indices."""
    return (np.asarray(classes) != 0).astype(np.int64)


def progression_score(probs: np.ndarray) -> np.ndarray:
    """The binary score of each knee: ``p(fast) + p(slow)``."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[:, 1] + probs[:, 2]


# --------------------------------------------------------------------------- point metrics


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall step curve (scikit-learn's definition, ties grouped).

    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, highest first; NaN when
    there is no positive.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # Knees with equal scores form one threshold: only the last index of each group counts.
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_group]
    seen = last_of_group + 1
    precision = tp / seen
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic with mid-ranks for ties.

    Equal to scikit-learn's trapezoidal ``roc_auc_score``; NaN when one class is absent.
    """
    y = np.asarray(y_true).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """``n_classes x n_classes`` counts; rows are true classes, columns predicted ones."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_CLASSES) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    cm = confusion(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def brier_score(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between the binary outcome and its predicted probability."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def multiclass_brier_score(classes: np.ndarray, probs: np.ndarray) -> float:
    """Mean over knees of the squared distance between the class probabilities and the one-hot truth."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(classes, dtype=np.int64)]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Calibration of a binary probability in equal-width bins of ``[0, 1]``.

    Only non-empty bins are listed; ``ece`` is the count-weighted mean absolute gap between
    mean predicted probability and observed frequency (expected calibration error).
    """

    bin_low: list[float]
    bin_high: list[float]
    mean_predicted: list[float]
    observed: list[float]
    count: list[int]
    ece: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability_curve(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> ReliabilityCurve:
    """Observed progression frequency against mean predicted probability per bin."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(prob, dtype=np.float64), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # The right edge belongs to the last bin.
    which = np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_bins)
    keep = count > 0
    mean_p = sum_p[keep] / count[keep]
    observed = sum_y[keep] / count[keep]
    ece = float(np.sum(count[keep] * np.abs(mean_p - observed)) / max(1, y.size))
    return ReliabilityCurve(
        bin_low=edges[:-1][keep].tolist(),
        bin_high=edges[1:][keep].tolist(),
        mean_predicted=mean_p.tolist(),
        observed=observed.tolist(),
        count=count[keep].astype(int).tolist(),
        ece=ece,
    )


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapEstimate:
    """A metric on the full sample with its bootstrap SD and percentile 95% CI."""

    value: float
    sd: float
    ci_low: float
    ci_high: float
    n_resamples: int
    n_valid: int  # resamples where the metric was defined (e.g. both classes present)


def subject_resamples(
    subject_ids: Sequence[int] | np.ndarray,
    strata: Sequence[int] | np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Iterator[np.ndarray]:
    """Knee index arrays of a stratified bootstrap that resamples subjects, not knees.

    ``strata`` is given per knee; a subject's stratum is the largest of its knees' (so with the
    binary target, "has a progressing knee"). Each resample draws, within every stratum, as
    many subjects as it holds, with replacement, and takes ALL knees of every drawn subject.
    """
    subjects = np.asarray(subject_ids)
    knee_strata = np.asarray(strata, dtype=np.int64)
    if subjects.shape != knee_strata.shape:
        raise ValueError("subject_ids and strata must have one entry per knee")
    _, codes = np.unique(subjects, return_inverse=True)
    n_subjects = int(codes.max()) + 1 if codes.size else 0
    order = np.argsort(codes, kind="stable")  # knees grouped by subject
    knees_per_subject = np.bincount(codes, minlength=n_subjects)
    first_knee = np.r_[0, np.cumsum(knees_per_subject)[:-1]]
    subject_stratum = np.full(n_subjects, np.iinfo(np.int64).min)
    np.maximum.at(subject_stratum, codes, knee_strata)
    groups = [np.flatnonzero(subject_stratum == s) for s in np.unique(subject_stratum)]

    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        lengths = knees_per_subject[drawn]
        total = int(lengths.sum())
        # positions 0..total-1 mapped to first_knee[subject] + offset within the subject
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        yield order[np.repeat(first_knee[drawn], lengths) + offsets]


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n_items: int,
    resamples: Sequence[np.ndarray] | Iterator[np.ndarray],
) -> BootstrapEstimate:
    """``statistic(indices)`` on all items and on each resample: SD (ddof 1) and 95% CI."""
    value = float(statistic(np.arange(n_items)))
    values = np.array([statistic(idx) for idx in resamples], dtype=np.float64)
    n_total = values.size
    values = values[np.isfinite(values)]
    if values.size < 2:
        return BootstrapEstimate(value, float("nan"), float("nan"), float("nan"), n_total, values.size)
    low, high = np.percentile(values, [2.5, 97.5])
    return BootstrapEstimate(value, float(values.std(ddof=1)), float(low), float(high), n_total, int(values.size))


# --------------------------------------------------------------------------- the evaluation set


def score_predictions(
    classes: np.ndarray,
    probs: np.ndarray,
    subject_ids: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Every metric of the paper's evaluation for one set of knees (JSON-able dict).

    ``classes`` true class indices (N,), ``probs`` class probabilities (N, 3), ``subject_ids``
    (N,). AP, ROC AUC and balanced accuracy carry ``_sd``, ``_ci_low``, ``_ci_high`` from the
    subject bootstrap (``n_resamples``, ``seed``), all computed on the same resamples, and ``_ci``
    as a ``[low, high]`` pair.
    """
    classes = np.asarray(classes, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    subject_ids = np.asarray(subject_ids)
    if probs.shape != (classes.size, N_CLASSES) or subject_ids.shape != classes.shape:
        raise ValueError(
            f"expected classes (N,), probs (N, {N_CLASSES}), subject_ids (N,); got "
            f"{classes.shape}, {probs.shape}, {subject_ids.shape}"
        )
    y = binary_target(classes)
    score = progression_score(probs)
    predicted = probs.argmax(axis=1)
    resamples = list(subject_resamples(subject_ids, y, n_resamples=n_resamples, seed=seed))
    metric_fns: Mapping[str, Callable[[np.ndarray], float]] = {
        "ap": lambda i: average_precision(y[i], score[i]),
        "roc_auc": lambda i: roc_auc(y[i], score[i]),
        "balanced_accuracy": lambda i: balanced_accuracy(classes[i], predicted[i]),
    }
    out: dict[str, Any] = {}
    for name, fn in metric_fns.items():
        est = bootstrap(fn, classes.size, resamples)
        out[name] = est.value
        out[f"{name}_sd"] = est.sd
        out[f"{name}_ci_low"] = est.ci_low
        out[f"{name}_ci_high"] = est.ci_high
        out[f"{name}_ci"] = [est.ci_low, est.ci_high]
    curve = reliability_curve(y, score, n_bins)
    out.update(
        brier=brier_score(y, score),
        brier_multiclass=multiclass_brier_score(classes, probs),
        ece=curve.ece,
        confusion_matrix=confusion(classes, predicted).tolist(),
        confusion_matrix_labels=list(CLASSES),
        reliability=curve.to_dict(),
        n_knees=int(classes.size),
        n_subjects=int(np.unique(subject_ids).size),
        n_positive=int(y.sum()),
        prevalence=float(y.mean()) if y.size else float("nan"),
        class_counts={c: int((classes == i).sum()) for i, c in enumerate(CLASSES)},
        bootstrap={
            "n_resamples": n_resamples,
            "seed": seed,
            "unit": "subject",
            "stratified_by": "subject has a progressing knee",
            "ci": "percentile 95%",
        },
        seed=seed,
    )
    return out
