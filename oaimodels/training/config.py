"""What defines a training run: :class:`TrainConfig`, its validation and ``auto`` resolution,
and :class:`PreparedRun` (the resolved config with its knees, folds and run folder).

A config's :meth:`TrainConfig.hash` covers every option that changes what is computed; the
options in :data:`OPERATIONAL` change only how a run executes, so a run may be resumed with
other values of them (another device, loader or thread count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from oaicohort.errors import OAIError
from oaicohort.field_checks import unknown_fields
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.vocabulary import DEFAULT_DEFINITION
from oaimodels.data import AugmentParams, InputLayout
from oaimodels.data.knees import KneeQuery
from oaimodels.networks import get_spec

# Options that change how a run executes but not what it computes: a resumed run may differ.
OPERATIONAL = ("device", "loader", "workers", "nproc", "compile", "threads", "eval_batch_size")
# What names and tracks a run without changing what it computes (not in the hash either).
DESCRIPTIVE = ("name", "tags", "tensorboard", "track", "tracking_uri", "experiment")
# Options added after runs were first hashed: left out of the hash at their default, so the
# hashes (and resume) of earlier runs stay valid.
_HASHED_UNLESS_DEFAULT: dict[str, Any] = {"sampler": "weighted", "lr_milestones": None, "lr_gamma": 0.1}
SAMPLERS = ("weighted", "shuffle")
# The paper's schedule; a model's registry ``recipe`` replaces any of these (the X-ray prior art:
# lr 1e-3, warm-up from 1e-4 over 5 epochs, x0.1 at epochs 25 and 45). lr_milestones None after
# resolving: no decay. Where each value comes from: oaimodels.training.recipe_sources.
RECIPE_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "warmup_epochs": 5,
    "warmup_start_lr": 1e-5,
    "lr_milestones": None,
    "lr_gamma": 0.1,
}


class TrainingError(OAIError):
    """A training run cannot start or continue (bad options, run folder conflicts)."""


class DeviceError(OAIError):
    """``--device`` names no device this toolkit runs on: a usage error (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule of a resolved config (see ``oaimodels.training.recipe.lr_at``)."""

    lr: float
    warmup_epochs: int
    warmup_start_lr: float
    milestones: tuple[int, ...]
    gamma: float


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
    # None: the model's own recipe (the X-ray prior art's), else the paper's (RECIPE_DEFAULTS);
    # a value given, even one equal to the paper's, is what the run uses
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_epochs: int | None = None
    warmup_start_lr: float | None = None  # None: the model's recipe (the reference: 0.1 x lr)
    # multistep decay by lr_gamma at these epochs (absolute, counted from epoch 0, warm-up
    # included); None: the model's recipe, [] or none: no decay
    lr_milestones: list[int] | None = None
    lr_gamma: float | None = None
    focal_gamma: float = 2.0
    sampler: str = "weighted"  # weighted (1/class frequency, with replacement) | shuffle (each knee once)
    augment: AugmentParams = field(default_factory=AugmentParams)
    deterministic: bool = False
    nproc: int = 1
    threads: int | None = None  # torch CPU threads per process (None: torch's default)
    name: str | None = None  # a title for reports and trackers (default: model, view, init)
    tags: dict[str, str] = field(default_factory=dict)
    tensorboard: bool = True  # event files per fold (needs the tensorboard package)
    track: str | None = None  # mlflow: also log to MLflow (oaimodels.training.tracking)
    tracking_uri: str | None = None  # MLflow tracking URI (default: a file store ./mlruns)
    experiment: str = "oai"  # MLflow experiment name

    def schedule(self) -> Schedule:
        """The learning-rate schedule; the config must be resolved (:func:`resolve_config`)."""
        if self.lr is None or self.warmup_epochs is None or self.lr_gamma is None or self.warmup_start_lr is None:
            raise TrainingError("the learning-rate schedule is not resolved yet: call resolve_config first")
        return Schedule(
            self.lr, self.warmup_epochs, self.warmup_start_lr, tuple(self.lr_milestones or ()), self.lr_gamma
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["augment"] = dataclasses.asdict(self.augment)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = unknown_fields(cls, data)
        if unknown:
            raise TrainingError(f"unknown training option(s) {unknown}")
        data = dict(data)
        if isinstance(data.get("augment"), dict):
            data["augment"] = AugmentParams(**data["augment"])
        return cls(**data)

    def knee_query(self) -> KneeQuery:
        """Which labelled, split knees the run uses (``oaimodels.data.knees.knee_table``)."""
        return KneeQuery(self.definition, self.split, self.visit)

    def essential(self) -> dict[str, Any]:
        """The options that define what is computed (compared when resuming)."""
        return {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL and k not in DESCRIPTIVE}

    def hash(self) -> str:
        hashed = {k: v for k, v in self.essential().items() if _HASHED_UNLESS_DEFAULT.get(k, object()) != v}
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):  # torch's message lists every backend it was built with
        raise DeviceError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name!r}: unsupported device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but no CUDA device is available")
    return device


def resolve_config(config: TrainConfig) -> TrainConfig:
    """A copy with every ``auto``/``None`` default that does not depend on the data filled in.

    The store path is made canonical where the store is opened (``prepare_run``), by the store."""
    try:
        spec = get_spec(config.model)
    except KeyError as exc:
        raise TrainingError(str(exc.args[0])) from None
    device = resolve_device(config.device)
    c = dataclasses.replace(config)
    c.out = str(Path(config.out).expanduser().resolve())
    c.device = str(device)
    if c.precision == "auto":
        c.precision = "bf16" if device.type == "cuda" else "fp32"
    if c.precision not in ("bf16", "fp32"):
        raise TrainingError(f"precision must be bf16 or fp32, not {c.precision!r}")
    if c.init == "auto":
        c.init = "imagenet" if spec.imagenet_encoder else "scratch"
    for name, paper in RECIPE_DEFAULTS.items():  # the model's own reference recipe, unless given
        if getattr(c, name) is None:
            value = spec.recipe.get(name, paper)
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
    schedule = c.schedule()
    if schedule.warmup_epochs < 0 or c.workers < 0:
        raise TrainingError("warmup_epochs and workers must not be negative")
    if c.limit_train is not None and c.limit_train < 2:
        raise TrainingError("limit_train must be at least 2 knees")
    check_recipe(c)
    return c


@dataclass
class PreparedRun:
    """A run ready to start: resolved config, the opened store, layout, knees, folds, run folder
    (``oaimodels.training.plan.run_plan`` takes from it what the processes need)."""

    config: TrainConfig
    store: VolumeStore
    layout: InputLayout
    knees: pd.DataFrame
    folds: list[int]
    run_dir: Path
    labels_info: dict[str, Any]


def check_recipe(c: TrainConfig) -> None:
    """The recipe's values are in range (called by ``resolve_config``, whatever their source)."""
    schedule = c.schedule()
    if not (schedule.lr > 0 and math.isfinite(schedule.lr)):
        raise TrainingError(f"lr must be a positive number, got {schedule.lr}")
    if schedule.warmup_start_lr <= 0:
        raise TrainingError(f"warmup_start_lr must be positive, got {schedule.warmup_start_lr}")
    if c.weight_decay < 0 or c.focal_gamma < 0:
        raise TrainingError("weight_decay and focal_gamma must not be negative")
    if c.sampler not in SAMPLERS:
        raise TrainingError(f"sampler must be one of {', '.join(SAMPLERS)}, not {c.sampler!r}")
    if c.track not in (None, "mlflow"):
        raise TrainingError(f"track must be mlflow (or unset), not {c.track!r}")
    if c.track == "mlflow" and not _importable("mlflow"):
        raise TrainingError(
            "--track mlflow needs the mlflow package: pip install 'oai-toolkit[mlflow]' (or mlflow-skinny)"
        )
    a = c.augment
    for name in ("rotate_p", "gamma_p"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise TrainingError(f"augment.{name} is a probability (0 to 1), got {getattr(a, name)}")
    if a.max_rotation_deg < 0:
        raise TrainingError(f"augment.max_rotation_deg must not be negative, got {a.max_rotation_deg}")
    if not 0 < a.gamma_low <= a.gamma_high:
        raise TrainingError(
            f"augment gamma range must satisfy 0 < gamma_low <= gamma_high, got {a.gamma_low}, {a.gamma_high}"
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a spec (a stand-in module)
        return True
