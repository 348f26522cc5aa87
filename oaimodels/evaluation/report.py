"""The Markdown reports of an evaluation: one run's report (a Table-1-style row, confidence
intervals, confusion matrix, cohort and split) and the comparison of several runs (Table 1, and
Table 2 where a model was trained both from scratch and from ImageNet weights).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.evaluation.calibration import calibration_section
from oaimodels.evaluation.comparable import comparable_groups, why_apart
from oaimodels.evaluation.held_out_sets import SharedTestCheck
from oaimodels.training.tracking import tags_text


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


def _cohort_section(m: dict[str, Any], title: str = "## Cohort and split") -> str:
    labels = m.get("labels") or {}
    lines = [f"{title}\n"]
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


def unfinished_note(m: dict[str, Any]) -> str:
    """A run evaluated with folds that stopped before their last epoch says so (empty otherwise)."""
    folds = m.get("incomplete_folds") or []
    if not folds:
        return ""
    return (
        f"**Unfinished run:** fold(s) {', '.join(map(str, folds))} of `{m['name']}` stopped before their last "
        "epoch; their best snapshot so far is used. Resume the training for the final numbers.\n\n"
    )


def run_report(m: dict[str, Any]) -> str:
    eff = m.get("efficiency") or {}
    cm = np.asarray(m["confusion_matrix"])
    lines = [
        f"# Evaluation of {m.get('title', m['name'])}\n\n",
        unfinished_note(m),
        f"Run folder `{m['name']}`{tags_text(m.get('tags'))}. ",
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
    lines.append(
        f"\n![ROC]({rf.ROC_PLOT}) ![PR]({rf.PR_PLOT}) ![confusion]({rf.CONFUSION_PLOT}) "
        f"![calibration]({rf.CALIBRATION_PLOT})\n\n"
    )
    lines.append(calibration_section(m))
    lines.append(_cohort_section(m))
    return "".join(lines)


def _link(target: Path, root: Path) -> str:
    """``target`` relative to the folder of the report that links to it (works for relative --out)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(root).resolve())).as_posix()


def _test_set_lines(runs: list[dict[str, Any]], check: SharedTestCheck | None) -> list[str]:
    """What Table 1 was measured on: one shared test set, or a loud warning naming the runs."""
    if check is None:
        counts = sorted({int(m["n_knees"]) for m in runs if m.get("n_knees") is not None})
        if len(counts) == 1:
            return [f"Measured on {counts[0]} test knees.\n\n"]
        return []
    if check.same:
        first = check.runs[0]
        return [f"Measured on one shared test set: {first.knees} knees of {first.subjects} subjects.\n\n"]
    rows = "".join(f"| {r.name} | {r.knees} | {r.not_in_first} | {r.missing_from_first} |\n" for r in check.runs)
    return [
        "> **WARNING: these runs were tested on different knees; their rows are not comparable.** "
        f"{check.shared_knees} knees of {check.shared_subjects} subjects are common to all; "
        f"{len(check.differing)} run(s) differ from {check.runs[0].name}'s test set. Derive the labels with "
        "`oai label --store S --require sag,xray` and train every run from them.\n\n",
        f"| run | test knees | not in {check.runs[0].name}'s | of {check.runs[0].name}'s missing |\n"
        "|---|---|---|---|\n",
        rows,
        "\n",
    ]


def comparison_report(
    runs: list[dict[str, Any]], root: Path | None = None, test_sets: Sequence[SharedTestCheck] = ()
) -> str:
    """Table 1 (and Table 2) of the runs; runs with another test set (split, test sites, label
    definition: ``comparable``) in tables of their own, each saying why; each table states the
    knees it was measured on, loudly when its runs were tested on different knees (``test_sets``:
    the check of each group, ``held_out_sets``)."""
    groups = comparable_groups(runs)
    checks = {tuple(r.name for r in c.runs): c for c in test_sets}
    lines = ["# Comparison of runs (Table 1)\n\n"]
    lines.extend(unfinished_note(m) for m in runs)
    if len(groups) > 1:
        lines.append(
            f"These runs were not tested on the same knees: they are reported in {len(groups)} separate tables, "
            "never ranked against each other.\n\n"
        )
    for number, group in enumerate(groups, start=1):
        suffix = f"_{number}" if len(groups) > 1 else ""
        if len(groups) > 1:
            lines.append(f"## Table 1, group {number}: {group.describe()}\n\n")
            if number > 1:
                lines.append(f"Apart from group 1: {why_apart(group, groups[0])}.\n\n")
        check = checks.get(tuple(m["name"] for m in group.runs))
        lines.extend([*_test_set_lines(group.runs, check), TABLE1_HEADER, *(table1_row(m) for m in group.runs), "\n"])
        lines.append(_table2(group.runs))
        lines.append(f"![ROC]({plot_name(rf.ROC_PLOT, suffix)}) ![PR]({plot_name(rf.PR_PLOT, suffix)})\n\n")
        title = f"### Cohort and split of group {number}" if len(groups) > 1 else "## Cohort and split"
        lines.append(_cohort_section(group.runs[0], title) + "\n")
    lines.append(
        "Per-run reports: "
        + ", ".join(f"[{m['name']}]({_link(Path(m['out_dir']) / rf.REPORT, root or Path.cwd())})" for m in runs)
        + "\n"
    )
    return "".join(lines)


def plot_name(name: str, suffix: str) -> str:
    """``roc.png`` of a comparison, ``roc_2.png`` of its second group."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}{suffix}{dot}{ext}"


def _table2(runs: list[dict[str, Any]]) -> str:
    by_model: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for m in runs:
        kind = "imagenet" if m["init"] == "imagenet" else "scratch" if m["init"] == "scratch" else None
        if kind is not None:
            by_model.setdefault((m["model"], ",".join(m["views"])), {})[kind] = m
    pairs = {k: v for k, v in by_model.items() if len(v) == 2}
    if not pairs:
        return ""
    lines = [
        "## ImageNet initialisation vs from scratch (Table 2)\n\n"
        "| model | views | AP scratch | AP ImageNet | ROC AUC scratch | ROC AUC ImageNet |\n"
        "|---|---|---|---|---|---|\n"
    ]
    for (model, views), v in pairs.items():
        s, i = v["scratch"], v["imagenet"]
        lines.append(
            f"| {model} | {views} | {_pm(s['ap'], s['ap_sd'])} | {_pm(i['ap'], i['ap_sd'])} | "
            f"{_pm(s['roc_auc'], s['roc_auc_sd'])} | {_pm(i['roc_auc'], i['roc_auc_sd'])} |\n"
        )
    lines.append("\n")
    return "".join(lines)
