"""A run: prepare it (config, knees, run folder), set up torch, spawn processes, train folds.

Entry point: :func:`train_run` (one model, all requested folds), taking a
:class:`~oaimodels.training.config.TrainConfig`; a study of several models is
:mod:`oaimodels.training.study`.

:func:`prepare_run` resolves the config, opens the store (once), reads the knees (from the
database, or a table the caller holds), checks leakage and creates the run folder, or, when
resuming, checks that the folder's ``config.json`` and ``knees.csv`` describe the same
computation. The processes then get the run's plan (``oaimodels.training.plan``), not the config.

Distributed training: under ``torchrun`` every rank calls :func:`train_run`; with
``nproc > 1`` it spawns the processes itself (``oaimodels.training.distributed``). The batch
size is the global one (split across processes); only rank 0 writes the run folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from oaicohort.db import Database
from oaicohort.files import clean_leftovers, folder_lock
from oaicohort.imaging.store.slot_checksums import slot_checksums
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.outputs import RUN, check_output
from oaicohort.progress import ProgressCallback
from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.data import EXTENT_COLUMNS, InputLayout, knee_table, make_source, resolve_layout, validate_knees
from oaimodels.training.config import PreparedRun, TrainConfig, TrainingError, resolve_config, resolve_device
from oaimodels.training.distributed import Dist, barrier, env_dist, free_port
from oaimodels.training.loop import EpochHook, train_fold
from oaimodels.training.plan import RunPlan, run_plan
from oaimodels.training.recipe_sources import recipe_sources

log = logging.getLogger(__name__)


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
    db: Database | None = None,
    *,
    knees: pd.DataFrame | None = None,
    labels_info: dict[str, Any] | None = None,
    resume: bool = False,
    write: bool = True,
    only_folds: Sequence[int] | None = None,
) -> PreparedRun:
    """Resolve the config, load knees, check leakage, and create (or check) the run folder.

    ``knees`` (columns of ``oaimodels.data.KNEE_COLUMNS``) replaces the database query, for
    callers that hold their own table; otherwise ``db`` gives the labels, split and store index.
    ``only_folds``: the prepared run trains only these of its folds (a cluster job trains one;
    ``oaimodels.training.jobs``); the config keeps every fold of the run.
    """
    config = resolve_config(config)
    store = VolumeStore.open(config.store)
    config.store = str(store.path)  # canonical, as the store names itself (part of the config hash)
    layout = resolve_layout(config.model, config.view, store, config.crop_shape)
    info = dict(labels_info or {})
    if knees is None:
        if db is None:
            raise TrainingError("train_run needs a database (labels, split) or a knee table")
        table = knee_table(db, store.path, layout.source_view, config.knee_query())
        knees = table.knees
        info.update(table.labels_info())
    knees = validate_knees(knees)  # the leakage check runs here, whatever the table's source
    keep = [
        c
        for c in ("knee_id", "subject_id", "side", "site", "label", "role", "fold", "position", "y", *EXTENT_COLUMNS)
        if c in knees.columns
    ]
    knees = knees[keep].reset_index(drop=True)
    knees["fold"] = knees["fold"].astype("Int64")
    # the identity of each volume read: eval, predict and explain check a store still holds it
    knees[rf.CHECKSUM] = slot_checksums(store, layout.source_view, knees["position"].tolist())
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
    if only_folds is not None:
        unknown = sorted(set(only_folds) - set(folds))
        if unknown:
            raise TrainingError(f"fold(s) {unknown} are not folds of the run {run_dir} (folds: {folds})")
        folds = sorted(set(only_folds))
    prepared = PreparedRun(config, store, layout, knees, folds, run_dir, info)
    if write:
        _init_run_folder(prepared, resume=resume, db=db)
    return prepared


def _check_out(p: PreparedRun, db: Database | None) -> None:
    """The run folder may be a run (to resume), never the store, the database or inside either."""
    check_output(p.run_dir, option="--out", inputs=[p.config.store], database=db, allow=RUN)


def _init_run_folder(p: PreparedRun, *, resume: bool, db: Database | None = None, whole_run: bool = True) -> None:
    _check_out(p, db)
    # what a killed run was writing (.last.pt.tmpPID ...); a job of some folds cleans only its own
    own = [p.run_dir, *rf.fold_dirs(p.run_dir).values()] if whole_run else [rf.fold_dir(p.run_dir, k) for k in p.folds]
    for folder in own:
        clean_leftovers(folder)
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
        saved_knees = rf.read_table(p.run_dir / rf.KNEES)
        cols = ["knee_id", "label", "role", "position"]
        if rf.CHECKSUM in saved_knees.columns:  # the same volumes, not only the same slots
            cols.append(rf.CHECKSUM)
        same = (
            len(saved_knees) == len(p.knees)
            and all(saved_knees[c].astype(str).tolist() == p.knees[c].astype(str).tolist() for c in cols)
            and saved_knees["fold"].astype("Int64").equals(p.knees["fold"].astype("Int64"))
        )
        if not same:
            raise TrainingError(
                f"cannot resume {p.run_dir}: the labels, split, store index or stored volumes changed "
                "since the run started (knees.csv differs); start a new run"
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
            "store": {"path": str(p.store.path), "params_hash": p.store.params_hash},
            "classes": list(CLASSES),
            # where each recipe value comes from (the reference's file and line, or ours and why)
            "recipe_sources": [line.to_dict() for line in recipe_sources(p.config, p.layout, p.store.params)],
        },
    )
    rf.write_json(p.run_dir / rf.ENVIRONMENT, rf.environment(p.config.device))
    rf.write_json(p.run_dir / rf.LABELS, p.labels_info)
    rf.write_csv(p.run_dir / rf.KNEES, p.knees)


# --------------------------------------------------------------------------- runs


@contextmanager
def _torch_settings(device_name: str, d: Dist, *, threads: int | None, deterministic: bool) -> Iterator[torch.device]:
    """Threads, determinism and CUDA flags of a run, restored afterwards (library callers keep theirs)."""
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
    )
    device = torch.device(device_name)
    if device.type == "cuda":
        if d.active or device.index is None:
            device = torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not deterministic
        # TF32 matmuls for fp32 training unless bit-reproducibility was asked for
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield device
    finally:
        threads_before, det, warn_only, benchmark, tf32 = saved
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _train(
    plan: RunPlan,
    store: VolumeStore,
    d: Dist,
    *,
    resume: bool,
    progress: ProgressCallback | None,
    on_epoch: EpochHook | None,
) -> list[dict[str, Any]]:
    """This process's share of every fold not finished yet; the summaries of all the run's folds."""
    run_dir = plan.fold.run_dir
    todo = [k for k in plan.folds if not rf.is_fold_complete(run_dir, k)]
    summaries = [rf.read_json(rf.fold_dir(run_dir, k) / rf.SUMMARY) for k in plan.folds if k not in todo]
    if not todo:
        return summaries
    train_frame = plan.knees[plan.knees["role"] == "train"].reset_index(drop=True)
    with _torch_settings(plan.device, d, threads=plan.threads, deterministic=plan.deterministic) as device:
        source = make_source(
            plan.loader,
            store,
            plan.fold.layout.source_view,
            train_frame["position"].to_numpy(),
            device,
            workers=plan.workers,
            progress=progress if d.main else None,
        )
        try:
            for fold in todo:
                summaries.append(
                    train_fold(
                        plan.fold, fold, source, train_frame, d=d, resume=resume, progress=progress, on_epoch=on_epoch
                    )
                )
        finally:
            source.close()
    return sorted(summaries, key=lambda s: s["fold"])


def _spawned_worker(rank: int, world: int, port: int, plan: RunPlan, store: VolumeStore, resume: bool) -> None:
    device = torch.device(plan.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cpu" and not plan.threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _train(
            plan,
            store,
            Dist(rank, world, rank),
            resume=resume,
            progress=None,
            on_epoch=lambda r: log.info("fold %(fold)d epoch %(epoch)d: loss %(train_loss).4f val AP %(val_ap).3f", r),
        )
    finally:
        dist.destroy_process_group()


def train_run(
    config: TrainConfig,
    db: Database | None = None,
    progress: ProgressCallback | None = None,
    *,
    resume: bool = False,
    knees: pd.DataFrame | None = None,
    labels_info: dict[str, Any] | None = None,
    on_epoch: EpochHook | None = None,
    folds: Sequence[int] | None = None,
) -> Path:
    """Train ``config.model`` on every requested fold into the run folder ``config.out``.

    ``db`` supplies labels, split and the store index (``knees`` may replace it); ``progress``
    gets one task per fold (completed in epochs); ``on_epoch`` gets each epoch's log record.
    Returns the run folder. Under ``torchrun`` every rank calls this; with ``config.nproc > 1``
    it spawns the processes itself. ``folds`` trains only these of the run's folds (a cluster
    job trains one; ``oaimodels.training.jobs``).
    """
    d = env_dist()
    if d.active:  # under torchrun: this process is one rank
        owns_group = not dist.is_initialized()
        if owns_group:
            device = resolve_device(config.device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            p = prepare_run(
                config, db, knees=knees, labels_info=labels_info, resume=resume, write=False, only_folds=folds
            )
            if d.main:
                _check_out(p, db)
            with run_lock(p.run_dir, folds) if d.main else nullcontext():
                if d.main:
                    _init_run_folder(p, resume=resume, db=db, whole_run=folds is None)
                barrier(d)
                _train(run_plan(p), p.store, d, resume=resume, progress=progress, on_epoch=on_epoch)
        finally:
            if owns_group:
                dist.destroy_process_group()
        return p.run_dir
    p = prepare_run(config, db, knees=knees, labels_info=labels_info, resume=resume, write=False, only_folds=folds)
    _check_out(p, db)
    with run_lock(p.run_dir, folds):
        _init_run_folder(p, resume=resume, db=db, whole_run=folds is None)
        plan = run_plan(p)
        if plan.nproc > 1:
            _spawn_ranks(plan, p.store, resume=resume)
        else:
            _train(plan, p.store, Dist(), resume=resume, progress=progress, on_epoch=on_epoch)
    return p.run_dir


@contextmanager
def run_lock(run_dir: Path, folds: Sequence[int] | None = None) -> Iterator[None]:
    """One ``oai train`` per run folder at a time: a second one (two ``--resume`` of one run)
    exits 3 at once. A job training only ``folds`` of a prepared run (a cluster job,
    ``oaimodels.training.jobs``) locks only their fold folders, so the run's other folds train
    beside it. A folder made here for a run that then failed before writing anything is removed
    again."""
    held = [run_dir] if folds is None else [rf.fold_dir(run_dir, k) for k in sorted(set(folds))]
    created = [folder for folder in (run_dir, *held) if not folder.exists()]
    what = "run folder" if folds is None else "fold"
    try:
        with ExitStack() as stack:
            for folder in held:
                busy = (
                    f"{folder}: another `oai train` is training this {what}; wait for it to finish (or stop it) first"
                )
                stack.enter_context(folder_lock(folder, busy))
            yield
    finally:
        for folder in reversed(created):  # the fold folders before the run folder
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _spawn_ranks(plan: RunPlan, store: VolumeStore, *, resume: bool) -> None:
    """``plan.nproc`` processes on this node, one rank each (``--nproc``), trained to the end."""
    import torch.multiprocessing as mp

    world = plan.nproc
    if torch.device(plan.device).type == "cuda" and torch.cuda.device_count() < world:
        raise TrainingError(f"--nproc {world} needs {world} GPUs, found {torch.cuda.device_count()}")
    mp.start_processes(
        _spawned_worker,
        args=(world, free_port(), plan, store, resume),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
