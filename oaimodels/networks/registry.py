"""Model registry: one source of truth for every network of the paper's Table 1.

Each builder is registered together with a :class:`ModelSpec` that says which views the model
reads, the per-sample input shape of each view at the paper's size, the figures the paper
reports for it (Table 1), and the training batch size of the reference recipe. ``oai models``,
the tests and the benchmark all read these specs, so the numbers live in one place.

Input convention (shared with the dataset and training code)
------------------------------------------------------------
A model's ``forward`` takes ``dict[str, Tensor]`` mapping a view name to a float tensor:

* MRI views ``sag``, ``cor``, ``ax``: shape ``(B, 1, D, H, W)``, ``D`` = number of slices along
  that view's slice axis. The sagittal stack of the paper is ``(1, 64, 160, 160)``.
* ``xray``: shape ``(B, 1, H, W)``, the knee ROI (paper: ``(1, 350, 350)``).

A model takes the views it needs from the dict and ignores the others. Output: logits
``(B, num_classes)`` in the order of :data:`CLASSES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

"""Output order of every model's logits."""

XRAY_VIEW = "xray"

# Paper-size per-sample shapes (REFERENCE section 3-4).
SAG_SHAPE: tuple[int, ...] = (1, 64, 160, 160)
"""Sagittal stack, and the volume of the volumetric models: 64 slices of 160x160."""
RESLICED_SHAPE: tuple[int, ...] = (1, 80, 160, 128)
"""Single-view coronal/axial stack: 80 slices of 160x128, as many voxels as the sagittal one."""
XRAY_SHAPE: tuple[int, ...] = (1, 350, 350)
"""Knee ROI of the radiograph, 700x700 pixels downscaled x0.5."""
SMALL_SAG_SHAPE: tuple[int, ...] = (1, 16, 32, 32)
SMALL_RESLICED_SHAPE: tuple[int, ...] = (1, 20, 32, 24)

Shape = tuple[int, ...]
ShapeMap = Mapping[str, Shape]
Builder = Callable[..., nn.Module]


@dataclass(frozen=True, kw_only=True)
class PaperRow:
    """One row of Table 1 of the paper (efficiency on an RTX 2080 Ti, metrics on site D).

    Keyword-only: eight numbers in a row are too easy to transpose.
    """

    views: tuple[str, ...]
    params_m: float
    gmacs: float
    ap: float
    ap_sd: float
    auc: float
    auc_sd: float
    latency_ms: float


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model reads and what the paper reports for it.

    ``views`` are the views one forward pass reads when the model is built with defaults;
    ``view_choices`` lists the alternatives a single-view model can be built for (``view=``).
    ``input_shapes`` gives the per-sample shape of every view the model can read, at the paper's
    size: ``(C, D, H, W)`` for MRI views, ``(C, H, W)`` for the radiograph. ``small_shapes`` are
    reduced shapes that every model accepts, for CPU tests, demos and benchmarks.
    """

    name: str
    family: str
    summary: str
    views: tuple[str, ...]
    input_shapes: ShapeMap
    small_shapes: ShapeMap
    paper: tuple[PaperRow, ...]
    batch_size: int
    imagenet_encoder: bool
    builder: Builder = field(repr=False, compare=False)
    view_choices: tuple[str, ...] = ()
    recipe: Mapping[str, Any] = field(default_factory=dict)
    """Training options (``TrainConfig`` field -> value) where the model's reference recipe
    differs from the MRI models' (e.g. the X-ray model's lr and multistep schedule); training
    applies them while the option has its default."""

    def __post_init__(self) -> None:
        # Freeze the shape maps so a caller cannot change the registry by accident.
        object.__setattr__(self, "input_shapes", MappingProxyType(dict(self.input_shapes)))
        object.__setattr__(self, "small_shapes", MappingProxyType(dict(self.small_shapes)))
        object.__setattr__(self, "recipe", MappingProxyType(dict(self.recipe)))

    # The default Table 1 row is the first; single-view 2D+TRF has one row per view.
    def paper_row(self, view: str | None = None) -> PaperRow:
        """The Table 1 row for ``view`` (single-view models) or the model's default row."""
        if view is None:
            return self.paper[0]
        for row in self.paper:
            if row.views == (view,):
                return row
        raise KeyError(f"{self.name}: no Table 1 row for view {view!r}")

    @property
    def paper_params_m(self) -> float:
        return self.paper[0].params_m

    @property
    def paper_gmacs(self) -> float:
        return self.paper[0].gmacs

    @property
    def paper_ap(self) -> float:
        return self.paper[0].ap

    @property
    def paper_auc(self) -> float:
        return self.paper[0].auc

    def shapes_for(self, view: str | None = None, *, small: bool = False) -> dict[str, Shape]:
        """Per-sample input shapes of the views read when built for ``view`` (None = default)."""
        views = self.views if view is None else (view,)
        source = self.small_shapes if small else self.input_shapes
        missing = [v for v in views if v not in source]
        if missing:
            raise KeyError(f"{self.name}: cannot read view(s) {missing}; known: {list(source)}")
        return {v: tuple(source[v]) for v in views}


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    summary: str,
    views: tuple[str, ...],
    input_shapes: ShapeMap,
    small_shapes: ShapeMap,
    paper: tuple[PaperRow, ...],
    batch_size: int,
    imagenet_encoder: bool,
    view_choices: tuple[str, ...] = (),
    recipe: Mapping[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under ``name`` with its :class:`ModelSpec`."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(
            name=name,
            family=family,
            summary=summary,
            views=views,
            input_shapes=input_shapes,
            small_shapes=small_shapes,
            paper=paper,
            batch_size=batch_size,
            imagenet_encoder=imagenet_encoder,
            builder=builder,
            view_choices=view_choices,
            recipe=recipe or {},
        )
        return builder

    return decorate


TABLE1_ORDER: tuple[str, ...] = (
    "xr_resnext50",
    "2d_fc",
    "2d_lstm",
    "2d_trf",
    "2dsh_trf",
    "2dind_trf",
    "2p1d",
    "3d_resnext50",
    "3d_shufflenet",
)
"""Table 1's row order (the X-ray prior art first); models registered elsewhere follow by name."""


def list_models() -> list[str]:
    """Registered model names: Table 1's rows in the paper's order, then any other model by name."""
    rank = {name: i for i, name in enumerate(TABLE1_ORDER)}
    return sorted(_REGISTRY, key=lambda name: (rank.get(name, len(rank)), name))


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``; a ``KeyError`` lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build model ``name``; keyword arguments go to its builder (``input_shapes``, ``init``...)."""
    return get_spec(name).builder(**kwargs)


def example_inputs(
    shapes: ShapeMap,
    *,
    batch: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random inputs of the given per-sample shapes, batched, as a model's forward expects."""
    return {v: torch.randn(batch, *s, device=device, dtype=dtype) for v, s in shapes.items()}
