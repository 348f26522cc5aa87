"""The CUDA path: bf16 autocast training, resident loading into device memory, ``--device cuda``.

Marked ``gpu``; they run where CUDA is present (``pytest -m gpu``, and ``benchmarks/gpu_check.sh``
on a lent GPU machine) and are skipped, with the reason, everywhere else. On a machine without
CUDA, ``--device cuda`` must be refused with a clear message: the last test checks that.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from oaicohort.imaging.store.volume_store import VolumeStore
from oaimodels.data import AugmentParams, BatchPreparer, make_source, resolve_layout
from oaimodels.logits import amp_context
from oaimodels.training.config import TrainConfig, TrainingError, resolve_config, resolve_device
from oaimodels.training.losses import focal_loss
from oaimodels.training.recipe import build_model, make_optimizer
from oaimodels.training.run import train_run
from tests.helpers.training import make_toy_cohort, populate_db, toy_model

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, pd.DataFrame]]:
    with toy_model():
        yield make_toy_cohort(tmp_path_factory.mktemp("toy_gpu"), n_subjects=12)


@pytest.mark.gpu
@needs_cuda
def test_bf16_autocast_training_step(toy: tuple[Path, pd.DataFrame]) -> None:
    store, knees = toy
    device = torch.device("cuda")
    config = resolve_config(TrainConfig(store=str(store), out="unused", model="toy3d", device="cuda", lr=1e-2))
    assert config.precision == "bf16" and config.channels_last  # the CUDA defaults
    layout = resolve_layout("toy3d", None, VolumeStore.open(store), None)
    torch.manual_seed(0)
    model = build_model(layout, "scratch").to(device)
    optimizer = make_optimizer(model, lr=config.schedule().lr, weight_decay=config.weight_decay)
    source = make_source("resident", VolumeStore.open(store), "sag", knees["position"].to_numpy(), device)
    preparer = BatchPreparer(layout, AugmentParams())
    y = torch.as_tensor(knees["label"].map({"none": 0, "fast": 1, "slow": 2}).to_numpy()[:8], device=device)
    (volumes,) = source.iterate([np.arange(8)])
    before = [p.detach().clone() for p in model.parameters()]
    with amp_context(device, "bf16"):
        logits = model(preparer.train_inputs(volumes, torch.Generator().manual_seed(0)))
    assert logits.dtype == torch.bfloat16  # autocast ran the model in bf16
    loss = focal_loss(logits, y, gamma=config.focal_gamma)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    source.close()


@pytest.mark.gpu
@needs_cuda
def test_resident_store_loading_on_the_gpu(toy: tuple[Path, pd.DataFrame]) -> None:
    store, knees = toy
    positions = knees["position"].to_numpy()[::-1].copy()  # any order of store slots
    source = make_source("resident", VolumeStore.open(store), "sag", positions, torch.device("cuda"))
    batches = [np.array([0, 3, 5]), np.array([len(positions) - 1])]
    got = list(source.iterate(batches))
    volumes = VolumeStore.open(store)
    for batch, tensor in zip(batches, got):
        assert tensor.is_cuda and tensor.dtype == torch.uint8
        for row, item in zip(tensor.cpu().numpy(), batch):
            assert np.array_equal(row, volumes.read("sag", int(positions[item])))
    source.close()


@pytest.mark.gpu
@needs_cuda
def test_cli_train_accepts_device_cuda(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    from oaicli.main import app
    from oaicohort.db import open_database

    store, knees = toy
    db_path = tmp_path / "cohort.sqlite"
    db = open_database(db_path)
    populate_db(db, store, knees)
    db.dispose()
    out = tmp_path / "cuda_run"
    with toy_model():
        result = CliRunner().invoke(app, [
            "--db", str(db_path), "train", "--store", str(store), "--model", "toy3d", "--out", str(out),
            "--epochs", "1", "--folds", "0", "--device", "cuda", "--workers", "0", "--json",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["device"].startswith("cuda") and saved["precision"] == "bf16"
    assert json.loads((out / "environment.json").read_text())["device"].startswith("cuda")
    assert (out / "fold_0" / "best.pt").is_file()


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_refused(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="--device cuda requested but no CUDA device is available"):
        resolve_device("cuda")
    store, knees = toy
    with toy_model(), pytest.raises(TrainingError, match="no CUDA device"):
        train_run(TrainConfig(store=str(store), out=str(tmp_path / "r"), model="toy3d", device="cuda"), knees=knees)
    assert not (tmp_path / "r").exists()
