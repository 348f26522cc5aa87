"""X-ray prior art: torchvision ResNeXt-50 32x4d on the knee ROI of the PA radiograph."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchvision.models import resnext50_32x4d

from oaicohort.vocabulary import CLASSES

from .common import build_registered, take_view
from .registry import XRAY_SHAPE, XRAY_VIEW, PaperRow, register_model
from .weights import load_encoder_weights

SMALL_XRAY_SHAPE: tuple[int, ...] = (1, 64, 64)


class XrayResNeXt(nn.Module):
    """ResNeXt-50 32x4d trunk (global average pool kept) and a two-layer head with dropout.

    Input ``{'xray': (B, 1, H, W)}``; the grey image is repeated to the 3 channels that
    ImageNet weights expect.
    """

    def __init__(
        self,
        *,
        init: str = "scratch",
        hidden: int = 512,
        dropout: float = 0.5,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        self.trunk = resnext50_32x4d()
        self.trunk.fc = nn.Identity()
        load_encoder_weights(self.trunk, "resnext50_32x4d", init)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2048, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        image = take_view(x, XRAY_VIEW, 4)
        if image.shape[1] != 1:
            raise ValueError(f"xray expects 1 channel, got {image.shape[1]}")
        return self.head(self.trunk(image.expand(-1, 3, -1, -1)))


@register_model(
    "xr_resnext50",
    family="2D radiograph",
    summary="ResNeXt-50 32x4d on the 350x350 knee ROI of the PA radiograph (prior art)",
    views=(XRAY_VIEW,),
    input_shapes={XRAY_VIEW: XRAY_SHAPE},
    small_shapes={XRAY_VIEW: SMALL_XRAY_SHAPE},
    paper=(
        PaperRow(
            views=("cor proj",), params_m=24, gmacs=11, ap=0.54, ap_sd=0.02, auc=0.74, auc_sd=0.01, latency_ms=12.9
        ),
    ),
    # The reference runner trains the X-ray model with its own recipe (entry/runner.sh, xr_cnn
    # block): batch 64, Adam lr 1e-3, CustomWarmupMultiStepLR with epochs_warmup 5 and
    # mstep_milestones [20, 40]. That scheduler (oaprmr/various/_optimizers.py) warms up linearly
    # from 0.1 x lr and adds the warm-up length to each milestone: x0.1 from epoch 25 and again
    # from epoch 45. Our milestones are absolute epochs, hence [25, 45]. Every value's source:
    # oaimodels.training.recipe_sources (shown by `oai train --dry-run`).
    batch_size=64,
    imagenet_encoder=True,
    recipe={"lr": 1e-3, "warmup_epochs": 5, "warmup_start_lr": 1e-4, "lr_milestones": [25, 45], "lr_gamma": 0.1},
)
def build_xr_resnext50(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> XrayResNeXt:
    """X-ray ResNeXt-50; any ROI size works (global pooling), the paper's is 350x350."""
    return build_registered(
        "xr_resnext50",
        lambda shapes: XrayResNeXt(init=init, num_classes=num_classes),
        input_shapes=input_shapes,
        init=init,
    )
