"""The recipe's training augmentations as settings (:class:`AugmentParams`), and the seeds of
their random draws: a CPU generator per (seed, fold, epoch, rank), so a run is reproducible on
any device and a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. seed, fold, epoch, rank), stable across runs."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)
    return int(state[0] & np.uint64(2**63 - 1))


def cpu_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


@dataclass(frozen=True)
class AugmentParams:
    """The recipe's training augmentations (REFERENCE.md section 5); ``none()`` disables them."""

    random_crop: bool = True
    rotate_p: float = 0.5
    max_rotation_deg: float = 15.0
    gamma_p: float = 0.5
    gamma_low: float = 0.5
    gamma_high: float = 2.0

    @classmethod
    def none(cls) -> AugmentParams:
        return cls(random_crop=False, rotate_p=0.0, gamma_p=0.0)
