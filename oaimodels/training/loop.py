"""One fold's epoch loop: train an epoch, validate, keep the best snapshot, checkpoint.

Reproducibility and exact resume. All randomness of epoch ``e`` of fold ``k`` comes from streams
seeded by ``(seed, k, e, rank)``: the sampler's draws, the augmentation parameters, and the global
torch/numpy/python generators (dropout) are reseeded at the start of every epoch
(:func:`_train_epoch`). ``last.pt`` holds the model, optimiser, scheduler, sampler state, RNG
states, the epoch history and the best snapshot's bookkeeping. A run killed at any point and
resumed continues at the epoch after its last checkpoint and, with deterministic settings on
CPU, ends with exactly the metrics and weights of an uninterrupted run.

The best snapshot is the epoch of the highest validation-fold binary AP; ties go to the later
epoch (:func:`_keep_best`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from oaicohort.progress import ProgressCallback
from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.data import (
    BatchPreparer,
    InputLayout,
    VolumeSource,
    WeightedEpochSampler,
    batches_of,
    cpu_generator,
    derive_seed,
    offset_bounds,
    to_device,
)
from oaimodels.logits import amp_context, predict_logits, softmax
from oaimodels.metrics import average_precision, binary_target, progression_score, roc_auc
from oaimodels.networks import to_channels_last
from oaimodels.training.checkpoint import (
    checkpoint_meta,
    finalise_pending_best,
    load_checkpoint,
    save_checkpoint,
    write_fold_files,
)
from oaimodels.training.config import TrainingError
from oaimodels.training.distributed import Dist, barrier, gather_rows, reduce_epoch, wrap_ddp
from oaimodels.training.losses import focal_loss
from oaimodels.training.plan import FoldPlan
from oaimodels.training.recipe import build_model, make_optimizer, make_scheduler
from oaimodels.training.rng import rng_state, seed_everything, set_rng_state
from oaimodels.training.sampling import make_sampler
from oaimodels.training.tracking import open_fold_tracker

log = logging.getLogger(__name__)

EpochHook = Callable[[dict[str, Any]], None]


@dataclass
class _FoldData:
    train_items: np.ndarray  # items of the run's source
    val_items: np.ndarray
    train_y: torch.Tensor  # class index per train item (on device)
    val_rows: pd.DataFrame
    crop_bounds: torch.Tensor  # (items of the source, 3, 2): where each volume's random crop may start


@dataclass
class _FoldState:
    """What a fold carries from epoch to epoch (all of it is in ``last.pt``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: WeightedEpochSampler
    history: list[dict[str, Any]]
    best: dict[str, Any]
    start_epoch: int = 0


def _fold_data(
    train_frame: pd.DataFrame, fold: int, device: torch.device, layout: InputLayout, *, limit: int | None, seed: int
) -> _FoldData:
    in_fold = (train_frame["fold"] == fold).to_numpy()
    train_items = np.flatnonzero(~in_fold)
    val_items = np.flatnonzero(in_fold)
    if limit is not None and limit < train_items.size:
        rng = np.random.default_rng(derive_seed(seed, fold, 0x11))
        train_items = np.sort(rng.choice(train_items, size=limit, replace=False))
    if val_items.size == 0:
        raise TrainingError(f"fold {fold} has no validation knees")
    y = torch.as_tensor(train_frame["y"].to_numpy()[train_items], dtype=torch.long, device=device)
    # random crops stay inside each volume's real data (padding of a small series is never seen)
    bounds = torch.from_numpy(offset_bounds(train_frame, layout.stored_shape, layout.crop_shape))
    return _FoldData(train_items, val_items, y, train_frame.iloc[val_items].reset_index(drop=True), bounds)


def _new_fold_state(
    plan: FoldPlan, fold: int, fd: _FoldData, train_frame: pd.DataFrame, d: Dist, device: torch.device
) -> _FoldState:
    seed_everything(derive_seed(plan.seed, fold, 0x1717))  # model init: the same on every rank
    model = build_model(plan.layout, plan.init).to(device)
    if plan.channels_last:
        to_channels_last(model)
    optimizer = make_optimizer(model, lr=plan.schedule.lr, weight_decay=plan.weight_decay)
    sampler = make_sampler(
        plan.sampler,
        train_frame["y"].to_numpy()[fd.train_items],
        seed=derive_seed(plan.seed, fold),
        rank=d.rank,
        world_size=d.world,
    )
    best = {"epoch": None, "val_ap": None, "predictions": None}
    return _FoldState(model, optimizer, make_scheduler(optimizer, plan.schedule), sampler, [], best)


def _resume(s: _FoldState, plan: FoldPlan, fold: int, last_path: Path, d: Dist) -> None:
    """Continue ``s`` from ``last.pt``: weights, optimiser, schedule, RNG states and history."""
    ckpt = load_checkpoint(last_path)
    meta = ckpt["meta"]
    if meta["config_hash"] != plan.config_hash:
        raise TrainingError(f"{last_path} was written by a different configuration; cannot resume")
    s.model.load_state_dict(ckpt["model"])
    s.history, s.best = list(meta["history"]), dict(meta["best"])
    s.start_epoch = int(meta["epoch"]) + 1
    if "optimizer" in ckpt:
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
    elif s.start_epoch < plan.epochs:  # a finished fold's last.pt keeps its final weights only
        raise TrainingError(f"{last_path} holds no optimiser state (a finished fold's); cannot resume from it")
    if d.main:
        fold_path = last_path.parent
        finalise_pending_best(fold_path, s.best)
        write_fold_files(fold_path, s.history, s.best)
    log.info("fold %d: resuming after epoch %d", fold, s.start_epoch - 1)


def _train_epoch(
    s: _FoldState,
    train_model: nn.Module,
    plan: FoldPlan,
    fold: int,
    epoch: int,
    fd: _FoldData,
    source: VolumeSource,
    preparer: BatchPreparer,
    d: Dist,
    progress: ProgressCallback | None,
) -> dict[str, Any]:
    """One pass over the epoch's weighted draws; returns lr, loss and timings (summed over ranks)."""
    device = source.device
    t_epoch = time.perf_counter()
    seed_everything(derive_seed(plan.seed, fold, epoch, d.rank, 0xD0))
    generator = cpu_generator(plan.seed, fold, epoch, d.rank, 0xA6)
    lr = s.optimizer.param_groups[0]["lr"]
    batches = batches_of(s.sampler.indices(epoch), max(1, plan.batch_size // d.world))
    train_model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    n_seen = 0
    data_wait = 0.0
    t_wait = time.perf_counter()
    for step, volumes in enumerate(source.iterate([fd.train_items[b] for b in batches])):
        data_wait += time.perf_counter() - t_wait
        y = fd.train_y[to_device(torch.as_tensor(batches[step]), device)]
        bounds = fd.crop_bounds[torch.as_tensor(fd.train_items[batches[step]])]
        inputs = preparer.train_inputs(volumes, generator, bounds)
        with amp_context(device, plan.precision):
            logits = train_model(inputs)
        loss = focal_loss(logits, y, gamma=plan.focal_gamma)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()
        loss_sum += loss.detach().double() * y.numel()
        n_seen += int(y.numel())
        if progress is not None and d.main:
            progress(f"fold {fold}", epoch + (step + 1) / len(batches), plan.epochs)
        t_wait = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_seconds = time.perf_counter() - t_epoch
    totals = torch.stack([loss_sum, torch.tensor(float(n_seen), device=device, dtype=torch.float64)])
    reduce_epoch(d, s.model, totals)
    n_train = int(totals[1])
    return {
        "t_epoch": t_epoch,
        "lr": lr,
        "train_loss": float(totals[0] / max(float(totals[1]), 1.0)),
        "n_train": n_train,
        "train_seconds": train_seconds,
        "data_wait": data_wait,
    }


def _validate(
    s: _FoldState,
    plan: FoldPlan,
    fd: _FoldData,
    source: VolumeSource,
    preparer: BatchPreparer,
    d: Dist,
) -> tuple[dict[str, Any], np.ndarray]:
    """Validation-fold loss, binary AP and ROC AUC (every rank predicts its shard), and the probabilities."""
    val_shard = fd.val_items[d.rank :: d.world]
    logits_shard = predict_logits(
        s.model, source, val_shard, preparer, batch_size=plan.eval_batch_size, precision=plan.precision
    )
    _, val_logits = gather_rows(d, val_shard, logits_shard)
    probs = softmax(val_logits)
    val_y = np.array(fd.val_rows["y"], dtype=np.int64)
    val_loss = float(focal_loss(torch.from_numpy(val_logits), torch.from_numpy(val_y), gamma=plan.focal_gamma))
    y_bin = binary_target(val_y)
    score = progression_score(probs)
    metrics = {
        "val_loss": val_loss,
        "val_ap": average_precision(y_bin, score),
        "val_roc_auc": roc_auc(y_bin, score),
        "n_val": int(len(val_y)),
    }
    return metrics, probs


def _ap_key(ap: float | None) -> float:
    return -math.inf if ap is None or not np.isfinite(ap) else float(ap)


def _keep_best(s: _FoldState, epoch: int, val: dict[str, Any], fd: _FoldData, probs: np.ndarray) -> bool:
    """Make ``epoch`` the best snapshot if its AP is at least the best so far (ties: later epoch)."""
    improved = _ap_key(val["val_ap"]) >= _ap_key(s.best["val_ap"])
    if improved:
        s.best = {
            "epoch": epoch,
            "val_ap": val["val_ap"],
            "val_roc_auc": val["val_roc_auc"],
            "predictions": _val_predictions(fd.val_rows, probs),
        }
    return improved


def _save_epoch(s: _FoldState, plan: FoldPlan, fold: int, epoch: int, improved: bool, fold_path: Path) -> None:
    """Rank 0's files after an epoch: pending best, ``last.pt``, then the best's rename and the log."""
    meta = checkpoint_meta(plan.checkpoint_meta, fold, epoch, s.history, s.best)
    if improved:
        save_checkpoint(
            {
                "model": s.model.state_dict(),
                "meta": {k: v for k, v in meta.items() if k not in ("history", "best")}
                | {"val_ap": s.best["val_ap"], "val_roc_auc": s.best["val_roc_auc"]},
            },
            fold_path / rf.BEST_PENDING,
        )
    last: dict[str, Any] = {"model": s.model.state_dict(), "meta": meta}
    if epoch + 1 < plan.epochs:  # the resume point; nothing resumes a finished fold (weights only)
        last |= {
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "sampler": s.sampler.state_dict(),
            "rng": rng_state(),
        }
    save_checkpoint(last, fold_path / rf.LAST)
    if improved:
        os.replace(fold_path / rf.BEST_PENDING, fold_path / rf.BEST)
    write_fold_files(fold_path, s.history, s.best)


def _val_predictions(rows: pd.DataFrame, probs: np.ndarray) -> dict[str, list]:
    return {
        "knee_id": rows["knee_id"].astype(int).tolist(),
        "subject_id": rows["subject_id"].astype(int).tolist(),
        "label": rows["label"].astype(str).tolist(),
        **{f"p_{c}": probs[:, i].astype(float).tolist() for i, c in enumerate(CLASSES)},
    }


def train_fold(
    plan: FoldPlan,
    fold: int,
    source: VolumeSource,
    train_frame: pd.DataFrame,
    *,
    d: Dist = Dist(),
    resume: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: EpochHook | None = None,
) -> dict[str, Any]:
    """Train one fold; returns its summary (best epoch and validation AP)."""
    fold_path = rf.fold_dir(plan.run_dir, fold)
    if d.main:
        fold_path.mkdir(parents=True, exist_ok=True)
    barrier(d)
    fd = _fold_data(train_frame, fold, source.device, plan.layout, limit=plan.limit_train, seed=plan.seed)
    s = _new_fold_state(plan, fold, fd, train_frame, d, source.device)
    if resume and (fold_path / rf.LAST).is_file():
        _resume(s, plan, fold, fold_path / rf.LAST, d)

    train_model = wrap_ddp(s.model, d, source.device)
    if plan.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    preparer = BatchPreparer(plan.layout, plan.augment, channels_last=plan.channels_last)
    tracker = open_fold_tracker(plan.tracking, fold, s.start_epoch, main=d.main)

    for epoch in range(s.start_epoch, plan.epochs):
        train = _train_epoch(s, train_model, plan, fold, epoch, fd, source, preparer, d, progress)
        val, probs = _validate(s, plan, fd, source, preparer, d)
        s.scheduler.step()
        seconds = time.perf_counter() - train["t_epoch"]
        record = {
            "epoch": epoch,
            "lr": train["lr"],
            "train_loss": train["train_loss"],
            "val_loss": val["val_loss"],
            "val_ap": val["val_ap"],
            "val_roc_auc": val["val_roc_auc"],
            "volumes_per_s": train["n_train"] / train["train_seconds"] if train["train_seconds"] > 0 else None,
            "train_seconds": train["train_seconds"],
            "data_wait_seconds": train["data_wait"],
            "seconds": seconds,
            "n_train": train["n_train"],
            "n_val": val["n_val"],
        }
        s.history.append(record)
        improved = _keep_best(s, epoch, val, fd, probs)
        if d.main:
            _save_epoch(s, plan, fold, epoch, improved, fold_path)
        tracker.epoch(record)
        if on_epoch is not None and d.main:
            on_epoch({"fold": fold, **record, "best_epoch": s.best["epoch"]})
        barrier(d)

    summary = {
        "fold": fold,
        "epochs": plan.epochs,
        "best_epoch": s.best["epoch"],
        "best_val_ap": s.best["val_ap"],
        "best_val_roc_auc": s.best.get("val_roc_auc"),
        "final_train_loss": s.history[-1]["train_loss"] if s.history else None,
        "seconds": float(sum(r["seconds"] for r in s.history)),
    }
    if d.main:
        rf.write_json(fold_path / rf.SUMMARY, summary)
    tracker.finish(summary, plan.run_dir)
    barrier(d)
    return summary
