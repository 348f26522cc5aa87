"""Global RNG state: reseeding per epoch, and capture/restore for exact resume.

The captured state holds only tensors and plain numbers, so a checkpoint that contains it
still loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch's, numpy's and python's global generators (dropout and anything else global)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states as weights_only-loadable values."""
    legacy = np.random.get_state(legacy=True)
    if not isinstance(legacy, tuple):  # only a non-MT19937 generator gives the dict form
        raise TypeError(f"numpy's global generator is not MT19937: {legacy.get('bit_generator')!r}")
    _, keys, pos, has_gauss, gauss = legacy
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    keys, version = state["python"]
    random.setstate((version, tuple(keys), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
