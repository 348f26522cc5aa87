"""2D slice encoder (torchvision ResNet-50) and the single-view "encode slices, aggregate" model.

The 2D models of the paper encode every slice of an MRI stack independently with an
ImageNet-style ResNet-50 and aggregate the per-slice features (FC, Bi-LSTM or transformer).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models import resnet50

from .common import take_view
from .weights import load_encoder_weights

FEATURES = 2048
"""Width of ResNet-50's pooled features, i.e. of one slice token."""


class SliceEncoder(nn.Module):
    """ResNet-50 without its classifier, applied to every slice of a stack.

    Input ``(B, 1, D, H, W)``; output ``(B, D, 2048)``. All ``B * D`` slices go through the
    network in one batched call: a Python loop over slices would serialise small kernels and
    leave the GPU idle.
    """

    def __init__(self, *, init: str = "scratch") -> None:
        super().__init__()
        self.trunk = resnet50()
        self.trunk.fc = nn.Identity()  # keep the global average pool, drop the ImageNet head
        load_encoder_weights(self.trunk, "resnet50", init)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = stack.shape
        if c != 1:
            raise ValueError(f"slice encoder expects 1 channel, got {c}")
        # (B, 1, D, H, W) -> (B*D, 1, H, W): a view, no copy, since the channel axis is 1.
        slices = stack.transpose(1, 2).reshape(b * d, 1, h, w)
        # Grey -> RGB as ImageNet weights expect; expand shares memory instead of copying.
        features = self.trunk(slices.expand(-1, 3, -1, -1))
        return features.view(b, d, -1)


class SingleViewSliceModel(nn.Module):
    """Slice encoder followed by an aggregator ``(B, D, 2048) -> (B, num_classes)``."""

    def __init__(self, view: str, encoder: SliceEncoder, aggregator: nn.Module) -> None:
        super().__init__()
        self.view = view
        self.encoder = encoder
        self.aggregator = aggregator

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.aggregator(self.encoder(take_view(x, self.view, 5)))
