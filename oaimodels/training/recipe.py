"""The paper's training recipe (REFERENCE.md section 5): model, optimiser, schedule and loss.

Adam (lr 1e-4, weight decay 1e-4); the learning rate rises linearly from 1e-5 over the first
5 epochs (stepped once per epoch), then stays constant; focal loss with gamma 2 and no class
weights (``losses.focal_loss``). The values are ``RECIPE_DEFAULTS`` and
:class:`~oaimodels.training.config.TrainConfig` defaults; a model's registry recipe replaces them
(the X-ray prior art). Each function takes the values it uses, not the config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from oaimodels.data import InputLayout
from oaimodels.networks import get_model, get_spec
from oaimodels.training.config import Schedule, TrainingError


def lr_at(epoch: int, s: Schedule) -> float:
    """Learning rate of ``epoch`` (0-based): linear from warmup_start_lr to lr over warmup_epochs,
    times gamma for every milestone reached."""
    decay = s.gamma ** sum(epoch >= m for m in s.milestones)
    if s.warmup_epochs <= 0 or epoch >= s.warmup_epochs:
        return s.lr * decay
    return (s.warmup_start_lr + (s.lr - s.warmup_start_lr) * epoch / s.warmup_epochs) * decay


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch warm-up then constant (stepped once after every epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_at(e, schedule) / schedule.lr)


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def build_model(layout: InputLayout, init: str) -> nn.Module:
    """The registry model for ``layout``'s input shapes (and view, for 2D+TRF)."""
    kwargs: dict[str, Any] = {"input_shapes": layout.input_shapes(), "init": init}
    if get_spec(layout.model).view_choices:
        kwargs["view"] = layout.source_view
    try:
        return get_model(layout.model, **kwargs)
    except ValueError as exc:
        raise TrainingError(f"cannot build {layout.model}: {exc}") from None
