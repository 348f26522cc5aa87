"""What the processes of a run need once it is prepared, taken from the resolved config in one place.

:func:`run_plan` is where a :class:`~oaimodels.training.config.TrainConfig` ends: after it, the
processes (:mod:`.run`), the fold loop (:mod:`.loop`), the recipe (:mod:`.recipe`), the
checkpoints and the trackers each receive the few values they use, never the config itself. A
plan is plain data, so spawned processes get it pickled; the opened store travels beside it (and
reopens itself by path in a spawned process).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from oaicohort.vocabulary import CLASSES
from oaimodels.data import AugmentParams, InputLayout
from oaimodels.training.config import PreparedRun, Schedule
from oaimodels.training.tracking import TrackingOptions, tracking_options


@dataclass(frozen=True)
class FoldPlan:
    """What training one fold needs: the recipe's values, the layout and where the files go."""

    layout: InputLayout
    run_dir: Path
    seed: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    precision: str  # bf16 | fp32
    init: str  # imagenet | scratch | FILE
    channels_last: bool
    compile: bool
    limit_train: int | None
    sampler: str  # weighted | shuffle
    augment: AugmentParams
    schedule: Schedule
    weight_decay: float
    focal_gamma: float
    checkpoint_meta: dict[str, Any]  # what every checkpoint records beside its fold and epoch
    tracking: TrackingOptions

    @property
    def config_hash(self) -> str:
        return str(self.checkpoint_meta["config_hash"])


@dataclass(frozen=True)
class RunPlan:
    """What every process of a run needs besides the opened store (handed to each process beside
    the plan): the fold plan, the knees and folds, how to feed the volumes, and the torch
    settings of the process."""

    fold: FoldPlan
    knees: pd.DataFrame
    folds: list[int]
    loader: str  # auto | resident | workers
    workers: int
    device: str
    threads: int | None
    deterministic: bool
    nproc: int


def run_plan(p: PreparedRun) -> RunPlan:
    """The plan of the prepared run ``p`` (its config resolved by ``prepare_run``)."""
    c = p.config
    meta = {
        "model": c.model,
        "view": c.view,
        "init": c.init,
        "layout": p.layout.to_dict(),
        "classes": list(CLASSES),
        "epochs": c.epochs,
        "config_hash": c.hash(),
    }
    fold = FoldPlan(
        layout=p.layout,
        run_dir=p.run_dir,
        seed=c.seed,
        epochs=c.epochs,
        batch_size=c.batch_size or 1,
        eval_batch_size=c.eval_batch_size or 2 * (c.batch_size or 1),
        precision=c.precision,
        init=c.init,
        channels_last=bool(c.channels_last),
        compile=c.compile,
        limit_train=c.limit_train,
        sampler=c.sampler,
        augment=c.augment,
        schedule=c.schedule(),
        weight_decay=c.weight_decay,
        focal_gamma=c.focal_gamma,
        checkpoint_meta=meta,
        tracking=tracking_options(c, p.run_dir),
    )
    return RunPlan(fold, p.knees, p.folds, c.loader, c.workers, c.device, c.threads, c.deterministic, c.nproc)
