"""The run folder: a plain, documented layout of files (not an object that owns a training run).

One training run (one model, one view, one initialisation, all its folds) writes::

    RUN_DIR/
      config.json            the resolved TrainConfig (every default filled in, seed included),
                             the input layout (store view, stored/crop/model input shapes) and
                             the store's path and preprocessing-params hash
      environment.json       python, platform, package versions, git commit (if any), device
      labels.json            label definition (name, id, params hash) and split (id, params);
                             knee counts per role/fold/class
      knees.csv              the knees the run used: knee_id, subject_id, side, label, role,
                             fold, position (store slot of the view read), y (class index),
                             checksum (sha256 of the volume read: eval, predict and explain
                             check that a store still holds it, ``oaimodels.run_volumes``)
      fold_{k}/log.jsonl     one JSON object per finished epoch: epoch, lr, train_loss,
                             val_loss, val_ap, val_roc_auc, volumes_per_s, seconds, ...
      fold_{k}/last.pt       checkpoint after the last finished epoch (resume point): model,
                             optimiser, scheduler, RNG states, sampler state, history, best;
                             once the fold has finished, only the final epoch's model and
                             metadata (nothing resumes a finished fold)
      fold_{k}/best.pt       model of the best validation AP (ties: later epoch) + metadata
      fold_{k}/val_predictions.csv   the best epoch's validation predictions (p_none, p_fast,
                             p_slow per knee)
      fold_{k}/summary.json  written when the fold has trained all its epochs (best epoch, AP)
      fold_{k}/events.out.tfevents.*  TensorBoard scalars of each epoch (``--no-tensorboard``: none)
      mlflow.json            with ``--track mlflow``: the MLflow run this training run logs to
      jobs.json              with ``oai train --launcher slurm|local``: each fold's job (launcher,
                             job id, stdout/stderr log paths, submission time); see
                             ``oaimodels.training.jobs``

Evaluation (``oai eval``) adds ``RUN_DIR/eval/`` (or ``--out``): predictions.csv, metrics.json,
recalibrated.csv (probabilities recalibrated on the validation folds, never the test set), the
PNG plots (roc, pr, confusion, calibration) and report.md. Comparing several runs writes
report.md and overlaid roc/pr plots to ``comparison/`` beside the first run (or ``--out``).

Every file name above is a constant of this module (the run's own top-level names are
``oaicohort.run_files``, re-exported here: the output guard needs them without the model layer);
other modules import them rather than spell the names out.

Checkpoints are plain dicts of tensors and JSON-able values, so they load with
``torch.load(path, weights_only=True)`` (no arbitrary pickles). Every file is written to a
temporary name and renamed into place, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from oaicohort import files
from oaicohort.cohort.export import json_safe
from oaicohort.errors import InputFileError
from oaicohort.run_files import (  # noqa: F401 - the run's own names, importable from here with the rest
    CONFIG,
    ENVIRONMENT,
    KNEES,
    LABELS,
    MLFLOW_RUN,
    RUN_FILES,
    fold_dirs,
    is_run_folder,
)

LOG = "log.jsonl"
LAST = "last.pt"
BEST = "best.pt"
BEST_PENDING = "best.next.pt"
VAL_PREDICTIONS = "val_predictions.csv"
SUMMARY = "summary.json"
EVAL_DIR = "eval"
COMPARISON_DIR = "comparison"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
REPORT = "report.md"
ROC_PLOT = "roc.png"
PR_PLOT = "pr.png"
CONFUSION_PLOT = "confusion.png"
CALIBRATION_PLOT = "calibration.png"
PLOTS = (ROC_PLOT, PR_PLOT, CONFUSION_PLOT, CALIBRATION_PLOT)
RECALIBRATED = "recalibrated.csv"
JOBS = "jobs.json"

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "zarr", "oai-toolkit")


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold}"


KNEES_COLUMNS = ("knee_id", "subject_id", "side", "label", "role", "fold", "position", "y")
"""The columns every ``knees.csv`` has; runs since the volume checksums also have ``checksum``."""
CHECKSUM = "checksum"
"""knees.csv's sha256 of the volume each knee was trained or tested on (``oaimodels.run_volumes``)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it into place (removed
    whatever happens; one left by a killed process is removed by the next write there)."""
    files.atomic_write_bytes(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    files.atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    safe = json_safe(json.loads(json.dumps(obj, default=_json_default)))  # NaN/Infinity -> null
    atomic_write_text(path, json.dumps(safe, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise InputFileError(
            path, f"invalid JSON ({getattr(exc, 'msg', exc)}); the file is damaged", line=line
        ) from None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_log(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def read_log(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


def read_table(path: Path, columns: Iterable[str] = ()) -> pd.DataFrame:
    """A CSV of the run folder (knees.csv, val_predictions.csv, predictions.csv), with ``columns``
    required; an empty, damaged or incomplete file is an ``InputFileError`` naming it."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputFileError(path, "the file is empty; the run folder is damaged (train the run again)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(path, f"not a readable CSV ({reason}); the run folder is damaged") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputFileError(path, f"no column(s) {', '.join(missing)}; the run folder is damaged")
    return frame


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the toolkit's source checkout, if it is one (None for an installed wheel)."""
    where = start or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def environment(device: str) -> dict[str, Any]:
    """What produced a run: interpreter, platform, package versions, git commit, device."""
    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": git_commit(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_count"] = torch.cuda.device_count()
    return info


def is_fold_complete(run_dir: Path, fold: int) -> bool:
    return (fold_dir(run_dir, fold) / SUMMARY).is_file()


def is_run_complete(run_dir: Path) -> bool:
    """Whether every fold the run's config asks for has finished."""
    config_path = Path(run_dir) / CONFIG
    if not config_path.is_file():
        return False
    folds = read_json(config_path).get("folds") or []
    return bool(folds) and all(is_fold_complete(run_dir, k) for k in folds)
