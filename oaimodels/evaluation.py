"""Fold-ensemble evaluation on the held-out site, metrics, plots and a Markdown report.

For one run folder (``oaimodels.run_folder``): every fold's best model is applied to the test
knees (centre crop); the class probabilities of the fold models are averaged ONCE (the
reference applied softmax a second time to the averaged probabilities, a bug, REFERENCE.md
section 7); a knee's score is ``p(fast) + p(slow)``. Metrics (``oaimodels.metrics``): AP and ROC
AUC on the binary target with subject-bootstrap SD and 95% CI (1,000 resamples, seed 0),
multiclass balanced accuracy, the 3-class confusion matrix, Brier score and reliability curve.
Efficiency: parameters, MACs of one sample, median single-sample latency (synchronised).

Files written to ``RUN_DIR/eval`` (or ``out_dir``)::

    predictions.csv   knee_id, subject_id, side, label, y, p_none, p_fast, p_slow, score,
                      predicted, and score_fold{k} of every fold model
    metrics.json      ap, ap_sd, ap_ci_low, ap_ci_high, roc_auc(_sd/_ci_*), balanced_accuracy(...),
                      brier, ece, confusion_matrix, reliability, n_knees, prevalence, seed,
                      per-fold test AP/AUC, efficiency (params, gmacs, latency_ms), provenance
    roc.png, pr.png, confusion.png, calibration.png
    report.md         a Table-1-style row and the cohort/split summary

Several runs: each gets its own folder, and ``out_dir`` (default: ``comparison/`` beside the
first run) gets ``report.md`` with Table 1 (one row per run) and, where a model was trained both
from scratch and from ImageNet weights, Table 2, plus overlaid ROC and PR curves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from oaicohort.cohort.staleness import StaleResultError
from oaicohort.errors import OAIError
from oaicohort.progress import ProgressCallback
from oaicohort.vocabulary import CLASSES

from . import run_folder as rf
from .data import BatchPreparer, InputLayout, make_source, resident_fits
from .metrics import average_precision, binary_target, progression_score, roc_auc, score_predictions
from .networks import get_spec, to_channels_last
from .training import (
    TrainConfig,
    load_fold_model,
    predict_logits,
    resolve_device,
    softmax,
)

log = logging.getLogger(__name__)

PLOTS = ("roc.png", "pr.png", "confusion.png", "calibration.png")


class EvaluationError(OAIError):
    """A run folder cannot be evaluated (missing files, unfinished folds)."""


# --------------------------------------------------------------------------- ensemble


def ensemble_probabilities(fold_logits: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over fold models of their softmax probabilities: softmax once per model, then average.

    The result is already a probability distribution; applying softmax to it again (as the
    reference did) would squash every knee towards uniform probabilities.
    """
    if not fold_logits:
        raise ValueError("no fold predictions to average")
    return np.mean([softmax(np.asarray(logits, dtype=np.float64)) for logits in fold_logits], axis=0)


def _run_config(run_dir: Path) -> tuple[dict[str, Any], TrainConfig]:
    path = run_dir / rf.CONFIG
    if not path.is_file():
        raise EvaluationError(f"{run_dir}: not a run folder (no {rf.CONFIG}); train with `oai train --out {run_dir}`")
    saved = rf.read_json(path)
    missing = [k for k in ("config", "layout", "folds") if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise EvaluationError(f"{path}: damaged run config: no {', '.join(missing)}; train the run again")
    try:
        get_spec(str(saved["layout"].get("model")))
        InputLayout.from_dict(saved["layout"])
        return saved, TrainConfig.from_dict(saved["config"])
    except KeyError as exc:
        known = str(exc).strip("'\"")
        why = known if known.startswith("unknown model") else f"no {known}"
        raise EvaluationError(f"{path}: damaged run config ({why}); train the run again") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise EvaluationError(f"{path}: damaged run config ({exc}); train the run again") from None


def _test_knees(run_dir: Path, db: Any, config: TrainConfig, layout: InputLayout) -> tuple[pd.DataFrame, bool | None]:
    knees = pd.read_csv(run_dir / rf.KNEES)
    test = knees[knees["role"] == "test"].reset_index(drop=True)
    if test.empty:
        raise EvaluationError(f"{run_dir / rf.KNEES}: the run's split has no test knees")
    matches: bool | None = None
    if db is not None:
        from .data import knee_table

        try:
            current, _ = knee_table(
                db,
                config.store,
                layout.source_view,
                definition=config.definition,
                split=config.split,
                visit=config.visit,
            )
        except StaleResultError:
            raise  # the database says the run's labels or split may put knees in the wrong fold
        except OAIError as exc:
            log.warning("cannot compare the run's test knees with the database: %s", exc)
        else:
            cur = current[current["role"] == "test"].sort_values("knee_id")
            mine = test.sort_values("knee_id")
            matches = (
                cur["knee_id"].tolist() == mine["knee_id"].tolist()
                and cur["label"].astype(str).tolist() == mine["label"].astype(str).tolist()
            )
            if not matches:
                log.warning(
                    "%s: the database's current test labels differ from the run's knees.csv; "
                    "evaluating the run's own knees",
                    run_dir,
                )
    return test, matches


def _efficiency(
    layout: InputLayout, precision: str, device: torch.device, model: torch.nn.Module, latency: bool, view: str | None
) -> dict[str, Any]:
    from .networks.complexity import count_params, measure_latency, model_complexity

    spec = get_spec(layout.model)
    view = view if spec.view_choices else None
    out: dict[str, Any] = {
        "params": count_params(model),
        "input_shapes": {k: list(v) for k, v in layout.input_shapes().items()},
    }
    out["params_m"] = out["params"] / 1e6
    try:
        out["gmacs"] = model_complexity(layout.model, view=view, shapes=layout.input_shapes()).gmacs
    except Exception as exc:
        log.warning("could not count MACs of %s: %s", layout.model, exc)
        out["gmacs"] = None
    if latency:
        inputs = {v: torch.randn(1, *s, device=device) for v, s in layout.input_shapes().items()}
        amp = torch.bfloat16 if precision == "bf16" else None
        out["latency_ms"] = measure_latency(model, inputs, warmup=2, repeats=5, amp_dtype=amp)
        out["latency_device"] = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
        out["latency_precision"] = precision
    return out


def evaluate_run(
    run_dir: Path | str,
    db: Any = None,
    *,
    out_dir: Path | str | None = None,
    device: str = "auto",
    n_resamples: int = 1000,
    seed: int = 0,
    latency: bool = True,
    loader: str = "auto",
    threads: int | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate one run folder on its test knees; write the files; return metrics.json's content.

    ``threads``: torch CPU threads while predicting (restored afterwards; None keeps torch's).
    """
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _evaluate_run(
            Path(run_dir),
            db,
            out_dir=out_dir,
            device=device,
            n_resamples=n_resamples,
            seed=seed,
            latency=latency,
            loader=loader,
            progress=progress,
        )
    finally:
        torch.set_num_threads(saved_threads)


def _evaluate_run(
    run_dir: Path,
    db: Any,
    *,
    out_dir: Path | str | None,
    device: str,
    n_resamples: int,
    seed: int,
    latency: bool,
    loader: str,
    progress: ProgressCallback | None,
) -> dict[str, Any]:
    run_dir = Path(run_dir).expanduser().resolve()
    saved, config = _run_config(run_dir)
    layout = InputLayout.from_dict(saved["layout"])
    folds = list(saved["folds"])
    missing = [k for k in folds if not (rf.fold_dir(run_dir, k) / rf.BEST).is_file()]
    if missing:
        raise EvaluationError(
            f"{run_dir}: fold(s) {missing} have no best.pt (training not finished); "
            f"continue with `oai train ... --out {run_dir} --resume`"
        )
    unfinished = [k for k in folds if not rf.is_fold_complete(run_dir, k)]
    if unfinished:
        log.warning(
            "%s: fold(s) %s stopped before their last epoch; using their best snapshot so far", run_dir.name, unfinished
        )
    out = Path(out_dir) if out_dir is not None else run_dir / rf.EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    test, db_match = _test_knees(run_dir, db, config, layout)
    positions = test["position"].to_numpy()
    mode = (
        loader
        if loader != "auto"
        else ("resident" if resident_fits(len(test), layout.stored_shape, dev) else "workers")
    )
    source = make_source(mode, config.store, layout.source_view, positions, dev, workers=0)
    preparer = BatchPreparer(layout, channels_last=bool(config.channels_last) and dev.type == "cuda")
    batch = config.eval_batch_size or 2 * (config.batch_size or 8)
    precision = config.precision if dev.type == "cuda" else "fp32"  # CPU bf16 is slow and not what was timed
    fold_logits, efficiency = [], None
    try:
        for i, fold in enumerate(folds):
            model, _meta = load_fold_model(rf.fold_dir(run_dir, fold) / rf.BEST, dev)
            if preparer.channels_last:
                to_channels_last(model)
            fold_logits.append(
                predict_logits(model, source, np.arange(len(test)), preparer, batch_size=batch, precision=precision)
            )
            if efficiency is None:
                efficiency = _efficiency(layout, precision, dev, model, latency, config.view)
            del model
            if progress is not None:
                progress(f"evaluating {run_dir.name}", i + 1, len(folds))
    finally:
        source.close()
    probs = ensemble_probabilities(fold_logits)
    y = test["y"].to_numpy().astype(np.int64)
    metrics = score_predictions(y, probs, test["subject_id"].to_numpy(), n_resamples=n_resamples, seed=seed)
    y_bin = binary_target(y)
    fold_scores = {fold: progression_score(softmax(logits)) for fold, logits in zip(folds, fold_logits)}
    per_fold = [
        {"fold": fold, "ap": average_precision(y_bin, s), "roc_auc": roc_auc(y_bin, s)}
        for fold, s in fold_scores.items()
    ]
    spec = get_spec(config.model)
    paper = spec.paper_row(config.view if spec.view_choices else None)
    metrics.update(
        run=str(run_dir),
        name=run_dir.name,
        model=config.model,
        view=config.view,
        views=list(layout.model_views),
        init=config.init,
        folds=folds,
        per_fold=per_fold,
        ensemble="mean of the fold models' softmax probabilities (softmax applied once)",
        efficiency=efficiency,
        paper={
            "ap": paper.ap,
            "ap_sd": paper.ap_sd,
            "roc_auc": paper.auc,
            "roc_auc_sd": paper.auc_sd,
            "gmacs": paper.gmacs,
            "params_m": paper.params_m,
            "latency_ms": paper.latency_ms,
        },
        labels=rf.read_json(run_dir / rf.LABELS) if (run_dir / rf.LABELS).is_file() else {},
        labels_match_database=db_match,
        out_dir=str(out),
    )
    predictions = test[[c for c in ("knee_id", "subject_id", "side", "label", "y") if c in test.columns]].copy()
    for i, c in enumerate(CLASSES):
        predictions[f"p_{c}"] = probs[:, i]
    predictions["score"] = progression_score(probs)
    predictions["predicted"] = [CLASSES[i] for i in probs.argmax(axis=1)]
    for fold, s in fold_scores.items():
        predictions[f"score_fold{fold}"] = s
    rf.write_csv(out / "predictions.csv", predictions)
    rf.write_json(out / "metrics.json", metrics)
    write_plots(out, y, probs, metrics, title=run_dir.name)
    (out / "report.md").write_text(run_report(metrics))
    return metrics


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out: Path, y: np.ndarray, probs: np.ndarray, metrics: dict[str, Any], *, title: str) -> list[Path]:
    """ROC, PR, confusion-matrix and calibration PNGs of one evaluation."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
    y_bin = binary_target(y)
    score = progression_score(probs)
    paths = []

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fpr, tpr, _ = roc_curve(y_bin, score)
    ax.plot(fpr, tpr, label=f"AUC {metrics['roc_auc']:.3f} ± {metrics['roc_auc_sd']:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out / "roc.png"))

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    precision, recall, _ = precision_recall_curve(y_bin, score)
    ax.step(recall, precision, where="post", label=f"AP {metrics['ap']:.3f} ± {metrics['ap_sd']:.3f}")
    ax.axhline(metrics["prevalence"], color="k", ls=":", lw=1, label=f"chance {metrics['prevalence']:.2f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"PR: {title}", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    paths.append(_save(fig, out / "pr.png"))

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
    paths.append(_save(fig, out / "confusion.png"))

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    rel = metrics["reliability"]
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.plot(
        rel["mean_predicted"], rel["observed"], "o-", label=f"Brier {metrics['brier']:.3f}, ECE {metrics['ece']:.3f}"
    )
    ax.set(
        xlabel="predicted p(progression)",
        ylabel="observed frequency",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Calibration: {title}",
    )
    ax.legend(loc="upper left")
    paths.append(_save(fig, out / "calibration.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _overlay_plots(out: Path, runs: list[dict[str, Any]]) -> list[Path]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
    figs = {"roc": plt.subplots(figsize=(5, 5)), "pr": plt.subplots(figsize=(5, 5))}
    for m in runs:
        pred = pd.read_csv(Path(m["out_dir"]) / "predictions.csv")
        y_bin = binary_target(pred["y"].to_numpy())
        fpr, tpr, _ = roc_curve(y_bin, pred["score"])
        figs["roc"][1].plot(fpr, tpr, label=f"{m['name']} ({m['roc_auc']:.3f})")
        p, r, _ = precision_recall_curve(y_bin, pred["score"])
        figs["pr"][1].step(r, p, where="post", label=f"{m['name']} ({m['ap']:.3f})")
    figs["roc"][1].plot([0, 1], [0, 1], "k:", lw=1)
    figs["roc"][1].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    figs["pr"][1].set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    paths = []
    for name, (fig, ax) in figs.items():
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"{name}.png"))
    return paths


# --------------------------------------------------------------------------- reports


def _pm(value: float | None, sd: float | None, digits: int = 2) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if sd is None or not np.isfinite(sd):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {sd:.{digits}f}"


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


TABLE1_HEADER = (
    "| run | model | views | init | AP | ROC AUC | balanced acc. | GMACs | params (M) | latency (ms) | paper AP | paper AUC |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def table1_row(m: dict[str, Any]) -> str:
    eff = m.get("efficiency") or {}
    paper = m.get("paper") or {}
    return (
        f"| {m['name']} | {m['model']} | {','.join(m['views'])} | {m['init']} | {_pm(m['ap'], m['ap_sd'])} | "
        f"{_pm(m['roc_auc'], m['roc_auc_sd'])} | {_pm(m['balanced_accuracy'], m['balanced_accuracy_sd'])} | "
        f"{_num(eff.get('gmacs'), '.2f')} | {_num(eff.get('params_m'), '.2f')} | "
        f"{_num(eff.get('latency_ms'), '.1f')} | {_pm(paper.get('ap'), paper.get('ap_sd'))} | "
        f"{_pm(paper.get('roc_auc'), paper.get('roc_auc_sd'))} |\n"
    )


def _cohort_section(m: dict[str, Any]) -> str:
    labels = m.get("labels") or {}
    lines = ["## Cohort and split\n"]
    definition = labels.get("definition") or {}
    split = labels.get("split") or {}
    if definition:
        lines.append(
            f"- label definition: `{definition.get('name')}` (params hash "
            f"`{str(definition.get('params_hash'))[:12]}`)\n"
        )
    if split:
        lines.append(f"- split id {split.get('id')}: {split.get('params')}\n")
    counts = labels.get("counts") or {}
    if counts:
        lines.append("\n| set | knees | subjects | none | fast | slow |\n|---|---|---|---|---|---|\n")
        for key in sorted(counts, key=lambda k: (k == "test", k)):
            c = counts[key]
            lines.append(f"| {key} | {c['knees']} | {c['subjects']} | {c['none']} | {c['fast']} | {c['slow']} |\n")
    return "".join(lines)


def run_report(m: dict[str, Any]) -> str:
    eff = m.get("efficiency") or {}
    cm = np.asarray(m["confusion_matrix"])
    lines = [
        f"# Evaluation of `{m['name']}`\n\n",
        f"Model `{m['model']}` ({', '.join(m['views'])}, init {m['init']}), ensemble of folds "
        f"{m['folds']} on {m['n_knees']} test knees of {m['n_subjects']} subjects "
        f"(prevalence {m['prevalence']:.3f}). ± = SD over {m['bootstrap']['n_resamples']} stratified "
        f"bootstrap resamples of subjects (seed {m['seed']}); 95% CI in brackets.\n\n",
        TABLE1_HEADER,
        table1_row(m),
        "\n",
        f"- AP {m['ap']:.3f} [{m['ap_ci_low']:.3f}, {m['ap_ci_high']:.3f}]; ROC AUC {m['roc_auc']:.3f} "
        f"[{m['roc_auc_ci_low']:.3f}, {m['roc_auc_ci_high']:.3f}]; balanced accuracy "
        f"{m['balanced_accuracy']:.3f} [{m['balanced_accuracy_ci_low']:.3f}, {m['balanced_accuracy_ci_high']:.3f}]\n",
        f"- Brier score {m['brier']:.3f}, expected calibration error {m['ece']:.3f}\n",
        "- per-fold test AP: " + ", ".join(f"fold {p['fold']}: {p['ap']:.3f}" for p in m["per_fold"]) + "\n",
    ]
    if eff.get("latency_ms") is not None:
        lines.append(
            f"- latency: median of single-sample forward passes on {eff.get('latency_device')} "
            f"({eff.get('latency_precision')}), synchronised\n"
        )
    lines.append(
        "\nConfusion matrix (rows true, columns predicted):\n\n| | " + " | ".join(CLASSES) + " |\n|---|---|---|---|\n"
    )
    for i, c in enumerate(CLASSES):
        lines.append(f"| {c} | " + " | ".join(str(int(n)) for n in cm[i]) + " |\n")
    lines.append("\n![ROC](roc.png) ![PR](pr.png) ![confusion](confusion.png) ![calibration](calibration.png)\n\n")
    lines.append(_cohort_section(m))
    return "".join(lines)


def comparison_report(runs: list[dict[str, Any]]) -> str:
    lines = ["# Comparison of runs (Table 1)\n\n", TABLE1_HEADER, *(table1_row(m) for m in runs), "\n"]
    by_model: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for m in runs:
        kind = "imagenet" if m["init"] == "imagenet" else "scratch" if m["init"] == "scratch" else None
        if kind is not None:
            by_model.setdefault((m["model"], ",".join(m["views"])), {})[kind] = m
    pairs = {k: v for k, v in by_model.items() if len(v) == 2}
    if pairs:
        lines.append(
            "## ImageNet initialisation vs from scratch (Table 2)\n\n"
            "| model | views | AP scratch | AP ImageNet | ROC AUC scratch | ROC AUC ImageNet |\n"
            "|---|---|---|---|---|---|\n"
        )
        for (model, views), v in pairs.items():
            s, i = v["scratch"], v["imagenet"]
            lines.append(
                f"| {model} | {views} | {_pm(s['ap'], s['ap_sd'])} | {_pm(i['ap'], i['ap_sd'])} | "
                f"{_pm(s['roc_auc'], s['roc_auc_sd'])} | {_pm(i['roc_auc'], i['roc_auc_sd'])} |\n"
            )
        lines.append("\n")
    lines.append("![ROC](roc.png) ![PR](pr.png)\n\n")
    lines.append(
        "Per-run reports: " + ", ".join(f"[{m['name']}]({Path(m['out_dir']) / 'report.md'})" for m in runs) + "\n\n"
    )
    lines.append(_cohort_section(runs[0]))
    return "".join(lines)


def evaluate_runs(
    run_dirs: Sequence[Path | str],
    db: Any = None,
    out_dir: Path | str | None = None,
    *,
    device: str = "auto",
    n_resamples: int = 1000,
    seed: int = 0,
    latency: bool = True,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate one or several run folders; returns ``{"runs": [metrics...], "report": path, ...}``.

    One run: its files go to ``out_dir`` (default ``RUN_DIR/eval``) and its metrics are also
    merged into the top level of the result. Several: each run's files go to ``out_dir/<name>``
    (default ``RUN_DIR/eval``), and the comparison report to ``out_dir`` (default
    ``comparison/`` beside the first run).
    """
    if not run_dirs:
        raise EvaluationError("no run folder given")
    dirs = [Path(r).expanduser().resolve() for r in run_dirs]
    if len({d.name for d in dirs}) < len(dirs) and out_dir is not None:
        raise EvaluationError("run folders to compare must have distinct names")
    kwargs = dict(
        device=device, n_resamples=n_resamples, seed=seed, latency=latency, threads=threads, progress=progress
    )
    if len(dirs) == 1:
        m = evaluate_run(dirs[0], db, out_dir=out_dir, **kwargs)
        return {**m, "runs": [m], "report": str(Path(m["out_dir"]) / "report.md")}
    root = Path(out_dir) if out_dir is not None else dirs[0].parent / "comparison"
    runs = [evaluate_run(d, db, out_dir=(root / d.name) if out_dir is not None else None, **kwargs) for d in dirs]
    root.mkdir(parents=True, exist_ok=True)
    _overlay_plots(root, runs)
    report = root / "report.md"
    report.write_text(comparison_report(runs))
    return {"runs": runs, "report": str(report), "out_dir": str(root)}
