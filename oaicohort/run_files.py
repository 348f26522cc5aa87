"""The names of a run folder's own files, and how to recognise one.

Run folders are written by the model layer (``oaimodels.run_folder`` documents the whole layout
and imports these names). Their names live here, in the cohort layer, because the output-path
guard (``oaicohort.outputs``) must protect a run's files in every command, including on an
install without the model layer.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = "config.json"
ENVIRONMENT = "environment.json"
LABELS = "labels.json"
KNEES = "knees.csv"
MLFLOW_RUN = "mlflow.json"

RUN_FILES = (CONFIG, ENVIRONMENT, LABELS, KNEES, MLFLOW_RUN)
"""The run's own files at its top level (``eval/``, ``comparison/`` and new names are outputs)."""
FOLD = re.compile(r"fold_(\d+)")


def fold_dirs(run_dir: Path) -> dict[int, Path]:
    """The fold folders present in ``run_dir``, by fold number."""
    out = {}
    for p in sorted(Path(run_dir).glob("fold_*")):
        match = FOLD.fullmatch(p.name)
        if p.is_dir() and match:
            out[int(match[1])] = p
    return dict(sorted(out.items()))


def is_run_folder(path: Path) -> bool:
    """A folder holding a run: its ``config.json`` and its knee list or a fold folder."""
    path = Path(path)
    return (path / CONFIG).is_file() and ((path / KNEES).is_file() or bool(fold_dirs(path)))


def run_part(path: Path) -> tuple[Path, str] | None:
    """(the protected path, how to say it) when ``path`` is a run folder, one of its own files
    (config.json, knees.csv, ...) or anything in a fold folder (weights, logs); None for anything
    else, an evaluation's ``eval/`` included."""
    path = Path(path)
    for folder in (path, *list(path.parents)[:3]):
        if not is_run_folder(folder):
            continue
        if folder == path:
            return folder, f"is the run folder {folder}"
        first = path.relative_to(folder).parts[0]
        if first in RUN_FILES or FOLD.fullmatch(first):
            return path, f"is the run's own {path.relative_to(folder)} (run {folder})"
        return None
    return None
