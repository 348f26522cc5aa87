"""The PNG plots of an evaluation: ROC, precision-recall, confusion matrix and calibration,
and the overlaid ROC/PR curves of a comparison. Files go through the run folder's atomic writer.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.evaluation import calibration
from oaimodels.metrics import binary_target, progression_score
from oaimodels.plotting import pyplot


def write_plots(out: Path, y: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], *, title: str) -> list[Path]:
    """ROC, PR, confusion-matrix and calibration PNGs of one evaluation."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = pyplot()
    y_bin = binary_target(y)
    score = progression_score(probs)
    paths = []

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fpr, tpr, _ = roc_curve(y_bin, score)
    ax.plot(fpr, tpr, label=f"AUC {metrics['roc_auc']:.3f} ± {metrics['roc_auc_sd']:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out / rf.ROC_PLOT))

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    precision, recall, _ = precision_recall_curve(y_bin, score)
    ax.step(recall, precision, where="post", label=f"AP {metrics['ap']:.3f} ± {metrics['ap_sd']:.3f}")
    ax.axhline(metrics["prevalence"], color="k", ls=":", lw=1, label=f"chance {metrics['prevalence']:.2f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"PR: {title}", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    paths.append(_save(fig, out / rf.PR_PLOT))

    fig, ax = plt.subplots(figsize=(4.5, 4))
    cm = np.asarray(metrics["confusion_matrix"])
    ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black")
    ax.set(
        xticks=range(len(CLASSES)),
        yticks=range(len(CLASSES)),
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted",
        ylabel="true",
        title=f"BA {metrics['balanced_accuracy']:.3f}",
    )
    paths.append(_save(fig, out / rf.CONFUSION_PLOT))

    paths.append(calibration.plot_calibration(out / rf.CALIBRATION_PLOT, y, probs, metrics, title=title))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    rf.atomic_write_bytes(path, buffer.getvalue())
    return path


def overlay_plots(out: Path, runs: list[dict[str, Any]], suffix: str = "") -> list[Path]:
    """ROC and PR curves of several evaluated runs in one figure each (read from their predictions);
    ``suffix`` names a comparison group's files (``roc_2.png``)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = pyplot()
    figs = {"roc": plt.subplots(figsize=(5, 5)), "pr": plt.subplots(figsize=(5, 5))}
    for m in runs:
        pred = rf.read_table(Path(m["out_dir"]) / rf.PREDICTIONS, ("y", "score"))
        y_bin = binary_target(pred["y"].to_numpy())
        fpr, tpr, _ = roc_curve(y_bin, pred["score"])
        figs["roc"][1].plot(fpr, tpr, label=f"{m.get('title', m['name'])} ({m['roc_auc']:.3f})")
        p, r, _ = precision_recall_curve(y_bin, pred["score"])
        figs["pr"][1].step(r, p, where="post", label=f"{m.get('title', m['name'])} ({m['ap']:.3f})")
    figs["roc"][1].plot([0, 1], [0, 1], "k:", lw=1)
    figs["roc"][1].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    figs["pr"][1].set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    paths = []
    for plot, (fig, ax) in zip((rf.ROC_PLOT, rf.PR_PLOT), figs.values()):
        ax.legend(fontsize=7)
        stem, dot, ext = plot.rpartition(".")
        paths.append(_save(fig, out / f"{stem}{suffix}{dot}{ext}"))
    return paths
