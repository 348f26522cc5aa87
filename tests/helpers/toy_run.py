"""A trained toy run (2 folds, 2 epochs) and its store, as the integrity tests share it: the
session fixture ``toy_run`` (tests/integrity/conftest.py) trains one; tests change copies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class ToyRun:
    """A trained toy run (2 folds, 2 epochs) and its store: read-only, tests change copies."""

    run: Path
    store: Path
    knees: pd.DataFrame


TOY_LABELS = {
    "definition": {"name": "panfilov2022", "id": 1, "params_hash": "toydef"},
    "split": {"id": 1, "params": {"test_sites": ["D"], "folds": 2, "seed": 0, "labels_hash": "toy"}},
}


def train_toy_run(
    root: Path, store: Path, knees: pd.DataFrame, *, seed: int = 0, labels: dict | None = None, resume: bool = False
) -> Path:
    from oaimodels.training.config import TrainConfig
    from oaimodels.training.run import train_run
    from tests.helpers.training import toy_model

    with toy_model():
        config = TrainConfig(
            store=str(store), out=str(root), model="toy3d", epochs=2, batch_size=4,
            lr=3e-3, warmup_epochs=0, seed=seed, loader="resident", workers=0, device="cpu",
        )  # fmt: skip
        return train_run(config, knees=knees, labels_info=labels or TOY_LABELS, resume=resume)


def copy_toy_run(toy: ToyRun, where: Path) -> ToyRun:
    """A copy of the run and its store under ``where``, the copy's config.json pointing at the
    copied store (edited as a user moving both would: the config hash field is left as it was)."""
    import json
    import shutil

    run, store = where / toy.run.name, where / toy.store.name
    shutil.copytree(toy.run, run)
    shutil.copytree(toy.store, store)
    config = json.loads((run / "config.json").read_text())
    config["config"]["store"] = config["store"]["path"] = str(store)
    config["config"]["out"] = str(run)
    (run / "config.json").write_text(json.dumps(config, indent=2))
    return ToyRun(run, store, toy.knees)
