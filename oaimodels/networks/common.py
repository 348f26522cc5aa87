"""Small helpers shared by the model families."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch
from torch import nn

from .registry import Shape

M = TypeVar("M", bound=nn.Module)


def take_view(x: Mapping[str, torch.Tensor], view: str, ndim: int) -> torch.Tensor:
    """``x[view]`` with a clear error when the view is missing or has the wrong rank."""
    if not isinstance(x, Mapping):
        raise TypeError(f"models take a dict {{view: tensor}}, got {type(x).__name__}")
    if view not in x:
        raise KeyError(f"input has no {view!r} view (got {sorted(x)})")
    t = x[view]
    if t.dim() != ndim:
        raise ValueError(f"view {view!r}: expected a {ndim}-d tensor, got shape {tuple(t.shape)}")
    return t


def resolve_shapes(
    defaults: Mapping[str, Shape],
    given: Mapping[str, Sequence[int]] | None,
    views: Sequence[str],
) -> dict[str, Shape]:
    """Per-view sample shapes for ``views``: ``given`` where present, else the paper defaults."""
    given = dict(given or {})
    unknown = set(given) - set(views)
    if unknown:
        raise ValueError(f"input_shapes for views this model does not read: {sorted(unknown)}")
    return {v: tuple(int(n) for n in given.get(v, defaults[v])) for v in views}


def require_scratch(init: str, model: str) -> None:
    """Volumetric models have no ImageNet encoder; anything but ``scratch`` is a mistake."""
    if init != "scratch":
        raise ValueError(f"{model} has no 2D ImageNet encoder; init must be 'scratch', got {init!r}")


def build_registered(
    model: str,
    make: Callable[[dict[str, Shape]], M],
    *,
    input_shapes: Mapping[str, Sequence[int]] | None,
    init: str,
    view: str | None = None,
) -> M:
    """The one build path of every registry model (as torchvision's ``_resnet``).

    The model's :class:`~oaimodels.networks.registry.ModelSpec` says which views it reads and
    their paper shapes; ``input_shapes`` overrides those shapes (and may name no other view); a
    model without a 2D ImageNet encoder accepts only ``init='scratch'``; a single-view model
    with ``view_choices`` is built for ``view``. ``make`` gets the resolved per-view shapes.
    """
    from .registry import get_spec  # the registry imports the builders that import this module

    spec = get_spec(model)
    if not spec.imagenet_encoder:
        require_scratch(init, model)
    if view is not None and view not in spec.view_choices:
        raise ValueError(f"view must be one of {spec.view_choices}, got {view!r}")
    views = (view,) if view is not None else spec.views
    return make(resolve_shapes(spec.input_shapes, input_shapes, views))


def init_like_reference_3d(module: nn.Module) -> None:
    """The reference's init of its 3D CNNs ((2+1)D, 3D ResNeXt): every Conv3d
    ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, every BatchNorm3d weight 1, bias 0
    (the final Linear keeps PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert 4-d parameters to ``channels_last`` and 5-d ones to ``channels_last_3d``.

    ``Module.to(memory_format=torch.channels_last)`` raises on the 5-d weights of 3D convs, so
    one call that handles both kinds lets callers treat every model of the registry alike.
    """
    for p in module.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        elif p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def inputs_channels_last(x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The input dict with 4-d/5-d tensors in channels-last layout (for the benchmarks)."""
    out = {}
    for k, t in x.items():
        if t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        elif t.dim() == 5:
            t = t.contiguous(memory_format=torch.channels_last_3d)
        out[k] = t
    return out


class VolumeClassifier(nn.Module):
    """Adapter from the registry's ``{view: tensor}`` input to a network on the 'sag' volume."""

    def __init__(self, net: nn.Module, view: str = "sag") -> None:
        super().__init__()
        self.view = view
        self.net = net

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(take_view(x, self.view, 5))
