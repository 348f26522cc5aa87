"""Training with the paper's recipe, fold by fold, into a run folder (``oaimodels.run_folder``).

Recipe (REFERENCE.md section 5): focal loss (gamma 2, no class weights); weighted random
sampling with weights 1/class frequency and epoch length = training-set size; Adam, lr 1e-4,
weight decay 1e-4; linear warm-up of the learning rate from 1e-5 over 5 epochs (per epoch), then
constant; 100 epochs; the validation fold's binary AP after every epoch, the best snapshot kept
(ties go to the later epoch); per-model batch sizes from the registry.

Entry points: :func:`train_run` (one model, all requested folds) and :func:`train_all` (every
MRI model of Table 1, one run folder each). Both take a :class:`TrainConfig`.

Reproducibility and exact resume. All randomness of epoch ``e`` of fold ``k`` comes from streams
seeded by ``(seed, k, e, rank)``: the sampler's draws, the augmentation parameters, and the global
torch/numpy/python generators (dropout) are reseeded at the start of every epoch. ``last.pt``
holds the model, optimiser, scheduler, sampler state, RNG states, the epoch history and the best
snapshot's bookkeeping. A run killed at any point and resumed with ``resume=True`` continues at
the epoch after its last checkpoint and, with deterministic settings on CPU, ends with exactly
the metrics and weights of an uninterrupted run.

Distributed training: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) or with
``nproc > 1`` (processes spawned here), one process per device trains a
``DistributedDataParallel`` model on its shard of every epoch's draws; the batch size is the
global one (split across processes); only rank 0 writes the run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from oaicohort.errors import OAIError
from oaicohort.imaging.store import VolumeStore
from oaicohort.progress import ProgressCallback
from oaicohort.vocabulary import CLASSES, DEFAULT_DEFINITION

from . import run_folder as rf
from .data import (
    AugmentParams,
    BatchPreparer,
    InputLayout,
    VolumeSource,
    WeightedEpochSampler,
    batches_of,
    cpu_generator,
    derive_seed,
    knee_table,
    make_source,
    resident_fits,
    resolve_layout,
    to_device,
    validate_knees,
)
from .losses import focal_loss
from .metrics import average_precision, binary_target, progression_score, roc_auc
from .networks import get_model, get_spec, list_models, to_channels_last
from .store_models import table1_models

log = logging.getLogger(__name__)

EpochHook = Callable[[dict[str, Any]], None]

# Options that change how a run executes but not what it computes: a resumed run may differ.
OPERATIONAL = ("device", "loader", "workers", "nproc", "compile", "threads", "eval_batch_size")


class TrainingError(OAIError):
    """A training run cannot start or continue (bad options, run folder conflicts)."""


# --------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``auto`` values are resolved by :func:`resolve_config`."""

    store: str
    out: str
    model: str = "2d_trf"
    view: str | None = None  # single-view models that accept several (2d_trf): sag | cor | ax
    folds: list[int] | None = None  # None: every fold of the split
    epochs: int = 100
    batch_size: int | None = None  # None: the model's batch size in the registry (the paper's)
    eval_batch_size: int | None = None  # None: 2x batch_size
    init: str = "auto"  # auto (imagenet where the model has a 2D encoder) | imagenet | scratch | FILE
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    channels_last: bool | None = None  # None: on CUDA
    seed: int = 0
    definition: str = DEFAULT_DEFINITION
    split: int | None = None  # None: the newest split of the definition
    visit: int = 0
    loader: str = "auto"  # auto | resident | workers
    workers: int = 4
    limit_train: int | None = None  # train on at most N knees per fold (quick runs)
    crop_shape: list[int] | None = None  # None: paper shape if the store fits it, else the store's crop
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    warmup_start_lr: float = 1e-5
    lr_milestones: list[int] | None = None  # multistep decay by lr_gamma at these epochs (X-ray recipe)
    lr_gamma: float = 0.1
    focal_gamma: float = 2.0
    augment: AugmentParams = field(default_factory=AugmentParams)
    deterministic: bool = False
    nproc: int = 1
    threads: int | None = None  # torch CPU threads per process (None: torch's default)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["augment"] = dataclasses.asdict(self.augment)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TrainingError(f"unknown training option(s) {sorted(unknown)}")
        data = dict(data)
        if isinstance(data.get("augment"), dict):
            data["augment"] = AugmentParams(**data["augment"])
        return cls(**data)

    def essential(self) -> dict[str, Any]:
        """The options that define what is computed (compared when resuming)."""
        return {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL}

    def hash(self) -> str:
        canonical = json.dumps(self.essential(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise TrainingError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def resolve_config(config: TrainConfig) -> TrainConfig:
    """A copy with every ``auto``/``None`` default that does not depend on the data filled in."""
    try:
        spec = get_spec(config.model)
    except KeyError as exc:
        raise TrainingError(str(exc.args[0])) from None
    device = resolve_device(config.device)
    c = dataclasses.replace(config)
    c.store = str(Path(config.store).expanduser().resolve())
    c.out = str(Path(config.out).expanduser().resolve())
    c.device = str(device)
    if c.precision == "auto":
        c.precision = "bf16" if device.type == "cuda" else "fp32"
    if c.precision not in ("bf16", "fp32"):
        raise TrainingError(f"precision must be bf16 or fp32, not {c.precision!r}")
    if c.init == "auto":
        c.init = "imagenet" if spec.imagenet_encoder else "scratch"
    for name, value in spec.recipe.items():  # the model's own reference recipe, unless overridden
        if getattr(c, name) == TrainConfig.__dataclass_fields__[name].default:
            setattr(c, name, list(value) if isinstance(value, (list, tuple)) else value)
    if c.batch_size is None:
        c.batch_size = spec.batch_size
    if c.eval_batch_size is None:
        c.eval_batch_size = 2 * c.batch_size
    if c.channels_last is None:
        c.channels_last = device.type == "cuda"
    if c.view is None and spec.view_choices:
        c.view = spec.views[0]
    if c.loader not in ("auto", "resident", "workers"):
        raise TrainingError(f"loader must be auto, resident or workers, not {c.loader!r}")
    for name in ("epochs", "batch_size", "nproc"):
        if getattr(c, name) < 1:
            raise TrainingError(f"{name} must be at least 1, got {getattr(c, name)}")
    if c.warmup_epochs < 0 or c.workers < 0:
        raise TrainingError("warmup_epochs and workers must not be negative")
    if c.limit_train is not None and c.limit_train < 2:
        raise TrainingError("limit_train must be at least 2 knees")
    return c


def lr_at(epoch: int, config: TrainConfig) -> float:
    """Learning rate of ``epoch`` (0-based): linear from warmup_start_lr to lr over warmup_epochs,
    times lr_gamma for every milestone reached."""
    decay = config.lr_gamma ** sum(epoch >= m for m in config.lr_milestones or ())
    if config.warmup_epochs <= 0 or epoch >= config.warmup_epochs:
        return config.lr * decay
    return (config.warmup_start_lr + (config.lr - config.warmup_start_lr) * epoch / config.warmup_epochs) * decay


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch warm-up then constant (stepped once after every epoch)."""
    base = config.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_at(e, config) / base)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def build_model(layout: InputLayout, init: str) -> nn.Module:
    """The registry model for ``layout``'s input shapes (and view, for 2D+TRF)."""
    kwargs: dict[str, Any] = {"input_shapes": layout.input_shapes(), "init": init}
    if get_spec(layout.model).view_choices:
        kwargs["view"] = layout.source_view
    try:
        return get_model(layout.model, **kwargs)
    except ValueError as exc:
        raise TrainingError(f"cannot build {layout.model}: {exc}") from None


def mri_models() -> list[str]:
    """Registered models that read MRI volumes (every row of Table 1 but the X-ray prior art)."""
    return [m for m in list_models() if set(get_spec(m).views) <= {"sag", "cor", "ax"}]


# --------------------------------------------------------------------------- distributed context


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def _barrier(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------- RNG state


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states as weights_only-loadable values."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    keys, version = state["python"]
    random.setstate((version, tuple(keys), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- prediction


def amp_context(device: torch.device, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    source: VolumeSource,
    items: np.ndarray,
    preparer: BatchPreparer,
    *,
    batch_size: int,
    precision: str = "fp32",
) -> np.ndarray:
    """fp32 logits (len(items), 3) of ``model`` (eval mode) on centre-cropped volumes."""
    was_training = model.training
    model.eval()
    out = []
    batches = batches_of(np.asarray(items), batch_size) if len(items) else []
    try:
        for volumes in source.iterate(batches):
            with amp_context(source.device, precision):
                logits = model(preparer.eval_inputs(volumes))
            out.append(logits.float())  # kept on the device: one copy to the host at the end
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, len(CLASSES)), dtype=np.float32)
    return torch.cat(out).cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- the prepared run


@dataclass
class PreparedRun:
    """What every process of a run needs: resolved config, layout, knees, folds, run folder."""

    config: TrainConfig
    layout: InputLayout
    knees: pd.DataFrame
    folds: list[int]
    run_dir: Path
    labels_info: dict[str, Any]
    store_params_hash: str


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
        for c in ("knee_id", "subject_id", "side", "site", "label", "role", "fold", "position", "y")
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
        saved = TrainConfig.from_dict(rf.read_json(config_path)["config"])
        mine, theirs = p.config.essential(), saved.essential()
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differ:
            raise TrainingError(
                f"cannot resume {p.run_dir}: option(s) {differ} differ from the run's config.json "
                f"(saved: {', '.join(f'{k}={theirs.get(k)!r}' for k in differ)})"
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
        },
    )
    rf.write_json(p.run_dir / rf.ENVIRONMENT, rf.environment(p.config.device))
    rf.write_json(p.run_dir / rf.LABELS, p.labels_info)
    rf.write_csv(p.run_dir / rf.KNEES, p.knees)


# --------------------------------------------------------------------------- one fold


@dataclass
class _FoldData:
    train_items: np.ndarray  # items of the run's source
    val_items: np.ndarray
    train_y: torch.Tensor  # class index per train item (on device)
    val_rows: pd.DataFrame


def _fold_data(p: PreparedRun, fold: int, train_frame: pd.DataFrame, device: torch.device) -> _FoldData:
    in_fold = (train_frame["fold"] == fold).to_numpy()
    train_items = np.flatnonzero(~in_fold)
    val_items = np.flatnonzero(in_fold)
    limit = p.config.limit_train
    if limit is not None and limit < train_items.size:
        rng = np.random.default_rng(derive_seed(p.config.seed, fold, 0x11))
        train_items = np.sort(rng.choice(train_items, size=limit, replace=False))
    if val_items.size == 0:
        raise TrainingError(f"fold {fold} has no validation knees")
    y = torch.as_tensor(train_frame["y"].to_numpy()[train_items], dtype=torch.long, device=device)
    return _FoldData(train_items, val_items, y, train_frame.iloc[val_items].reset_index(drop=True))


def _checkpoint_meta(p: PreparedRun, fold: int, epoch: int, history: list, best: dict) -> dict[str, Any]:
    return {
        "model": p.config.model,
        "view": p.config.view,
        "init": p.config.init,
        "layout": p.layout.to_dict(),
        "classes": list(CLASSES),
        "fold": fold,
        "epoch": epoch,
        "epochs": p.config.epochs,
        "config_hash": p.config.hash(),
        "history": history,
        "best": best,
    }


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint of this module, loaded with ``weights_only=True`` (no arbitrary pickles)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def load_fold_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a ``best.pt``/``last.pt`` (built from its metadata, no ImageNet download)."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    model = build_model(InputLayout.from_dict(meta["layout"]), "scratch")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), meta


def _write_fold_files(fold_path: Path, history: list[dict], best: dict) -> None:
    rf.write_log(fold_path / rf.LOG, history)
    if best.get("predictions"):
        rf.write_csv(fold_path / rf.VAL_PREDICTIONS, pd.DataFrame(best["predictions"]))


def _finalise_pending_best(fold_path: Path, best: dict) -> None:
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


def _val_predictions(rows: pd.DataFrame, probs: np.ndarray) -> dict[str, list]:
    return {
        "knee_id": rows["knee_id"].astype(int).tolist(),
        "subject_id": rows["subject_id"].astype(int).tolist(),
        "label": rows["label"].astype(str).tolist(),
        **{f"p_{c}": probs[:, i].astype(float).tolist() for i, c in enumerate(CLASSES)},
    }


def _gather_rows(d: Dist, items: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not d.active:
        return items, logits
    parts: list[Any] = [None] * d.world
    dist.all_gather_object(parts, (items, logits))
    all_items = np.concatenate([p[0] for p in parts])
    all_logits = np.concatenate([p[1] for p in parts])
    order = np.argsort(all_items, kind="stable")
    return all_items[order], all_logits[order]


def train_fold(
    p: PreparedRun,
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
    c = p.config
    device = source.device
    fold_path = rf.fold_dir(p.run_dir, fold)
    if d.main:
        fold_path.mkdir(parents=True, exist_ok=True)
    _barrier(d)
    fd = _fold_data(p, fold, train_frame, device)

    _seed_everything(derive_seed(c.seed, fold, 0x1717))  # model init: the same on every rank
    model = build_model(p.layout, c.init).to(device)
    if c.channels_last:
        to_channels_last(model)
    optimizer = make_optimizer(model, c)
    scheduler = make_scheduler(optimizer, c)
    sampler = WeightedEpochSampler(
        train_frame["y"].to_numpy()[fd.train_items],
        seed=derive_seed(c.seed, fold),
        rank=d.rank,
        world_size=d.world,
    )
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "val_ap": None, "predictions": None}
    start_epoch = 0
    last_path = fold_path / rf.LAST
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        meta = ckpt["meta"]
        if meta["config_hash"] != c.hash():
            raise TrainingError(f"{last_path} was written by a different configuration; cannot resume")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        history, best = list(meta["history"]), dict(meta["best"])
        start_epoch = int(meta["epoch"]) + 1
        if d.main:
            _finalise_pending_best(fold_path, best)
            _write_fold_files(fold_path, history, best)
        log.info("fold %d: resuming after epoch %d", fold, start_epoch - 1)

    train_model: nn.Module = model
    if d.active:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if c.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    preparer = BatchPreparer(p.layout, c.augment, channels_last=bool(c.channels_last))
    per_rank_batch = max(1, c.batch_size // d.world)
    best_key = -math.inf if best["val_ap"] is None else _ap_key(best["val_ap"])
    val_shard = fd.val_items[d.rank :: d.world]

    for epoch in range(start_epoch, c.epochs):
        t_epoch = time.perf_counter()
        _seed_everything(derive_seed(c.seed, fold, epoch, d.rank, 0xD0))
        generator = cpu_generator(c.seed, fold, epoch, d.rank, 0xA6)
        lr = optimizer.param_groups[0]["lr"]
        draws = sampler.indices(epoch)
        batches = batches_of(draws, per_rank_batch)
        train_model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        n_seen = 0
        data_wait = 0.0
        t_wait = time.perf_counter()
        for step, volumes in enumerate(source.iterate([fd.train_items[b] for b in batches])):
            data_wait += time.perf_counter() - t_wait
            y = fd.train_y[to_device(torch.as_tensor(batches[step]), device)]
            inputs = preparer.train_inputs(volumes, generator)
            with amp_context(device, c.precision):
                logits = train_model(inputs)
            loss = focal_loss(logits, y, gamma=c.focal_gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * y.numel()
            n_seen += int(y.numel())
            if progress is not None and d.main:
                progress(f"fold {fold}", epoch + (step + 1) / len(batches), c.epochs)
            t_wait = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t_epoch
        totals = torch.stack([loss_sum, torch.tensor(float(n_seen), device=device, dtype=torch.float64)])
        if d.active:
            dist.all_reduce(totals)  # on the device: NCCL reduces CUDA tensors only
            # BatchNorm running statistics drift apart on each rank; validate and save rank 0's
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        train_loss = float(totals[0] / max(float(totals[1]), 1.0))
        n_train = int(totals[1])

        logits_shard = predict_logits(
            model,
            source,
            val_shard,
            preparer,
            batch_size=c.eval_batch_size or 2 * c.batch_size,
            precision=c.precision,
        )
        _, val_logits = _gather_rows(d, val_shard, logits_shard)
        probs = softmax(val_logits)
        val_y = np.array(fd.val_rows["y"], dtype=np.int64)
        val_loss = float(focal_loss(torch.from_numpy(val_logits), torch.from_numpy(val_y), gamma=c.focal_gamma))
        y_bin = binary_target(val_y)
        score = progression_score(probs)
        ap, auc = average_precision(y_bin, score), roc_auc(y_bin, score)
        scheduler.step()
        seconds = time.perf_counter() - t_epoch
        record = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_ap": ap,
            "val_roc_auc": auc,
            "volumes_per_s": n_train / train_seconds if train_seconds > 0 else None,
            "train_seconds": train_seconds,
            "data_wait_seconds": data_wait,
            "seconds": seconds,
            "n_train": n_train,
            "n_val": int(len(val_y)),
        }
        history.append(record)
        key = _ap_key(ap)
        improved = key >= best_key  # ties go to the later epoch
        if improved:
            best_key = key
            best = {
                "epoch": epoch,
                "val_ap": ap,
                "val_roc_auc": auc,
                "predictions": _val_predictions(fd.val_rows, probs),
            }
        if d.main:
            meta = _checkpoint_meta(p, fold, epoch, history, best)
            if improved:
                _save(
                    {
                        "model": model.state_dict(),
                        "meta": {k: v for k, v in meta.items() if k not in ("history", "best")}
                        | {"val_ap": ap, "val_roc_auc": auc},
                    },
                    fold_path / rf.BEST_PENDING,
                )
            _save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sampler": sampler.state_dict(),
                    "rng": rng_state(),
                    "meta": meta,
                },
                last_path,
            )
            if improved:
                os.replace(fold_path / rf.BEST_PENDING, fold_path / rf.BEST)
            _write_fold_files(fold_path, history, best)
        if on_epoch is not None and d.main:
            on_epoch({"fold": fold, **record, "best_epoch": best["epoch"]})
        _barrier(d)

    summary = {
        "fold": fold,
        "epochs": c.epochs,
        "best_epoch": best["epoch"],
        "best_val_ap": best["val_ap"],
        "best_val_roc_auc": best.get("val_roc_auc"),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "seconds": float(sum(r["seconds"] for r in history)),
    }
    if d.main:
        rf.write_json(fold_path / rf.SUMMARY, summary)
    _barrier(d)
    return summary


def _ap_key(ap: float | None) -> float:
    return -math.inf if ap is None or not np.isfinite(ap) else float(ap)


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    d = _env_dist()
    if d.active:  # under torchrun: this process is one rank
        owns_group = not dist.is_initialized()
        if owns_group:
            device = resolve_device(config.device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            p = prepare_run(config, db, knees=knees, labels_info=labels_info, resume=resume, write=False)
            if d.main:
                _init_run_folder(p, resume=resume)
            _barrier(d)
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
            args=(world, _free_port(), p, resume),
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
    """Train every model of Table 1 the store can feed (every view of 2D+TRF; the X-ray model when
    the store holds radiograph ROIs), one run folder each under
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
