"""Where every value of a resolved training recipe comes from: the reference's file and line, or
"ours" with the reason.

The reference is the published code of the paper (OAProgressionMR, commit 1ef0c7a; REFERENCE.md):
its runner script ``entry/runner.sh`` (one block per model), the shared config
``entry/conf/prog.yaml``, the data pipeline ``oaprmr/datasets/_data_provider.py`` and the
schedulers ``oaprmr/various/_optimizers.py``. :func:`recipe_sources` pairs each value of a
resolved :class:`~oaimodels.training.config.TrainConfig` (and its input layout and store
parameters) with its source; a value that differs from the reference's, because it was given on
the command line or in a config file, says so. ``oai train --dry-run`` prints the table and
every run records it in ``config.json`` (``recipe_sources``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from oaicohort.vocabulary import XRAY_VIEW
from oaimodels.data import AugmentParams, InputLayout
from oaimodels.data.normalisation import normalisation_for, normalisation_source
from oaimodels.networks import get_spec
from oaimodels.training.config import RECIPE_DEFAULTS, TrainConfig

REF = "OAProgressionMR"
_RUNNER = f"{REF} entry/runner.sh"
_PROG = f"{REF} entry/conf/prog.yaml"
_OPTIM = f"{REF} oaprmr/various/_optimizers.py"
_DATA = f"{REF} oaprmr/datasets/_data_provider.py"

# the paper's recipe (REFERENCE.md section 5), shared by the MRI models
PAPER: dict[str, str] = {
    "lr": f"{_PROG}:36 (training.optim.lr_init: 1e-4)",
    "weight_decay": f"{_PROG}:37 (training.optim.weight_decay: 1e-4)",
    "warmup_epochs": f"{_PROG}:41 (CustomWarmupStaticDecayLR epochs_warmup: 5)",
    "warmup_start_lr": f"{_OPTIM}:5,12 (warmup_factor 0.1 x lr_init 1e-4)",
    "lr_milestones": f"{_PROG}:42 (epochs_static: 100: constant after the warm-up for all 100 epochs)",
    "lr_gamma": "ours: unused without milestones",
    "epochs": f"{_PROG}:47 (training.epochs.num: 100)",
    "focal_gamma": f"{_PROG}:30-33 (FocalLoss, gamma 2.0, no class weights)",
    "sampler": f"{_DATA}:339-346 (WeightedRandomSampler, weights 1 / class frequency, with replacement)",
    "augment": f"{_DATA}:242-249 (sag_3d_dess: RandomCrop, PTRotate3DInSlice +-15 deg p 0.5, "
    "PTGammaCorrection 0.5-2 p 0.5)",
}
# the X-ray prior art's own recipe (xr_cnn block of the runner; its registry ``recipe``)
XRAY: dict[str, str] = {
    "lr": f"{_RUNNER}:196 (xr_cnn: training.optim.lr_init=1e-3)",
    "warmup_epochs": f"{_RUNNER}:197 (CustomWarmupMultiStepLR epochs_warmup:5)",
    "warmup_start_lr": f"{_OPTIM}:32,39 (warmup_factor 0.1 x lr_init 1e-3)",
    "lr_milestones": f"{_RUNNER}:197 (mstep_milestones:[20,40]) + the 5 warm-up epochs ({_OPTIM}:35 adds "
    "epochs_warmup to each milestone): absolute epochs 25 and 45",
    "lr_gamma": f"{_OPTIM}:32 (mstep_factor 0.1)",
    "augment": f"{_DATA}:250-257 (xr_pa: RandomCrop 700, PTRotate2D +-15 deg p 0.5, PTGammaCorrection 0.5-2 "
    "p 0.5), applied at the stored ROI's resolution (store.xray_stored_scale)",
    "init": f"{REF} entry/conf/model/xr_cnn.yaml:10 (fe.pretrained: true)",
    "crop": f"{_RUNNER}:195 (input_size [[700,700]], downscale [[0.5,0.5]]): the whole stored ROI",
    "xray_stored_scale": f"{_RUNNER}:195 (input_size [[700,700]], downscale [[0.5,0.5]]): augmented at 700 "
    "pixels, then downscaled x0.5",
    "xray_resample_mm": f"{REF} entry/prepare_data_xr_mipt.py:28-29 (pixel_spacing 0.195)",
    "xray_roi_mm": f"{_RUNNER}:195 (700 pixels) x 0.195 mm = 136.5 mm",
    "xray_size": f"{_RUNNER}:195 (700 pixels, downscale 0.5)",
}
# why the default store holds the ROI at the model's input size (benchmarks/xray_augment_scale.py)
XRAY_STORED_SCALE_WHY = (
    "the ROI stored at the model's input size and augmented there, a quarter of the storage; augmenting at 2x "
    "changed validation AP by -0.007 +- 0.011 over 3 seeds (benchmarks/xray_augment_scale.py)"
)
# the BATCH_SIZE line of each model's block of the runner
BATCH_LINES: dict[str, int] = {
    "2d_fc": 44, "2d_lstm": 58, "2d_trf": 72, "2dind_trf": 110, "2dsh_trf": 124, "2p1d": 138,
    "3d_resnext50": 150, "3d_shufflenet": 162, "xr_resnext50": 187,
}  # fmt: skip
MRI_EXTRA: dict[str, str] = {
    "crop": f"{_RUNNER}:53 (input_size [[320,320,128]], downscale [[0.5,0.5,0.5]]): a stored x2-downsampled crop",
}


@dataclass(frozen=True)
class RecipeLine:
    name: str
    value: Any
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reference(model: str) -> dict[str, Any]:
    """The reference's value of every recipe option for ``model`` (before flags and files)."""
    spec = get_spec(model)
    values = {**RECIPE_DEFAULTS, **dict(spec.recipe)}
    values["lr_milestones"] = list(values["lr_milestones"] or [])
    values.update(
        weight_decay=1e-4,
        epochs=100,
        focal_gamma=2.0,
        sampler="weighted",
        batch_size=spec.batch_size,
        augment=asdict(AugmentParams()),
    )
    return values


def _source(name: str, value: Any, reference: dict[str, Any], own: dict[str, str], model: str) -> str:
    if name in reference and value != reference[name]:
        return f"given (a flag or config file; the reference's: {reference[name]!r})"
    if name in own:
        return own[name]
    if name in PAPER:
        return PAPER[name]
    if name == "batch_size":
        line = BATCH_LINES.get(model)
        return f"{_RUNNER}:{line} (BATCH_SIZE={value})" if line else "ours: a model the reference does not train"
    return "ours"


def recipe_sources(
    config: TrainConfig, layout: InputLayout | None = None, store_params: Any = None
) -> list[RecipeLine]:
    """Each recipe value of a resolved ``config`` (and of its layout and store) with its source."""
    xray = XRAY_VIEW in get_spec(config.model).views
    own = XRAY if xray else MRI_EXTRA
    reference = _reference(config.model)
    values: dict[str, Any] = {
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "warmup_epochs": config.warmup_epochs,
        "warmup_start_lr": config.warmup_start_lr,
        "lr_milestones": list(config.lr_milestones or []),
        "lr_gamma": config.lr_gamma,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "focal_gamma": config.focal_gamma,
        "sampler": config.sampler,
        "augment": asdict(config.augment),
    }
    lines = [RecipeLine(k, v, _source(k, v, reference, own, config.model)) for k, v in values.items()]
    spec = get_spec(config.model)
    if config.init == "scratch" and not spec.imagenet_encoder:
        init_source = "ours: the model has no ImageNet encoder (3D convolutions from scratch, as the reference)"
    elif xray:
        init_source = XRAY["init"] if config.init == "imagenet" else "given (the reference's: 'imagenet')"
    else:
        init_source = f"{_RUNNER} (FE_PRETRAIN true and false loops: Table 2 compares both)"
    lines.append(RecipeLine("init", config.init, init_source))
    precision_source = (
        "the reference's: it trained in fp32 (REFERENCE.md section 5)"
        if config.precision == "fp32"
        else "ours: bf16 autocast on CUDA for speed (the reference trained in fp32); --precision fp32 for its "
        "arithmetic"
    )
    lines.append(RecipeLine("precision", config.precision, precision_source))
    if layout is not None:
        lines.append(RecipeLine("crop", list(layout.crop_shape), own.get("crop", "ours")))
        view = layout.source_view
        expected = normalisation_for(view)
        norm_source = (
            normalisation_source(view)
            if tuple(layout.normalisation) == expected
            else f"a run recorded before the per-modality normalisation (the reference's: {list(expected)})"
        )
        lines.append(RecipeLine("normalisation", list(layout.normalisation), norm_source))
    if store_params is not None and xray:
        for name in ("xray_resample_mm", "xray_roi_mm", "xray_size", "xray_stored_scale"):
            lines.append(RecipeLine(f"store.{name}", getattr(store_params, name), _store_source(name, store_params)))
    return lines


def _store_source(name: str, params: Any) -> str:
    reference = {"xray_resample_mm": 0.195, "xray_roi_mm": 136.5, "xray_size": 350, "xray_stored_scale": 2}
    value = getattr(params, name)
    if name == "xray_stored_scale" and value == 1:
        return f"ours: {XRAY_STORED_SCALE_WHY} (the reference's: 2, {XRAY[name]})"
    if name == "xray_size" and getattr(params, "preset", "full") != "full":
        return f"ours: the {params.preset} preset scales the 700-pixel ROI down to {value} (demos, tests)"
    if value == reference[name]:
        return XRAY[name]
    return f"a store made with other parameters (the reference's: {reference[name]})"


def describe_recipe(config: TrainConfig) -> dict[str, Any]:
    """What ``oai train --dry-run`` shows: the resolved config, its input layout and every recipe
    value with its source; reads the store's parameters, trains and writes nothing."""
    from oaicohort.imaging.store.volume_store import VolumeStore
    from oaimodels.data import resolve_layout
    from oaimodels.training.config import resolve_config

    resolved = resolve_config(config)
    store = VolumeStore.open(resolved.store)
    layout = resolve_layout(resolved.model, resolved.view, store, resolved.crop_shape)
    return {
        "config": resolved.to_dict(),
        "config_hash": resolved.hash(),
        "layout": layout.to_dict(),
        "recipe_sources": [line.to_dict() for line in recipe_sources(resolved, layout, store.params)],
    }
