"""Training with the paper's recipe, fold by fold, into a run folder (``oaimodels.run_folder``).

Recipe (REFERENCE.md section 5): focal loss (gamma 2, no class weights); weighted random
sampling with weights 1/class frequency and epoch length = training-set size; Adam, lr 1e-4,
weight decay 1e-4; linear warm-up of the learning rate from 1e-5 over 5 epochs (per epoch), then
constant; 100 epochs; the validation fold's binary AP after every epoch, the best snapshot kept
(ties go to the later epoch); per-model batch sizes from the registry.

Modules, in the order a run uses them:

- :mod:`.config`       ``TrainConfig``, its validation and ``auto`` resolution, ``PreparedRun``
- :mod:`.recipe`       model, optimiser, learning-rate schedule and loss of the recipe
- :mod:`.rng`          per-epoch reseeding, RNG state capture/restore (exact resume)
- :mod:`.distributed`  ranks, barriers, DDP wrapping, gathering validation shards
- :mod:`.checkpoint`   ``last.pt``/``best.pt`` save and load (plain state dicts only)
- :mod:`.loop`         one fold: ``_train_epoch`` / ``_validate`` / ``_keep_best``
- :mod:`.run`          ``prepare_run``, torch settings, process spawning, ``train_run``, ``train_all``
- :mod:`.launcher`     ``submit_study``: one SLURM/local job per (model, fold) through submitit
- :mod:`.jobs`         ``FoldJob`` (a fold as a requeueable job), ``jobs.json``, fold states

Prediction (``predict_logits``, the autocast context) lives in :mod:`oaimodels.logits`, so
evaluation loads checkpoints without importing the loop. The names below are re-exported
lazily for the same reason: ``from oaimodels.training import TrainConfig`` imports only
:mod:`.config`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "OPERATIONAL": "config",
    "PreparedRun": "config",
    "TrainConfig": "config",
    "TrainingError": "config",
    "resolve_config": "config",
    "resolve_device": "config",
    "build_model": "recipe",
    "loss_fn": "recipe",
    "lr_at": "recipe",
    "make_optimizer": "recipe",
    "make_scheduler": "recipe",
    "rng_state": "rng",
    "seed_everything": "rng",
    "set_rng_state": "rng",
    "Dist": "distributed",
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_fold_model": "checkpoint",
    "EpochHook": "loop",
    "train_fold": "loop",
    "mri_models": "run",
    "prepare_run": "run",
    "run_name": "run",
    "train_all": "run",
    "train_run": "run",
}
_INFERENCE = ("amp_context", "predict_logits", "softmax")

__all__ = [
    "OPERATIONAL",
    "CheckpointError",
    "Dist",
    "EpochHook",
    "PreparedRun",
    "TrainConfig",
    "TrainingError",
    "amp_context",
    "build_model",
    "load_checkpoint",
    "load_fold_model",
    "loss_fn",
    "lr_at",
    "make_optimizer",
    "make_scheduler",
    "mri_models",
    "predict_logits",
    "prepare_run",
    "resolve_config",
    "resolve_device",
    "rng_state",
    "run_name",
    "seed_everything",
    "set_rng_state",
    "softmax",
    "train_all",
    "train_fold",
    "train_run",
]

if TYPE_CHECKING:
    from oaimodels.logits import amp_context, predict_logits, softmax
    from oaimodels.training.checkpoint import CheckpointError, load_checkpoint, load_fold_model
    from oaimodels.training.config import (
        OPERATIONAL,
        PreparedRun,
        TrainConfig,
        TrainingError,
        resolve_config,
        resolve_device,
    )
    from oaimodels.training.distributed import Dist
    from oaimodels.training.loop import EpochHook, train_fold
    from oaimodels.training.recipe import build_model, loss_fn, lr_at, make_optimizer, make_scheduler
    from oaimodels.training.rng import rng_state, seed_everything, set_rng_state
    from oaimodels.training.run import mri_models, prepare_run, run_name, train_all, train_run


def __getattr__(name: str) -> Any:
    if name in _INFERENCE:
        module = importlib.import_module("oaimodels.logits")
    elif name in _HOMES:
        module = importlib.import_module(f"{__name__}.{_HOMES[name]}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
