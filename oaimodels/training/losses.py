"""Loss of the paper's recipe: multiclass focal loss (gamma 2, no class weights).

The class imbalance is handled by the weighted sampler (REFERENCE.md section 5), so the loss
itself carries no class weights; the focal term only down-weights well-classified knees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0) -> torch.Tensor:
    """Mean over the batch of ``-(1 - p_t)**gamma * log(p_t)``, ``p_t`` the true class's probability.

    ``logits`` (B, C) in any float dtype (computed in fp32 for stability under bf16 autocast);
    ``target`` (B,) class indices. ``gamma=0`` is plain cross-entropy.
    """
    if logits.dim() != 2:
        raise ValueError(f"focal_loss expects logits (B, C), got shape {tuple(logits.shape)}")
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.long().view(-1, 1)).squeeze(1)
    if gamma == 0:
        return -log_pt.mean()
    pt = log_pt.exp()
    return (-((1.0 - pt).clamp(min=0.0) ** gamma) * log_pt).mean()
