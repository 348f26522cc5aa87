"""Two toy models and a small cohort for the launcher tests (local submitit jobs and SLURM): each
job, a fresh interpreter, imports this module through ``SETUP`` to register the models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from oaicohort.db import open_database
from oaimodels.networks import registry
from tests.helpers.training import ToyVolumeNet, make_toy_cohort, populate_db, register_toy_model, toy_model

SETUP = ("tests.helpers.launcher:register_models",)
MODELS = ["toy3d", "toy3d_narrow"]


def register_models() -> None:
    """toy3d and a narrower twin: two models for a study (each job calls this before it trains)."""
    register_toy_model()
    if "toy3d_narrow" in registry._REGISTRY:
        return
    spec = registry._REGISTRY["toy3d"]
    registry.register_model(
        "toy3d_narrow",
        family="test",
        summary="narrower tiny 3D CNN for tests",
        views=spec.views,
        input_shapes=spec.input_shapes,
        small_shapes=spec.small_shapes,
        paper=spec.paper,
        batch_size=8,
        imagenet_encoder=False,
    )(lambda **kw: ToyVolumeNet(width=4))


@contextmanager
def launch_cohort(root: Path) -> Iterator[tuple[Path, Path, pd.DataFrame]]:
    """The two models registered, a 20-subject toy store and its database: (store, database, knees)."""
    with toy_model():
        register_models()
        store, knees = make_toy_cohort(root, n_subjects=20)
        db_path = root / "cohort.sqlite"
        db = open_database(db_path)
        populate_db(db, store, knees)
        db.dispose()
        try:
            yield store, db_path, knees
        finally:
            registry._REGISTRY.pop("toy3d_narrow", None)
