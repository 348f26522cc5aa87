"""Runs and studies: prepare a run (config, knees, run folder), set up torch, spawn processes, train folds.

Entry points: :func:`train_run` (one model, all requested folds) and :func:`train_all` (every
MRI model of Table 1, one run folder each). Both take a :class:`~oaimodels.training.config.TrainConfig`.

:func:`prepare_run` resolves the config, reads the knees (from the database, or a table the
caller holds), checks leakage and creates the run folder, or, when resuming, checks that the
folder's ``config.json`` and ``knees.csv`` describe the same computation.

Distributed training: under ``torchrun`` every rank calls :func:`train_run`; with
``nproc > 1`` it spawns the processes itself (``oaimodels.training.distributed``). The batch
size is the global one (split across processes); only rank 0 writes the run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.progress import ProgressCallback
from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.data import (
    EXTENT_COLUMNS,
    InputLayout,
    knee_table,
    make_source,
    resident_fits,
    resolve_layout,
    validate_knees,
)
from oaimodels.data.store_models import table1_models
from oaimodels.networks import get_spec, list_models
from oaimodels.training.config import PreparedRun, TrainConfig, TrainingError, resolve_config, resolve_device
from oaimodels.training.distributed import Dist, barrier, env_dist, free_port
from oaimodels.training.loop import EpochHook, train_fold
from oaimodels.training.recipe_sources import recipe_sources

log = logging.getLogger(__name__)


def mri_models() -> list[str]:
    """Registered models that read MRI volumes (every row of Table 1 but the X-ray prior art)."""
    return [m for m in list_models() if set(get_spec(m).views) <= {"sag", "cor", "ax"}]


# --------------------------------------------------------------------------- the prepared run


def _labels_summary(knees: pd.DataFrame) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for (role, fold), group in knees.groupby(["role", knees["fold"].astype("Int64")], dropna=False):
        key = "test" if role == "test" else f"fold_{int(fold)}"
        counts[key] = {
            "knees": int(len(group)),
            "subjects": int(group["subject_id"].nunique()),
            **{c: int((group["label"] == c).sum()) for c in CLASSES},
        }
    return counts


def prepare_run(
    config: TrainConfig,
    db: Any = None,
    *,
    knees: pd.DataFrame | None = None,
    labels_info: dict[str, Any] | None = None,
    resume: bool = False,
    write: bool = True,
) -> PreparedRun:
    """Resolve the config, load knees, check leakage, and create (or check) the run folder.

    ``knees`` (columns of ``oaimodels.data.KNEE_COLUMNS``) replaces the database query, for
    callers that hold their own table; otherwise ``db`` gives the labels, split and store index.
    """
    config = resolve_config(config)
    store = VolumeStore.open(config.store)
    layout = resolve_layout(config.model, config.view, store, config.crop_shape)
    info = dict(labels_info or {})
    if knees is None:
        if db is None:
            raise TrainingError("train_run needs a database (labels, split) or a knee table")
        knees, volume_info = knee_table(
            db,
            config.store,
            layout.source_view,
            definition=config.definition,
            split=config.split,
            visit=config.visit,
        )
        attrs = dict(knees.attrs)
        info.update(
            definition={
                "name": attrs.get("definition"),
                "id": attrs.get("definition_id"),
                "params_hash": attrs.get("params_hash"),
            },
            split={"id": attrs.get("split_id"), "params": attrs.get("split_params")},
            **volume_info,
        )
    knees = validate_knees(knees)  # the leakage check runs here, whatever the table's source
    keep = [
        c
        for c in ("knee_id", "subject_id", "side", "site", "label", "role", "fold", "position", "y", *EXTENT_COLUMNS)
        if c in knees.columns
    ]
    knees = knees[keep].reset_index(drop=True)
    knees["fold"] = knees["fold"].astype("Int64")
    available = sorted(int(f) for f in knees.loc[knees["role"] == "train", "fold"].dropna().unique())
    folds = list(config.folds) if config.folds is not None else available
    missing = [f for f in folds if f not in available]
    if missing or not folds:
        raise TrainingError(f"fold(s) {missing or folds} not in the split (folds: {available})")
    if len(available) < 2:
        raise TrainingError("the split has fewer than 2 cross-validation folds; nothing to validate on")
    config.folds = folds
    info["counts"] = _labels_summary(knees)
    run_dir = Path(config.out)
    prepared = PreparedRun(config, layout, knees, folds, run_dir, info, store.params_hash)
    if write:
        _init_run_folder(prepared, resume=resume)
    return prepared


def _init_run_folder(p: PreparedRun, *, resume: bool) -> None:
    config_path = p.run_dir / rf.CONFIG
    if config_path.is_file():
        if not resume:
            raise TrainingError(
                f"{p.run_dir} already holds a training run; pass --resume to continue it or choose another --out"
            )
        saved_json = rf.read_json(config_path)
        saved = TrainConfig.from_dict(saved_json["config"])
        mine, theirs = p.config.essential(), saved.essential()
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differ:
            raise TrainingError(
                f"cannot resume {p.run_dir}: option(s) {differ} differ from the run's config.json "
                f"(saved: {', '.join(f'{k}={theirs.get(k)!r}' for k in differ)})"
            )
        saved_layout = InputLayout.from_dict(saved_json["layout"])
        if saved_layout != p.layout:  # e.g. an X-ray run normalised with the MRI constants before issue 21
            raise TrainingError(
                f"cannot resume {p.run_dir}: its input layout differs from what this toolkit builds "
                f"(saved {saved_layout}, now {p.layout}); start a new run"
            )
        saved_knees = pd.read_csv(p.run_dir / rf.KNEES)
        cols = ["knee_id", "label", "role", "position"]
        same = (
            len(saved_knees) == len(p.knees)
            and all(saved_knees[c].astype(str).tolist() == p.knees[c].astype(str).tolist() for c in cols)
            and saved_knees["fold"].astype("Int64").equals(p.knees["fold"].astype("Int64"))
        )
        if not same:
            raise TrainingError(
                f"cannot resume {p.run_dir}: the labels, split or store index changed since the "
                "run started (knees.csv differs); start a new run"
            )
        return
    if p.run_dir.exists() and any(p.run_dir.iterdir()):
        raise TrainingError(f"{p.run_dir} exists and is not empty (and holds no run); choose another --out")
    p.run_dir.mkdir(parents=True, exist_ok=True)
    rf.write_json(
        config_path,
        {
            "config": p.config.to_dict(),
            "config_hash": p.config.hash(),
            "folds": p.folds,
            "layout": p.layout.to_dict(),
            "store": {"path": p.config.store, "params_hash": p.store_params_hash},
            "classes": list(CLASSES),
            # where each recipe value comes from (the reference's file and line, or ours and why)
            "recipe_sources": [
                line.to_dict() for line in recipe_sources(p.config, p.layout, VolumeStore.open(p.config.store).params)
            ],
        },
    )
    rf.write_json(p.run_dir / rf.ENVIRONMENT, rf.environment(p.config.device))
    rf.write_json(p.run_dir / rf.LABELS, p.labels_info)
    rf.write_csv(p.run_dir / rf.KNEES, p.knees)


# --------------------------------------------------------------------------- runs


@contextmanager
def _torch_settings(c: TrainConfig, d: Dist) -> Iterator[torch.device]:
    """Threads, determinism and CUDA flags of a run, restored afterwards (library callers keep theirs)."""
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
    )
    device = torch.device(c.device)
    if device.type == "cuda":
        if d.active or device.index is None:
            device = torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not c.deterministic
        # TF32 matmuls for fp32 training unless bit-reproducibility was asked for
        torch.backends.cuda.matmul.allow_tf32 = not c.deterministic
    if c.threads:
        torch.set_num_threads(c.threads)
    if c.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield device
    finally:
        threads, det, warn_only, benchmark, tf32 = saved
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _choose_loader(c: TrainConfig, n_volumes: int, shape: Sequence[int], device: torch.device) -> str:
    if c.loader != "auto":
        return c.loader
    return "resident" if resident_fits(n_volumes, shape, device) else "workers"


def _train_prepared(
    p: PreparedRun,
    d: Dist,
    *,
    resume: bool,
    progress: ProgressCallback | None,
    on_epoch: EpochHook | None,
) -> list[dict[str, Any]]:
    with _torch_settings(p.config, d) as device:
        return _train_folds(p, d, device, resume=resume, progress=progress, on_epoch=on_epoch)


def _train_folds(
    p: PreparedRun,
    d: Dist,
    device: torch.device,
    *,
    resume: bool,
    progress: ProgressCallback | None,
    on_epoch: EpochHook | None,
) -> list[dict[str, Any]]:
    c = p.config
    train_frame = p.knees[p.knees["role"] == "train"].reset_index(drop=True)
    todo = [k for k in p.folds if not rf.is_fold_complete(p.run_dir, k)]
    summaries = [rf.read_json(rf.fold_dir(p.run_dir, k) / rf.SUMMARY) for k in p.folds if k not in todo]
    if not todo:
        return summaries
    mode = _choose_loader(c, len(train_frame), p.layout.stored_shape, device)
    log.info("loader: %s (%d training-role volumes of %s)", mode, len(train_frame), p.layout.stored_shape)
    source = make_source(
        mode,
        c.store,
        p.layout.source_view,
        train_frame["position"].to_numpy(),
        device,
        workers=c.workers,
        progress=progress if d.main else None,
    )
    try:
        for fold in todo:
            summaries.append(
                train_fold(p, fold, source, train_frame, d=d, resume=resume, progress=progress, on_epoch=on_epoch)
            )
    finally:
        source.close()
    return sorted(summaries, key=lambda s: s["fold"])


def _spawned_worker(rank: int, world: int, port: int, p: PreparedRun, resume: bool) -> None:
    device = torch.device(p.config.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cpu" and not p.config.threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _train_prepared(
            p,
            Dist(rank, world, rank),
            resume=resume,
            progress=None,
            on_epoch=lambda r: log.info("fold %(fold)d epoch %(epoch)d: loss %(train_loss).4f val AP %(val_ap).3f", r),
        )
    finally:
        dist.destroy_process_group()


def train_run(
    config: TrainConfig,
    db: Any = None,
    progress: ProgressCallback | None = None,
    *,
    resume: bool = False,
    knees: pd.DataFrame | None = None,
    labels_info: dict[str, Any] | None = None,
    on_epoch: EpochHook | None = None,
) -> Path:
    """Train ``config.model`` on every requested fold into the run folder ``config.out``.

    ``db`` supplies labels, split and the store index (``knees`` may replace it); ``progress``
    gets one task per fold (completed in epochs); ``on_epoch`` gets each epoch's log record.
    Returns the run folder. Under ``torchrun`` every rank calls this; with ``config.nproc > 1``
    it spawns the processes itself.
    """
    d = env_dist()
    if d.active:  # under torchrun: this process is one rank
        owns_group = not dist.is_initialized()
        if owns_group:
            device = resolve_device(config.device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            p = prepare_run(config, db, knees=knees, labels_info=labels_info, resume=resume, write=False)
            if d.main:
                _init_run_folder(p, resume=resume)
            barrier(d)
            _train_prepared(p, d, resume=resume, progress=progress, on_epoch=on_epoch)
        finally:
            if owns_group:
                dist.destroy_process_group()
        return p.run_dir
    p = prepare_run(config, db, knees=knees, labels_info=labels_info, resume=resume)
    if p.config.nproc > 1:
        import torch.multiprocessing as mp

        world = p.config.nproc
        if torch.device(p.config.device).type == "cuda" and torch.cuda.device_count() < world:
            raise TrainingError(f"--nproc {world} needs {world} GPUs, found {torch.cuda.device_count()}")
        mp.start_processes(
            _spawned_worker,
            args=(world, free_port(), p, resume),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        return p.run_dir
    _train_prepared(p, Dist(), resume=resume, progress=progress, on_epoch=on_epoch)
    return p.run_dir


def run_name(model: str, view: str | None, init: str) -> str:
    return "_".join(x for x in (model, view, init) if x)


def train_all(
    config: TrainConfig,
    db: Any = None,
    progress: ProgressCallback | None = None,
    *,
    models: Sequence[str] | None = None,
    resume: bool = False,
    on_epoch: EpochHook | None = None,
) -> list[Path]:
    """Train every MRI model of Table 1 (every view of 2D+TRF), one run folder each under
    ``config.out`` named ``{model}[_{view}]_{init}``.

    Finished runs are skipped, so the same command continues a study, and a second study with
    another ``init`` into the same folder adds only the runs it lacks (Table 2: volumetric models
    have no ImageNet encoder and are shared). An unfinished run needs ``resume=True``.
    """
    root = Path(config.out)
    done = []
    for model in models or table1_models(config.store):
        spec = get_spec(model)
        views: Sequence[str | None] = (
            ([config.view] if config.view else list(spec.view_choices) or [None]) if spec.view_choices else [None]
        )
        for view in views:
            init = config.init
            if init == "auto":
                init = "imagenet" if spec.imagenet_encoder else "scratch"
            elif init == "imagenet" and not spec.imagenet_encoder:
                init = "scratch"  # volumetric models have no ImageNet encoder
            run_dir = root / run_name(model, view, init)
            if rf.is_run_complete(run_dir):
                log.info("%s: complete, skipped", run_dir.name)
                done.append(run_dir)
                continue
            sub = dataclasses.replace(config, model=model, view=view, init=init, out=str(run_dir))
            done.append(train_run(sub, db, progress, resume=resume, on_epoch=on_epoch))
    return done
