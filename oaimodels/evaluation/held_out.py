"""Fold-ensemble evaluation on the held-out site, metrics, plots and a Markdown report.

For one run folder (``oaimodels.run_folder``): every fold's best model is applied to the test
knees (centre crop); the class probabilities of the fold models are averaged ONCE (the
reference applied softmax a second time to the averaged probabilities, a bug, REFERENCE.md
section 7); a knee's score is ``p(fast) + p(slow)``. Metrics (``oaimodels.metrics``): AP and ROC
AUC on the binary target with subject-bootstrap SD and 95% CI (1,000 resamples, seed 0),
multiclass balanced accuracy, the 3-class confusion matrix, Brier score and reliability curve.
Efficiency: parameters, MACs of one sample, median single-sample latency (synchronised).

Plots are drawn by :mod:`oaimodels.evaluation.plots`, reports written by
:mod:`oaimodels.evaluation.report`. Files written to ``RUN_DIR/eval`` (or ``out_dir``)::

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

from oaicohort.db import Database
from oaicohort.db.staleness import StaleResultError
from oaicohort.errors import OAIError
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.outputs import check_output
from oaicohort.progress import ProgressCallback
from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.data import BatchPreparer, InputLayout, KneeQuery, knee_table, make_source
from oaimodels.evaluation import calibration
from oaimodels.evaluation.comparable import comparable_groups, run_folder_groups
from oaimodels.evaluation.held_out_sets import SharedTestCheck, compare_test_sets
from oaimodels.evaluation.plots import overlay_plots, write_plots
from oaimodels.evaluation.report import TABLE1_HEADER, comparison_report, run_report, table1_row
from oaimodels.logits import predict_logits, softmax
from oaimodels.metrics import average_precision, binary_target, progression_score, roc_auc, score_predictions
from oaimodels.networks import get_spec, to_channels_last
from oaimodels.run_volumes import locate_run_volumes
from oaimodels.training.checkpoint import check_matches_run, checkpoint_meta_of, load_fold_model
from oaimodels.training.config import TrainConfig, resolve_device
from oaimodels.training.tracking import evaluation_titles

log = logging.getLogger(__name__)

__all__ = [
    "PLOTS",
    "TABLE1_HEADER",
    "EvaluationError",
    "comparison_report",
    "ensemble_probabilities",
    "evaluate_run",
    "evaluate_runs",
    "run_report",
    "table1_row",
    "write_plots",
]

PLOTS = rf.PLOTS


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


def _test_knees(
    run_dir: Path, db: Database | None, store: str, view: str, query: KneeQuery
) -> tuple[pd.DataFrame, bool | None]:
    knees = rf.read_table(run_dir / rf.KNEES, rf.KNEES_COLUMNS)
    test = knees[knees["role"] == "test"].reset_index(drop=True)
    if test.empty:
        raise EvaluationError(f"{run_dir / rf.KNEES}: the run's split has no test knees")
    matches: bool | None = None
    if db is not None:
        try:
            current = knee_table(db, store, view, query).knees
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
    from oaimodels.networks.complexity import count_params, measure_latency, model_complexity

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
    db: Database | None = None,
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
    db: Database | None,
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
    unfinished_jobs = [k for k in folds if not rf.is_fold_complete(run_dir, k)]
    if unfinished_jobs and (run_dir / rf.JOBS).is_file():  # cluster jobs: every fold, or none
        raise EvaluationError(f"{run_dir}: fold(s) {unfinished_jobs} not finished; see `oai runs status {run_dir}`")
    missing = [k for k in folds if not (rf.fold_dir(run_dir, k) / rf.BEST).is_file()]
    if missing:
        raise EvaluationError(
            f"{run_dir}: fold(s) {missing} have no best.pt (training not finished); "
            f"continue with `oai train ... --out {run_dir} --resume`"
        )
    for fold in folds:  # an edited config.json or another run's weights: refused before any work
        checkpoint = rf.fold_dir(run_dir, fold) / rf.BEST
        check_matches_run(checkpoint_meta_of(checkpoint), saved, checkpoint, run_dir / rf.CONFIG)
    unfinished = [k for k in folds if not rf.is_fold_complete(run_dir, k)]
    if unfinished:
        log.warning(
            "%s: fold(s) %s stopped before their last epoch; using their best snapshot so far (stated in %s and %s)",
            run_dir.name,
            unfinished,
            rf.METRICS,
            rf.REPORT,
        )
    out = Path(out_dir) if out_dir is not None else run_dir / rf.EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    test, db_match = _test_knees(run_dir, db, config.store, layout.source_view, config.knee_query())
    store = VolumeStore.open(config.store)
    # the volumes the run was tested on, wherever the store now keeps them (or refused)
    test, volumes = locate_run_volumes(store, layout.source_view, test, visit=config.visit, run=run_dir)
    source = make_source(loader, store, layout.source_view, test["position"].to_numpy(), dev, workers=0)
    preparer = BatchPreparer(layout, channels_last=bool(config.channels_last) and dev.type == "cuda")
    batch = config.eval_batch_size or 2 * (config.batch_size or 8)
    precision = config.precision if dev.type == "cuda" else "fp32"  # CPU bf16 is slow and not what was timed
    fold_logits, efficiency = [], None
    try:
        for i, fold in enumerate(folds):
            checkpoint = rf.fold_dir(run_dir, fold) / rf.BEST
            model, meta = load_fold_model(checkpoint, dev)
            check_matches_run(meta, saved, checkpoint, run_dir / rf.CONFIG)
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
        incomplete_folds=unfinished,
        volumes=volumes.to_dict(),
        out_dir=str(out),
    )
    metrics.update(evaluation_titles(config, test, metrics))
    metrics["recalibration"], recalibrated = calibration.recalibrate(
        run_dir, folds, config.sampler, rf.read_table(run_dir / rf.KNEES), test, probs
    )
    calibration.write_recalibrated(out, recalibrated)
    predictions = test[[c for c in ("knee_id", "subject_id", "side", "label", "y") if c in test.columns]].copy()
    for i, c in enumerate(CLASSES):
        predictions[f"p_{c}"] = probs[:, i]
    predictions["score"] = progression_score(probs)
    predictions["predicted"] = [CLASSES[i] for i in probs.argmax(axis=1)]
    for fold, s in fold_scores.items():
        predictions[f"score_fold{fold}"] = s
    rf.write_csv(out / rf.PREDICTIONS, predictions)
    rf.write_json(out / rf.METRICS, metrics)
    write_plots(out, y, probs, metrics, title=metrics["title"])
    rf.atomic_write_text(out / rf.REPORT, run_report(metrics))
    return metrics


def evaluate_runs(
    run_dirs: Sequence[Path | str],
    db: Database | None = None,
    out_dir: Path | str | None = None,
    *,
    device: str = "auto",
    n_resamples: int = 1000,
    seed: int = 0,
    latency: bool = True,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    allow_different_test_knees: bool = False,
) -> dict[str, Any]:
    """Evaluate one or several run folders; returns ``{"runs": [metrics...], "report": path, ...}``.

    One run: its files go to ``out_dir`` (default ``RUN_DIR/eval``) and its metrics are also
    merged into the top level of the result. Several: each run's files go to ``out_dir/<name>``
    (default ``RUN_DIR/eval``), and the comparison report to ``out_dir`` (default
    ``comparison/`` beside the first run). Runs compared must have been tested on the same knees
    (``held_out_sets``); with ``allow_different_test_knees`` they are evaluated anyway and the
    report says, at its top, which differ and by how many knees (``test_sets`` in the result).
    """
    if not run_dirs:
        raise EvaluationError("no run folder given")
    dirs = [Path(r).expanduser().resolve() for r in run_dirs]
    if len({d.name for d in dirs}) < len(dirs) and out_dir is not None:
        raise EvaluationError("run folders to compare must have distinct names")
    if out_dir is not None:
        out_dir = check_output(out_dir, option="out", database=db)
    checks: list[SharedTestCheck] = []  # one per group of comparable runs (``comparable``) of 2 or more
    if len(dirs) > 1:
        for d in dirs:  # a folder that is not a run is explained before its test knees are read
            _run_config(d)
        checks = [compare_test_sets(group) for group in run_folder_groups(dirs) if len(group) > 1]
        differing = [c for c in checks if not c.same]
        if differing and not allow_different_test_knees:
            raise EvaluationError(
                f"cannot compare: {differing[0].summary()}. Table 1 compares models on one test set: derive the "
                "labels with `oai label --store S --require sag,xray` and train every run from them, or "
                "pass --allow-different-test-knees to evaluate anyway (the report then flags it)"
            )
        for check in differing:
            log.warning("%s", check.summary())

    def evaluate(run_dir: Path, run_out: Path | str | None) -> dict[str, Any]:
        return evaluate_run(
            run_dir,
            db,
            out_dir=run_out,
            device=device,
            n_resamples=n_resamples,
            seed=seed,
            latency=latency,
            threads=threads,
            progress=progress,
        )

    if len(dirs) == 1:
        m = evaluate(dirs[0], out_dir)
        return {**m, "runs": [m], "report": str(Path(m["out_dir"]) / rf.REPORT)}
    root = Path(out_dir) if out_dir is not None else dirs[0].parent / rf.COMPARISON_DIR
    runs = [evaluate(d, (root / d.name) if out_dir is not None else None) for d in dirs]
    root.mkdir(parents=True, exist_ok=True)
    groups = comparable_groups(runs)
    for number, group in enumerate(groups, start=1):
        overlay_plots(root, group.runs, f"_{number}" if len(groups) > 1 else "")
    if len(groups) > 1:
        log.warning(
            "the runs were not tested on the same knees (%s): reported in %d separate tables",
            "; ".join(f"{', '.join(m['name'] for m in g.runs)}: {g.describe()}" for g in groups),
            len(groups),
        )
    report = root / rf.REPORT
    rf.atomic_write_text(report, comparison_report(runs, root, checks))
    return {
        "runs": runs,
        "report": str(report),
        "out_dir": str(root),
        "comparable": len(groups) == 1,
        "groups": [g.to_dict() for g in groups],
        "test_sets": [c.to_dict() for c in checks],
    }
