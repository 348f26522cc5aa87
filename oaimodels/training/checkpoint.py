"""Checkpoints of a fold: ``last.pt`` (the resume point) and ``best.pt`` (the kept snapshot).

The last epoch's ``last.pt`` holds only the weights and metadata: nothing resumes a finished fold,
and with Adam the optimiser state is two thirds of the file (2d_trf 1.6 GB -> 0.5 GB per fold,
xr_resnext50 276 MB -> 93 MB).

A checkpoint is a plain dict of tensors and JSON-able values (model and optimiser state dicts,
scheduler and sampler state, RNG states, metadata), so it loads with ``weights_only=True``.
:func:`load_checkpoint` refuses anything else: a file that would run code when unpickled (an
object with ``__reduce__``, a lambda, a class instance) raises :class:`CheckpointError`
"refused: not a plain state dict" and nothing in it is executed.

Writes are atomic (temporary name, then rename). A new best is written to ``best.next.pt``
first and renamed after ``last.pt`` records it, so a kill between the two never leaves a
``best.pt`` that the bookkeeping in ``last.pt`` does not describe (:func:`finalise_pending_best`).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from oaicohort.files import atomic_path
from oaimodels import run_folder as rf
from oaimodels.data import InputLayout
from oaimodels.training.config import TrainingError
from oaimodels.training.recipe import build_model


class CheckpointError(TrainingError):
    """A checkpoint file cannot be loaded (not a plain state dict, or not a checkpoint at all)."""


def checkpoint_meta(run: dict[str, Any], fold: int, epoch: int, history: list, best: dict) -> dict[str, Any]:
    """The JSON-able bookkeeping stored with every checkpoint of ``fold``; ``run`` holds the run's
    model, view, init, layout, classes, epochs and config hash (``FoldPlan.checkpoint_meta``)."""
    return {
        **{k: run[k] for k in ("model", "view", "init", "layout", "classes")},
        "fold": fold,
        "epoch": epoch,
        "epochs": run["epochs"],
        "config_hash": run["config_hash"],
        "history": history,
        "best": best,
    }


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a killed run never leaves half a file, and
    a failed write (a full disk) leaves no temporary and says which file it was writing."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError as exc:  # torch's writer reports a failed write (ENOSPC ...) as a RuntimeError
        text = str(exc)
        if "inline_container" not in text and "PytorchStreamWriter" not in text and "file write failed" not in text:
            raise
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(
            f"{path}: the checkpoint could not be written ({_reason(exc)}; {free / 1e6:,.0f} MB free on its disk); "
            "free some space and continue with `oai train ... --resume`"
        ) from None


def _reason(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip()
    return str(exc).splitlines()[0].strip() if str(exc) else type(exc).__name__


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint of this package, loaded with ``weights_only=True`` (no arbitrary pickles).

    Raises :class:`CheckpointError` for a file holding anything but tensors and plain values.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: not a plain state dict ({_reason(exc)})") from None
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_reason(exc)})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: refused: not a plain state dict (holds a {type(ckpt).__name__})")
    return ckpt


def load_fold_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a ``best.pt``/``last.pt`` (built from its metadata, no ImageNet download)."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    model = build_model(InputLayout.from_dict(meta["layout"]), "scratch")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), meta


def write_fold_files(fold_path: Path, history: list[dict], best: dict) -> None:
    """The fold's human-readable files: the epoch log and the best epoch's validation predictions."""
    rf.write_log(fold_path / rf.LOG, history)
    if best.get("predictions"):
        rf.write_csv(fold_path / rf.VAL_PREDICTIONS, pd.DataFrame(best["predictions"]))


def finalise_pending_best(fold_path: Path, best: dict) -> None:
    """After a kill between writing a new best and the checkpoint that records it."""
    pending = fold_path / rf.BEST_PENDING
    if not pending.exists():
        return
    try:
        epoch = load_checkpoint(pending)["meta"]["epoch"]
    except Exception:
        epoch = None
    if epoch is not None and epoch == best.get("epoch"):
        os.replace(pending, fold_path / rf.BEST)
    else:
        pending.unlink()


def checkpoint_meta_of(path: Path | str) -> dict[str, Any]:
    """The metadata of a checkpoint, read without loading its tensors into memory (mmap)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        return load_checkpoint(path).get("meta") or {}  # the full load names what is wrong
    return (ckpt.get("meta") or {}) if isinstance(ckpt, dict) else {}


def check_matches_run(meta: dict[str, Any], saved: dict[str, Any], checkpoint: Path, config_path: Path) -> None:
    """A fold checkpoint was trained with the run's ``config.json``: the same model, view,
    initialisation, input layout and config hash (an edited config.json, or weights of another
    run, are refused before anything is scored)."""
    config = saved.get("config") or {}
    mine = {
        "model": config.get("model"),
        "view": config.get("view"),
        "init": config.get("init"),
        "layout": saved.get("layout"),
        "config_hash": saved.get("config_hash"),
    }
    differ = [k for k in mine if meta.get(k) is not None and mine[k] != meta.get(k)]
    if differ:
        shown = ", ".join(
            f"{k} {mine[k]!r} in config.json, {meta.get(k)!r} in the weights" if k != "layout" else "the input layout"
            for k in differ
        )
        raise CheckpointError(
            f"{config_path}: does not match the weights of {checkpoint} ({shown}); the run folder was edited "
            "or mixed with another run's files: restore the run's config.json or train again"
        )
