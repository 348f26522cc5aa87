"""Multi-view 2D + TRF: the slices of three views form one token sequence (Table 1, rows 7-8).

The reference slices one sagittal volume three ways, so a ``(1, D, H, W)`` sagittal volume
(``D`` slices along left-right) gives ``D`` sagittal slices of ``H x W``, ``W`` coronal slices
of ``H x D`` and ``H`` axial slices of ``W x D``. At the paper's size: 64 + 160 + 160 = 384
tokens; :func:`views_from_volume` produces exactly this layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

import torch
from torch import nn

from oaicohort.vocabulary import CLASSES, MRI_VIEWS

from .common import build_registered, take_view
from .registry import SAG_SHAPE, SMALL_SAG_SHAPE, PaperRow, Shape, ShapeMap, register_model
from .slice_encoder import SliceEncoder
from .slice_transformer import SliceTransformer


def view_shapes_from_volume(sag_shape: Sequence[int]) -> dict[str, Shape]:
    """Per-view shapes ``(C, D, H, W)`` of the three slicings of a sagittal ``(C, D, H, W)``."""
    c, d, h, w = sag_shape
    return {"sag": (c, d, h, w), "cor": (c, w, h, d), "ax": (c, h, w, d)}


def views_from_volume(sag: torch.Tensor) -> dict[str, torch.Tensor]:
    """Slice a sagittal ``(B, C, D, H, W)`` volume three ways (views are strided, no copy).

    coronal = slices along ``W``, each ``H x D``; axial = slices along ``H``, each ``W x D``.
    """
    return {
        "sag": sag,
        "cor": sag.permute(0, 1, 4, 3, 2),
        "ax": sag.permute(0, 1, 3, 4, 2),
    }


MULTIVIEW_SHAPES = view_shapes_from_volume(SAG_SHAPE)
SMALL_MULTIVIEW_SHAPES = view_shapes_from_volume(SMALL_SAG_SHAPE)


class MultiViewSliceModel(nn.Module):
    """Encode the slices of every view, concatenate the tokens, classify with one transformer.

    ``shared=True`` encodes all views with one ResNet-50 (``2dsh_trf``), otherwise each view has
    its own (``2dind_trf``). Views have different slice sizes, so each view is one batched
    encoder call (three calls per forward, never one per slice).
    """

    def __init__(
        self,
        shapes: Mapping[str, Shape],
        *,
        shared: bool,
        init: str = "scratch",
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        self.views = tuple(shapes)
        self.shared = shared
        if shared:
            self.encoder = SliceEncoder(init=init)
        else:
            self.encoders = nn.ModuleDict({v: SliceEncoder(init=init) for v in self.views})
        n_tokens = sum(shape[1] for shape in shapes.values())
        self.aggregator = SliceTransformer(n_tokens, num_classes=num_classes)

    def _encoder(self, view: str) -> nn.Module:
        return self.encoder if self.shared else self.encoders[view]

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tokens = [self._encoder(v)(take_view(x, v, 5)) for v in self.views]
        return self.aggregator(torch.cat(tokens, dim=1))


def _build(
    model: str,
    shared: bool,
    input_shapes: Mapping[str, Sequence[int]] | None,
    init: str,
    num_classes: int,
) -> MultiViewSliceModel:
    return build_registered(
        model,
        lambda shapes: MultiViewSliceModel(shapes, shared=shared, init=init, num_classes=num_classes),
        input_shapes=input_shapes,
        init=init,
    )


class _MultiViewSpec(TypedDict):
    """What both multi-view models register alike (keyword arguments of ``register_model``)."""

    family: str
    views: tuple[str, ...]
    input_shapes: ShapeMap
    small_shapes: ShapeMap
    batch_size: int
    imagenet_encoder: bool


_SPEC = _MultiViewSpec(
    family="2D slice encoder, multi-view",
    views=MRI_VIEWS,
    input_shapes=MULTIVIEW_SHAPES,
    small_shapes=SMALL_MULTIVIEW_SHAPES,
    batch_size=8,
    imagenet_encoder=True,
)


@register_model(
    "2dsh_trf",
    summary="one shared ResNet-50 over sag+cor+ax slices, one transformer over all tokens",
    paper=(
        PaperRow(views=MRI_VIEWS, params_m=133, gmacs=443, ap=0.58, ap_sd=0.03, auc=0.78, auc_sd=0.01, latency_ms=74.8),
    ),
    **_SPEC,
)
def build_2dsh_trf(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> MultiViewSliceModel:
    """2Dsh + TRF. Paper shapes: sag (1,64,160,160), cor (1,160,160,64), ax (1,160,160,64)."""
    return _build("2dsh_trf", True, input_shapes, init, num_classes)


@register_model(
    "2dind_trf",
    summary="a ResNet-50 per view (sag, cor, ax), one transformer over all tokens",
    paper=(
        PaperRow(views=MRI_VIEWS, params_m=180, gmacs=443, ap=0.58, ap_sd=0.03, auc=0.78, auc_sd=0.01, latency_ms=73.3),
    ),
    **_SPEC,
)
def build_2dind_trf(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> MultiViewSliceModel:
    """2Dind + TRF. Paper shapes: sag (1,64,160,160), cor (1,160,160,64), ax (1,160,160,64)."""
    return _build("2dind_trf", False, input_shapes, init, num_classes)
