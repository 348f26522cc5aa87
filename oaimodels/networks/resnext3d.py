"""3D ResNeXt-50 (32 groups) on the whole volume (Table 1, "3D ResNeXt-50").

A bottleneck block reduces to ``width`` channels with a 1x1x1 conv, runs a grouped 3x3x3 conv
(32 groups, carrying the stride) and expands to ``2 * width``; stages [3, 4, 6, 3] with widths
128/256/512/1024 give 256..2048 output channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from oaicohort.vocabulary import CLASSES, MRI_VIEWS

from .common import VolumeClassifier, build_registered, init_like_reference_3d
from .registry import SAG_SHAPE, SMALL_SAG_SHAPE, PaperRow, register_model


class Bottleneck3d(nn.Module):
    expansion = 2

    def __init__(self, c_in: int, width: int, *, stride: int = 1, groups: int = 32) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv3d(c_in, width, 1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, c_out, 1, bias=False),
            nn.BatchNorm3d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNeXt3d(nn.Module):
    """3D ResNeXt classifier of a ``(B, 1, D, H, W)`` volume.

    Initialised as the reference: convs ``kaiming_normal_(fan_out, relu)``, BatchNorm 1/0.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (128, 256, 512, 1024),
        *,
        groups: int = 32,
        in_channels: int = 1,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages = []
        c_in = 64
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            # The first stage keeps the resolution (the reference's stride option is ignored).
            stride = 1 if i == 0 else 2
            blocks = [Bottleneck3d(c_in, width, stride=stride, groups=groups)]
            c_in = width * Bottleneck3d.expansion
            blocks += [Bottleneck3d(c_in, width, groups=groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_like_reference_3d(self)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(volume))
        return self.fc(self.pool(x).flatten(1))


@register_model(
    "3d_resnext50",
    family="volumetric",
    summary="3D ResNeXt-50 32 groups on the whole volume",
    views=("sag",),
    input_shapes={"sag": SAG_SHAPE},
    small_shapes={"sag": SMALL_SAG_SHAPE},
    paper=(
        PaperRow(views=MRI_VIEWS, params_m=26, gmacs=21, ap=0.53, ap_sd=0.03, auc=0.75, auc_sd=0.02, latency_ms=23.6),
    ),
    batch_size=64,
    imagenet_encoder=False,
)
def build_3d_resnext50(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> VolumeClassifier:
    """3D ResNeXt-50; reads the volume as the 'sag' view ``(B, 1, 64, 160, 160)``."""
    return build_registered(
        "3d_resnext50",
        lambda shapes: VolumeClassifier(ResNeXt3d(num_classes=num_classes)),
        input_shapes=input_shapes,
        init=init,
    )
