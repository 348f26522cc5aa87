"""Conventional slice-feature aggregators: 2D + FC and 2D + Bi-LSTM (Table 1, rows 2-3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from oaicohort.vocabulary import CLASSES

from .common import build_registered
from .registry import SAG_SHAPE, SMALL_SAG_SHAPE, PaperRow, register_model
from .slice_encoder import FEATURES, SingleViewSliceModel, SliceEncoder


class FCAggregator(nn.Module):
    """Concatenate the features of all slices, then a two-layer MLP.

    The first layer sees every slice at once, so its size grows with the number of slices
    (64 x 2048 -> 512 is 67M weights at the paper's size) and the slice count is fixed at build.
    """

    def __init__(
        self,
        n_slices: int,
        *,
        in_features: int = FEATURES,
        hidden: int = 512,
        dropout: float = 0.2,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        self.n_slices = n_slices
        self.mlp = nn.Sequential(
            nn.Linear(n_slices * in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.n_slices:
            raise ValueError(f"built for {self.n_slices} slices, got {features.shape[1]}")
        return self.mlp(features.flatten(1))


class BiLSTMAggregator(nn.Module):
    """A 2-layer bidirectional LSTM over the slice sequence.

    The classifier reads the terminal states of both directions: the forward output at the
    last slice and the backward output at the first slice, each of which has seen every slice.
    """

    def __init__(
        self,
        *,
        in_features: int = FEATURES,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.1,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(
            in_features,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout,
        )
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(features)  # (B, D, 2 * hidden): [forward | backward]
        terminal = torch.cat([out[:, -1, : self.hidden], out[:, 0, self.hidden :]], dim=1)
        return self.fc(terminal)


_FC_ROW = PaperRow(views=("sag",), params_m=91, gmacs=134, ap=0.57, ap_sd=0.03, auc=0.77, auc_sd=0.01, latency_ms=28.6)
_LSTM_ROW = PaperRow(
    views=("sag",), params_m=29, gmacs=135, ap=0.55, ap_sd=0.03, auc=0.76, auc_sd=0.02, latency_ms=36.6
)


@register_model(
    "2d_fc",
    family="2D slice encoder",
    summary="ResNet-50 per sagittal slice, features concatenated -> FC",
    views=("sag",),
    input_shapes={"sag": SAG_SHAPE},
    small_shapes={"sag": SMALL_SAG_SHAPE},
    paper=(_FC_ROW,),
    batch_size=16,
    imagenet_encoder=True,
)
def build_2d_fc(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> SingleViewSliceModel:
    """2D + FC on the sagittal stack; the FC size follows the number of slices given."""

    def make(shapes: dict[str, tuple[int, ...]]) -> SingleViewSliceModel:
        aggregator = FCAggregator(shapes["sag"][1], num_classes=num_classes)  # built first: init order
        return SingleViewSliceModel("sag", SliceEncoder(init=init), aggregator)

    return build_registered("2d_fc", make, input_shapes=input_shapes, init=init)


@register_model(
    "2d_lstm",
    family="2D slice encoder",
    summary="ResNet-50 per sagittal slice, features aggregated by a 2-layer Bi-LSTM",
    views=("sag",),
    input_shapes={"sag": SAG_SHAPE},
    small_shapes={"sag": SMALL_SAG_SHAPE},
    paper=(_LSTM_ROW,),
    batch_size=32,
    imagenet_encoder=True,
)
def build_2d_lstm(
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> SingleViewSliceModel:
    """2D + Bi-LSTM on the sagittal stack (any number of slices)."""
    return build_registered(
        "2d_lstm",
        lambda shapes: SingleViewSliceModel("sag", SliceEncoder(init=init), BiLSTMAggregator(num_classes=num_classes)),
        input_shapes=input_shapes,
        init=init,
    )
