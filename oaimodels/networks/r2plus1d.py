"""(2+1)D ResNet on the whole volume (Table 1, "(2+1)D").

Every 3x3x3 convolution is factorised into a 1x3x3 spatial convolution, BN, ReLU and a 3x1x1
convolution along the slice ("depth") axis. The intermediate width is chosen so the pair has
about as many weights as the full 3D kernel, which is what makes the model comparable to a 3D
ResNet of the same layout. The layout is BasicBlock [3, 4, 6, 3] (34 layers deep, although the
reference calls it 50).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from oaicohort.vocabulary import CLASSES, MRI_VIEWS

from .common import VolumeClassifier, build_registered, init_like_reference_3d
from .registry import SAG_SHAPE, SMALL_SAG_SHAPE, PaperRow, register_model


def mid_width(c_in: int, c_out: int, k_space: int = 3, k_depth: int = 3) -> int:
    """Width between the spatial and depth convs giving ~the weights of a full 3D kernel.

    Solves ``c_in*k_s^2*m + m*k_d*c_out = c_in*c_out*k_d*k_s^2`` for ``m`` (rounded down).
    """
    return (c_in * c_out * k_depth * k_space**2) // (c_in * k_space**2 + k_depth * c_out)


class Conv2Plus1d(nn.Sequential):
    """Spatial 1x3x3 conv (spatial stride), BN, ReLU, then depth 3x1x1 conv (depth stride)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1, mid: int | None = None) -> None:
        mid = mid_width(c_in, c_out) if mid is None else mid
        super().__init__(
            nn.Conv3d(c_in, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, c_out, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class BasicBlock2Plus1d(nn.Module):
    """Two factorised convs with a residual; 1x1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = Conv2Plus1d(c_in, c_out, stride=stride)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = Conv2Plus1d(c_out, c_out)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class R2Plus1dNet(nn.Module):
    """R(2+1)D classifier of a ``(B, 1, D, H, W)`` volume.

    Initialised as the reference: convs ``kaiming_normal_(fan_out, relu)``, BatchNorm 1/0.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        *,
        in_channels: int = 1,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        # The stem factorises a 7x7x7 conv; its width is the formula evaluated for RGB input
        # (110), as in the reference, even though our volumes have one channel.
        stem_mid = mid_width(3, widths[0], k_space=7, k_depth=7)
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, widths[0], (7, 1, 1), 1, (3, 0, 0), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages = []
        c_in = widths[0]
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stages.append(self._make_stage(c_in, width, n, stride=1 if i == 0 else 2))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_like_reference_3d(self)

    @staticmethod
    def _make_stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        first = BasicBlock2Plus1d(c_in, c_out, stride)
        return nn.Sequential(first, *(BasicBlock2Plus1d(c_out, c_out) for _ in range(blocks - 1)))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(volume))
        return self.fc(self.pool(x).flatten(1))


@register_model(
    "2p1d",
    family="volumetric",
    summary="R(2+1)D, BasicBlock [3,4,6,3], on the whole volume (slices as depth)",
    views=("sag",),
    input_shapes={"sag": SAG_SHAPE},
    small_shapes={"sag": SMALL_SAG_SHAPE},
    paper=(
        PaperRow(views=MRI_VIEWS, params_m=64, gmacs=100, ap=0.51, ap_sd=0.03, auc=0.73, auc_sd=0.02, latency_ms=21.3),
    ),
    batch_size=32,
    imagenet_encoder=False,
)
def build_2p1d(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> VolumeClassifier:
    """(2+1)D network; reads the volume as the 'sag' view ``(B, 1, 64, 160, 160)``."""
    return build_registered(
        "2p1d",
        lambda shapes: VolumeClassifier(R2Plus1dNet(num_classes=num_classes)),
        input_shapes=input_shapes,
        init=init,
    )
