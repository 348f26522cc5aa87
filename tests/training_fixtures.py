"""Tiny volume stores with a learnable signal, for the data/training/evaluation tests.

Volumes are 20x20x20 (sagittal) with a 16^3 training crop: 3D ShuffleNet trains on them in
milliseconds. Progressing knees (fast or slow) carry a bright cube in the middle of the volume,
non-progressors a single bright voxel in a corner (so that per-volume [0, 1] scaling cannot
erase the difference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from oaicohort.preprocessing import PreprocessParams
from oaicohort.volume_store import VolumeStore, knee_key

TEST_PARAMS = dict(
    preset="test",
    margin=0,
    inplane_size=(40, 40),
    n_slices=40,
    sag_crop=(16, 16, 16),
    reprojection_crop=(8, 16, 16),
)


def toy_params() -> PreprocessParams:
    return PreprocessParams(**TEST_PARAMS)


def toy_volume(shape: tuple[int, ...], progressor: bool, rng: np.random.Generator) -> np.ndarray:
    vol = rng.integers(0, 100, size=shape, dtype=np.int64)
    if progressor:
        c = [n // 2 for n in shape]
        vol[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] = 250
    else:
        vol[0, 0, 0] = 250
    return vol.astype(np.uint8)


def make_toy_cohort(
    root: Path,
    *,
    n_subjects: int = 20,
    folds: int = 2,
    test_fraction: float = 0.3,
    views: tuple[str, ...] = ("sag",),
    seed: int = 0,
) -> tuple[Path, pd.DataFrame]:
    """A store of two knees per subject and the knee table (labels, role, fold, position)."""
    rng = np.random.default_rng(seed)
    store_path = root / "toy.zarr"
    store = VolumeStore.create(store_path, toy_params(), views=views)
    rows = []
    n_test = max(1, int(round(n_subjects * test_fraction)))
    for s in range(n_subjects):
        subject_id = 9000000 + s
        role = "test" if s < n_test else "train"
        fold = None if role == "test" else (s - n_test) % folds
        for side in ("R", "L"):
            knee_id = len(rows) + 1
            # about 40% progressors, both classes in every fold and in the test set
            label = ["none", "fast", "none", "slow", "none"][(s + (side == "L")) % 5]
            position = len(rows)
            for view in views:
                vol = toy_volume(store.volume_shape(view), label != "none", rng)
                store.write(view, position, vol, key=knee_key(subject_id, side), visit=0)
            rows.append(
                dict(
                    knee_id=knee_id,
                    subject_id=subject_id,
                    side=side,
                    label=label,
                    role=role,
                    fold=fold,
                    position=position,
                )
            )
    knees = pd.DataFrame(rows)
    knees["fold"] = knees["fold"].astype("Int64")
    return store_path, knees
