"""3D ShuffleNet v1 (groups 3, width 1.0) on the whole volume (Table 1, "3D ShuffleNet")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oaicohort.vocabulary import CLASSES, MRI_VIEWS

from .common import VolumeClassifier, build_registered
from .registry import SAG_SHAPE, SMALL_SAG_SHAPE, PaperRow, register_model

STEM_CHANNELS = 24
DEPTH_MULTIPLE = 16
"""The slice count must be a multiple of this: the stride-2 shortcut pools 2 slices at a time
in each of 4 halvings (max-pool + 3 stages); an odd count would make the two branches disagree."""
MIN_SIDE = 17
"""The last stage's pooled shortcut (3x3 window) needs at least 3 pixels, i.e. ceil(side/8) >= 3."""


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups so the next grouped conv mixes them."""
    b, c = x.shape[:2]
    return x.view(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class ShuffleUnit3d(nn.Module):
    """Grouped 1x1x1 -> shuffle -> depthwise 3x3x3 -> grouped 1x1x1, with a residual.

    Stride 2 (a stage's first unit): the conv branch outputs ``c_out - c_in`` channels and is
    concatenated with an average-pooled copy of the input; otherwise the input is added.
    """

    def __init__(self, c_in: int, c_out: int, *, stride: int, groups: int) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = c_out // 4
        branch_out = c_out - c_in if stride == 2 else c_out
        # The stem's 24 channels do not split into 3 groups, so the first unit is not grouped.
        first_groups = 1 if c_in == STEM_CHANNELS else groups
        self.reduce = nn.Sequential(
            nn.Conv3d(c_in, mid, 1, groups=first_groups, bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
        )
        self.depthwise = nn.Sequential(
            nn.Conv3d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False),
            nn.BatchNorm3d(mid),
        )
        self.expand = nn.Sequential(
            nn.Conv3d(mid, branch_out, 1, groups=groups, bias=False),
            nn.BatchNorm3d(branch_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.reduce(x), self.groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 2:
            shortcut = F.avg_pool3d(x, kernel_size=(2, 3, 3), stride=2, padding=(0, 1, 1))
            return F.relu(torch.cat([out, shortcut], dim=1))
        return F.relu(out + x)


class ShuffleNet3d(nn.Module):
    """3D ShuffleNet v1 classifier of a ``(B, 1, D, H, W)`` volume, ``D`` a multiple of 16."""

    def __init__(
        self,
        units: Sequence[int] = (4, 8, 4),
        widths: Sequence[int] = (240, 480, 960),
        *,
        groups: int = 3,
        in_channels: int = 1,
        dropout: float = 0.2,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, STEM_CHANNELS, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm3d(STEM_CHANNELS),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages = []
        c_in = STEM_CHANNELS
        for n, c_out in zip(units, widths, strict=True):
            blocks = [ShuffleUnit3d(c_in, c_out, stride=2, groups=groups)]
            blocks += [ShuffleUnit3d(c_out, c_out, stride=1, groups=groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        if volume.shape[2] % DEPTH_MULTIPLE:
            raise ValueError(f"3D ShuffleNet needs a slice count divisible by {DEPTH_MULTIPLE}, got {volume.shape[2]}")
        x = self.stages(self.stem(volume))
        return self.classifier(self.pool(x).flatten(1))


@register_model(
    "3d_shufflenet",
    family="volumetric",
    summary="3D ShuffleNet v1 (groups 3) on the whole volume",
    views=("sag",),
    input_shapes={"sag": SAG_SHAPE},
    small_shapes={"sag": SMALL_SAG_SHAPE},
    paper=(
        PaperRow(views=MRI_VIEWS, params_m=1, gmacs=4, ap=0.54, ap_sd=0.03, auc=0.76, auc_sd=0.01, latency_ms=45.0),
    ),
    batch_size=64,
    imagenet_encoder=False,
)
def build_3d_shufflenet(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> VolumeClassifier:
    """3D ShuffleNet; reads the volume as 'sag' ``(B, 1, 64, 160, 160)`` (depth % 16 == 0)."""

    def make(shapes: dict[str, tuple[int, ...]]) -> VolumeClassifier:
        shape = shapes["sag"]
        if shape[1] % DEPTH_MULTIPLE:
            raise ValueError(f"3d_shufflenet: slice count must be divisible by {DEPTH_MULTIPLE}")
        if min(shape[2:]) < MIN_SIDE:
            raise ValueError(f"3d_shufflenet: slices must be at least {MIN_SIDE}x{MIN_SIDE} pixels")
        return VolumeClassifier(ShuffleNet3d(num_classes=num_classes))

    return build_registered("3d_shufflenet", make, input_shapes=input_shapes, init=init)
