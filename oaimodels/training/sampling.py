"""The training sampler a config names: ``weighted`` (the recipe) or ``shuffle``.

``weighted`` is :class:`~oaimodels.data.WeightedEpochSampler`: draws with replacement, weights
1/class frequency, so every class is drawn about equally often. It also shifts the model's idea
of how common progression is (``oaimodels.evaluation.calibration`` explains and corrects that).
``shuffle`` takes every training knee once per epoch in a random order (the natural class
frequencies). Both draw epoch ``e`` from a stream seeded by ``(seed, e)`` (exact resume) and shard
it over ranks the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oaimodels.data import WeightedEpochSampler, derive_seed
from oaimodels.training.config import SAMPLERS, TrainingError


class ShuffleEpochSampler(WeightedEpochSampler):
    """Every knee once per epoch, in an order drawn from the epoch's own stream."""

    def epoch_indices(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, epoch, 0x5F1)).permutation(self.n)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kind": "shuffle"}


def make_sampler(kind: str, classes: np.ndarray, *, seed: int, rank: int, world_size: int) -> WeightedEpochSampler:
    if kind == "weighted":
        return WeightedEpochSampler(classes, seed=seed, rank=rank, world_size=world_size)
    if kind == "shuffle":
        return ShuffleEpochSampler(classes, seed=seed, rank=rank, world_size=world_size)
    raise TrainingError(f"sampler must be one of {', '.join(SAMPLERS)}, not {kind!r}")
