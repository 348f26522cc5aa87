"""Tiny volume stores with a learnable signal, for the data/training/evaluation tests.

Sagittal volumes are 20x36x36 with a 16x32x32 training crop (the smallest 3D ShuffleNet takes): 3D ShuffleNet trains on them in
milliseconds. Progressing knees (fast or slow) carry a bright cube in the middle of the volume,
non-progressors a single bright voxel in a corner (so that per-volume [0, 1] scaling cannot
erase the difference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaimodels.networks import registry

if TYPE_CHECKING:
    from oaicohort.db import Database

TOY_MODEL = "toy3d"

TEST_PARAMS = dict(
    preset="test",
    margin=0,
    inplane_size=(72, 72),
    n_slices=40,
    sag_crop=(16, 32, 32),
    reprojection_crop=(16, 32, 32),
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


class ToyVolumeNet(nn.Module):
    """Two strided 3D convs, BatchNorm and dropout: trains in milliseconds, yet has every kind of
    state a real model has (BN running statistics, dropout randomness)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool3d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(width, 3))

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(x["sag"]))


def _build_toy(*, input_shapes: Mapping[str, Sequence[int]] | None = None, init: str = "scratch") -> nn.Module:
    if init != "scratch":
        raise ValueError("toy3d has no ImageNet encoder; init must be 'scratch'")
    return ToyVolumeNet()


def register_test_model(
    name: str, summary: str, sag_shape: tuple[int, int, int, int], build: Callable[..., nn.Module]
) -> None:
    """Register a sagittal test model ``name`` built by ``build`` (idempotent): no paper numbers,
    no ImageNet encoder, batch 8, ``sag_shape`` as both its paper and its small input."""
    if name in registry._REGISTRY:
        return
    row = registry.PaperRow(
        views=("sag",), params_m=0.0, gmacs=0.0, ap=0.0, ap_sd=0.0, auc=0.0, auc_sd=0.0, latency_ms=0.0
    )
    registry.register_model(
        name,
        family="test",
        summary=summary,
        views=("sag",),
        input_shapes={"sag": sag_shape},
        small_shapes={"sag": sag_shape},
        paper=(row,),
        batch_size=8,
        imagenet_encoder=False,
    )(build)


def register_toy_model() -> None:
    """Register ``toy3d`` in the model registry (idempotent); see :func:`toy_model`."""
    register_test_model(TOY_MODEL, "tiny 3D CNN for tests", (1, 16, 32, 32), _build_toy)


@contextmanager
def toy_model() -> Iterator[str]:
    """``toy3d`` registered for the duration (removed after, so registry-wide tests never see it).

    Re-entrant: only the outermost use removes it.
    """
    outermost = TOY_MODEL not in registry._REGISTRY
    register_toy_model()
    try:
        yield TOY_MODEL
    finally:
        if outermost:
            registry._REGISTRY.pop(TOY_MODEL, None)


def populate_db(db: Database, store_path: Path, knees: pd.DataFrame, *, test_site: str = "D") -> int:
    """Write the toy cohort into a database as ingest + label + split + preprocess would.

    Rows go in directly through the schema models (the label and split algorithms have their own
    tests); returns the split id.
    """
    from oaicohort.cohort.labels import labels_fingerprint
    from oaicohort.db.schema import (
        Knee,
        KneeLabel,
        LabelDefinition,
        Split,
        SplitAssignment,
        Subject,
        Volume,
    )  # fmt: skip
    from oaicohort.db.stores import store_id_at

    labels = knees.assign(exclusion=None)
    with db.write() as session:
        for subject_id, group in knees.groupby("subject_id"):
            site = test_site if (group["role"] == "test").all() else "A"
            session.add(Subject(id=int(subject_id), site=site, sex="F"))
        session.flush()
        for row in knees.itertuples():
            session.add(Knee(id=int(row.knee_id), subject_id=int(row.subject_id), side=row.side))
        definition = LabelDefinition(name="panfilov2022", params={}, params_hash="toy")
        session.add(definition)
        session.flush()
        split = Split(
            definition_id=definition.id,
            params={"labels_hash": labels_fingerprint(labels), "test_sites": [test_site]},
            params_hash="toy-split",
        )
        session.add(split)
        session.flush()
        store = store_id_at(session, store_path)
        for row in knees.itertuples():
            session.add(KneeLabel(definition_id=definition.id, knee_id=int(row.knee_id), label=row.label))
            fold = None if pd.isna(row.fold) else int(row.fold)
            session.add(SplitAssignment(split_id=split.id, knee_id=int(row.knee_id), role=row.role, fold=fold))
            session.add(
                Volume(
                    knee_id=int(row.knee_id),
                    visit=0,
                    view="sag",
                    store_id=store,
                    params_hash="toy",
                    array_path="sag",
                    position=int(row.position),
                    status="ok",
                )
            )
        return int(split.id)
