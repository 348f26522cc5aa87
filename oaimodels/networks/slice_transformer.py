"""Transformer aggregation of slice features (2D + TRF, the paper's proposed model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oaicohort.vocabulary import CLASSES, MRI_VIEWS

from .common import build_registered
from .registry import RESLICED_SHAPE, SAG_SHAPE, SMALL_RESLICED_SHAPE, SMALL_SAG_SHAPE, PaperRow, register_model
from .slice_encoder import FEATURES, SingleViewSliceModel, SliceEncoder


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    SDPA picks a fused kernel (flash / memory-efficient) where one applies and scales by
    ``head_dim ** -0.5``, the standard per-head scaling (the reference scaled by the model
    width instead, which flattens the attention distribution). As in the reference, the
    attention probabilities get no dropout; ``dropout`` applies to the output projection.
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # (B, N, 3*H*Dh) -> 3 x (B, H, N, Dh)
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # no attention-probability dropout (reference)
        y = y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj_drop(self.proj(y))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + ff(LN(x))."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads=heads, head_dim=head_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class SliceTransformer(nn.Module):
    """Classify a sequence of slice features with a class token and a small ViT-style encoder.

    Input ``(B, N, in_features)`` with ``N == n_tokens`` fixed at build time, because the
    positional embedding is learnt per position (``N + 1`` positions with the class token).
    Initialisation follows the reference: class token and positional embedding ``torch.randn``
    (standard normal); linear and LayerNorm layers PyTorch's defaults.
    """

    def __init__(
        self,
        n_tokens: int,
        *,
        in_features: int = FEATURES,
        dim: int = 2048,
        depth: int = 4,
        heads: int = 8,
        head_dim: int = 256,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        emb_dropout: float = 0.1,
        num_classes: int = len(CLASSES),
    ) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.embed = nn.Linear(in_features, dim)
        # Standard normal, as the reference (torch.randn), not the ViT habit of std 0.02
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, n_tokens + 1, dim))
        self.emb_drop = nn.Dropout(emb_dropout)
        self.blocks = nn.Sequential(
            *(Block(dim, heads=heads, head_dim=head_dim, mlp_dim=mlp_dim, dropout=dropout) for _ in range(depth))
        )
        self.head = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, n, _ = features.shape
        if n != self.n_tokens:
            raise ValueError(f"built for {self.n_tokens} slice tokens, got {n}")
        tokens = self.embed(features)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = self.emb_drop(tokens + self.pos_embedding)
        return self.head(self.blocks(tokens)[:, 0])


_TRF_ROWS = (
    PaperRow(views=("sag",), params_m=133, gmacs=141, ap=0.58, ap_sd=0.02, auc=0.78, auc_sd=0.01, latency_ms=31.1),
    PaperRow(views=("cor",), params_m=133, gmacs=143, ap=0.58, ap_sd=0.03, auc=0.79, auc_sd=0.01, latency_ms=32.8),
    PaperRow(views=("ax",), params_m=133, gmacs=143, ap=0.55, ap_sd=0.03, auc=0.78, auc_sd=0.01, latency_ms=33.3),
)
_PAPER_SHAPES = {"sag": SAG_SHAPE, "cor": RESLICED_SHAPE, "ax": RESLICED_SHAPE}


@register_model(
    "2d_trf",
    family="2D slice encoder",
    summary="ResNet-50 per slice of one view, slice features aggregated by a transformer",
    views=("sag",),
    view_choices=MRI_VIEWS,
    input_shapes=_PAPER_SHAPES,
    small_shapes={"sag": SMALL_SAG_SHAPE, "cor": SMALL_RESLICED_SHAPE, "ax": SMALL_RESLICED_SHAPE},
    paper=_TRF_ROWS,
    batch_size=32,
    imagenet_encoder=True,
)
def build_2d_trf(
    *,
    view: str = "sag",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    init: str = "scratch",
    num_classes: int = len(CLASSES),
) -> SingleViewSliceModel:
    """2D + TRF on one view; the positional embedding is sized from that view's slice count.

    Paper shapes: sag ``(1, 64, 160, 160)``; cor and ax ``(1, 80, 160, 128)``.
    """

    def make(shapes: dict[str, tuple[int, ...]]) -> SingleViewSliceModel:
        aggregator = SliceTransformer(shapes[view][1], num_classes=num_classes)  # built first: init order
        return SingleViewSliceModel(view, SliceEncoder(init=init), aggregator)

    return build_registered("2d_trf", make, input_shapes=input_shapes, init=init, view=view)
