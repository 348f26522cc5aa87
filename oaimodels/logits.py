"""Applying a model to volumes: the mixed-precision context and batched prediction.

Shared by the training loop (validation after every epoch) and evaluation, so that evaluation
depends on neither the loop nor the optimiser recipe.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from oaicohort.vocabulary import CLASSES
from oaimodels.data import BatchPreparer, VolumeSource, batches_of


def amp_context(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else no change (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    source: VolumeSource,
    items: np.ndarray,
    preparer: BatchPreparer,
    *,
    batch_size: int,
    precision: str = "fp32",
) -> np.ndarray:
    """fp32 logits (len(items), 3) of ``model`` (eval mode) on centre-cropped volumes."""
    was_training = model.training
    model.eval()
    out = []
    batches = batches_of(np.asarray(items), batch_size) if len(items) else []
    try:
        for volumes in source.iterate(batches):
            with amp_context(source.device, precision):
                logits = model(preparer.eval_inputs(volumes))
            out.append(logits.float())  # kept on the device: one copy to the host at the end
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, len(CLASSES)), dtype=np.float32)
    return torch.cat(out).cpu().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
