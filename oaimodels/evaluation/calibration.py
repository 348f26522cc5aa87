"""Calibration of a run's progression score: the plot, the explanation, recalibrated probabilities.

Why the raw score is not a calibrated probability. The recipe's sampler draws knees with weights
1/class frequency, so a model sees each of the 3 classes about equally often: its implicit prior
for progression (fast or slow) is about 2/3, while in the cohort it is the training prevalence
(often 0.2 or less). The softmax outputs answer "how likely, had the classes been balanced", and
p(progression) comes out inflated. Ranking (AP, ROC AUC) is unaffected; calibration (Brier,
ECE) is not.

Two recalibrations are offered, both clearly labelled and NEVER fitted on the test knees:

- ``prior_corrected``: Bayes' rule for the change of class prior (no fitting). Each class
  probability is multiplied by (training frequency of the class) / (its frequency in the
  sampler's draws, 1/3 for the balanced sampler) and renormalised. Uses only the training
  knees' class counts (``knees.csv``, role ``train``).
- ``platt_oof``: Platt scaling (a logistic regression on logit(score)) fitted on the
  out-of-fold validation predictions the run recorded during training (every fold's best
  epoch on its own validation fold, ``fold_{k}/val_predictions.csv``). The test score is the
  fold ensemble's, so the fit is on single-model scores; it is an approximation, stated as such.

The test knees are only used to report how calibrated each variant is (Brier score, ECE).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.metrics import binary_target, brier_score, class_indices, progression_score, reliability_curve
from oaimodels.plotting import pyplot

log = logging.getLogger(__name__)

RECALIBRATED = rf.RECALIBRATED
LABELS = {
    "raw": "model score (as trained)",
    "prior_corrected": "prior-corrected (training class frequencies)",
    "platt_oof": "Platt, fitted on out-of-fold validation",
}
_EPS = 1e-6


def prior_corrected(probs: np.ndarray, train_frequency: np.ndarray, sampled_frequency: np.ndarray) -> np.ndarray:
    """Class probabilities under the training prior instead of the sampler's (Bayes' rule)."""
    weights = np.asarray(train_frequency, dtype=np.float64) / np.asarray(sampled_frequency, dtype=np.float64)
    adjusted = np.asarray(probs, dtype=np.float64) * weights
    return adjusted / adjusted.sum(axis=1, keepdims=True)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit_platt(score: np.ndarray, y_bin: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of p = sigmoid(a * logit(score) + b), by maximum likelihood (Newton's method)."""
    x, y = _logit(score), np.asarray(y_bin, dtype=np.float64)
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-(a * x + b)))
        w = p * (1 - p) + 1e-12
        grad = np.array([np.sum((p - y) * x), np.sum(p - y)])
        hess = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(a), float(b)


def apply_platt(score: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(a * _logit(score) + b)))


def out_of_fold_predictions(run_dir: Path, folds: list[int]) -> pd.DataFrame | None:
    """Every fold's validation predictions at its best epoch (None if a fold has none)."""
    frames = []
    for fold in folds:
        path = rf.fold_dir(run_dir, fold) / rf.VAL_PREDICTIONS
        if not path.is_file():
            return None
        frames.append(rf.read_table(path).assign(fold=fold))
    return pd.concat(frames, ignore_index=True) if frames else None


def _quality(y_bin: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    curve = reliability_curve(y_bin, p)
    return {"brier": brier_score(y_bin, p), "ece": curve.ece, "reliability": curve.to_dict()}


def recalibrate(
    run_dir: Path, folds: list[int], sampler: str, knees: pd.DataFrame, test: pd.DataFrame, probs: np.ndarray
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The recalibrated test probabilities of progression and their summary for metrics.json."""
    y_bin = binary_target(test["y"].to_numpy().astype(np.int64))
    score = progression_score(probs)
    train = knees[knees["role"] == "train"]
    counts = np.array([(train["label"] == c).sum() for c in CLASSES], dtype=np.float64)
    train_frequency = counts / max(counts.sum(), 1.0)
    present = counts > 0
    sampled = np.where(present, 1.0 / max(int(present.sum()), 1), 1.0) if sampler == "weighted" else train_frequency
    table = test[["knee_id"]].copy()
    table["score"] = score
    summary: dict[str, Any] = {
        "sampler": sampler,
        "train_class_frequency": dict(zip(CLASSES, train_frequency.tolist())),
        "sampled_class_frequency": dict(zip(CLASSES, np.asarray(sampled, dtype=float).tolist())),
        "test_prevalence": float(y_bin.mean()) if y_bin.size else None,
        "raw": _quality(y_bin, score),
        "methods": {},
    }
    if sampler == "weighted" and present.all():
        p = progression_score(prior_corrected(probs, train_frequency, sampled))
        table["p_progression_prior_corrected"] = p
        summary["methods"]["prior_corrected"] = {
            "label": LABELS["prior_corrected"],
            "fitted_on": "training class counts (knees.csv, role train); nothing fitted on the test knees",
            **_quality(y_bin, p),
        }
    oof = out_of_fold_predictions(run_dir, folds)
    if oof is None:
        summary["platt_oof_skipped"] = "a fold has no val_predictions.csv"
    else:
        oof_y = binary_target(class_indices(oof["label"].astype(str).tolist()))
        if len(np.unique(oof_y)) < 2:
            summary["platt_oof_skipped"] = "the out-of-fold validation knees hold a single class"
        else:
            oof_score = progression_score(oof[[f"p_{c}" for c in CLASSES]].to_numpy())
            a, b = fit_platt(oof_score, oof_y)
            p = apply_platt(score, a, b)
            table["p_progression_platt_oof"] = p
            summary["methods"]["platt_oof"] = {
                "label": LABELS["platt_oof"],
                "a": a,
                "b": b,
                "fitted_on": (
                    f"out-of-fold validation predictions of folds {folds} at their best epochs "
                    f"({len(oof)} knees, {int(oof_y.sum())} progressors); single-model scores, "
                    "applied to the fold ensemble's test score"
                ),
                **_quality(y_bin, p),
            }
    return summary, table


def write_recalibrated(out: Path, table: pd.DataFrame) -> Path:
    path = Path(out) / RECALIBRATED
    rf.write_csv(path, table)
    return path


# --------------------------------------------------------------------------- plot and report


def plot_calibration(path: Path, y: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], *, title: str) -> Path:
    """Reliability curve with per-bin counts (and the recalibrated curves), over a histogram of
    test scores by true outcome."""
    plt = pyplot()
    y_bin = binary_target(y)
    score = progression_score(probs)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    rel = metrics["reliability"]
    ax.plot(
        rel["mean_predicted"],
        rel["observed"],
        "o-",
        label=f"model score: Brier {metrics['brier']:.3f}, ECE {metrics['ece']:.3f}",
    )
    for x, obs, n in zip(rel["mean_predicted"], rel["observed"], rel["count"]):
        ax.annotate(f"n={n}", (x, obs), textcoords="offset points", xytext=(4, -11), fontsize=7)
    methods = (metrics.get("recalibration") or {}).get("methods") or {}
    for key, style in (("prior_corrected", "s--"), ("platt_oof", "^--")):
        if key in methods:
            m = methods[key]
            r = m["reliability"]
            ax.plot(
                r["mean_predicted"], r["observed"], style, ms=4, lw=1,
                label=f"{LABELS[key]}: Brier {m['brier']:.3f}, ECE {m['ece']:.3f}",
            )  # fmt: skip
    ax.set(ylabel="observed frequency of progression", xlim=(0, 1), ylim=(-0.04, 1.04), title=f"Calibration: {title}")
    ax.legend(loc="upper left", fontsize=7)
    bins = np.linspace(0, 1, 21)
    hist.hist([score[y_bin == 0], score[y_bin == 1]], bins=bins, stacked=True, label=["no progression", "progression"])
    hist.set(xlabel="predicted p(progression) (model score)", ylabel="knees")
    hist.legend(loc="upper center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def calibration_section(m: dict[str, Any]) -> str:
    """The report's calibration section: why the score is shifted, and the recalibrated variants."""
    rec = m.get("recalibration")
    if not rec:
        return ""
    freq = rec["train_class_frequency"]
    prog = freq.get("fast", 0.0) + freq.get("slow", 0.0)
    lines = ["## Calibration\n\n"]
    if rec["sampler"] == "weighted":
        sampled = rec["sampled_class_frequency"]
        lines.append(
            "The model was trained with weighted sampling (weights 1/class frequency), so it saw the classes "
            f"about equally often: progression made up {sampled.get('fast', 0) + sampled.get('slow', 0):.0%} of "
            f"its training draws, but {prog:.0%} of the training knees (test prevalence "
            f"{rec['test_prevalence']:.0%}). Its p(progression) is therefore inflated: it is calibrated for "
            "balanced classes, not for this cohort. Ranking metrics (AP, ROC AUC) do not depend on this; "
            "the Brier score and ECE do.\n\n"
        )
    else:
        lines.append(
            f"The model was trained with the `{rec['sampler']}` sampler, on the training knees' own class "
            f"frequencies (progression {prog:.0%}); no shift of the class prior is expected.\n\n"
        )
    lines.append(
        "Recalibrated probabilities (in `recalibrated.csv`; never fitted on the test knees, which only "
        "measure the result):\n\n| probability | fitted on | Brier | ECE |\n|---|---|---|---|\n"
    )
    raw = rec["raw"]
    lines.append(f"| {LABELS['raw']} | (none) | {raw['brier']:.3f} | {raw['ece']:.3f} |\n")
    for method in rec["methods"].values():
        lines.append(f"| {method['label']} | {method['fitted_on']} | {method['brier']:.3f} | {method['ece']:.3f} |\n")
    if "platt_oof_skipped" in rec:
        lines.append(f"\nPlatt scaling was not fitted: {rec['platt_oof_skipped']}.\n")
    lines.append(
        "\nThe calibration plot shows the number of test knees in each bin and, below, the histogram of scores.\n\n"
    )
    return "".join(lines)
