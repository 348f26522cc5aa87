"""Training loop, run folder, resume and DDP on a tiny learnable toy (3D CNN on 20x36x36 volumes)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from oaicohort.cohort.query import QueryProvenance
from oaicohort.cohort.splits import LeakageError
from oaimodels import run_folder as rf
from oaimodels.data import KneeTable
from oaimodels.training.checkpoint import load_checkpoint, load_fold_model
from oaimodels.training.config import TrainConfig, TrainingError, resolve_config
from oaimodels.training.losses import focal_loss
from oaimodels.training.recipe import lr_at, make_optimizer, make_scheduler
from oaimodels.training.run import train_run
from oaimodels.training.study import train_all
from tests.helpers.training import make_toy_cohort, populate_db, toy_model

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = {"volumes_per_s", "train_seconds", "data_wait_seconds", "seconds"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, pd.DataFrame]]:
    with toy_model():
        yield make_toy_cohort(tmp_path_factory.mktemp("toy"), n_subjects=20)


def toy_config(store: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(
        store=str(store), out=str(out), model="toy3d", epochs=3, batch_size=8, lr=3e-3,
        warmup_epochs=0, loader="resident", workers=0, device="cpu", threads=1, deterministic=True,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


# --------------------------------------------------------------------------- recipe pieces


def test_focal_loss_by_hand_and_gamma_zero_is_cross_entropy() -> None:
    logits = torch.zeros(1, 3)
    # p_t = 1/3: FL = -(1 - 1/3)^2 * log(1/3)
    assert float(focal_loss(logits, torch.tensor([0]))) == pytest.approx((2 / 3) ** 2 * math.log(3))
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(focal_loss(logits, target, gamma=0), torch.nn.functional.cross_entropy(logits, target))
    # focusing: confident correct knees weigh less than under cross-entropy
    assert float(focal_loss(logits, target)) < float(focal_loss(logits, target, gamma=0))


def test_warmup_then_constant_learning_rate() -> None:
    config = resolve_config(TrainConfig(store="s", out="o", device="cpu"))
    expected = [1e-5, 2.8e-5, 4.6e-5, 6.4e-5, 8.2e-5, 1e-4, 1e-4, 1e-4]
    assert [lr_at(e, config.schedule()) for e in range(8)] == pytest.approx(expected)
    model = torch.nn.Linear(2, 3)
    optimizer = make_optimizer(model, lr=config.schedule().lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config.schedule())
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(expected)
    assert optimizer.defaults["weight_decay"] == 1e-4


def test_paper_defaults_resolve_per_model() -> None:
    from oaimodels.training.config import resolve_config

    c = resolve_config(TrainConfig(store="s", out="o", model="2d_trf", device="cpu"))
    assert (c.batch_size, c.init, c.precision, c.view, c.epochs, c.lr) == (32, "imagenet", "fp32", "sag", 100, 1e-4)
    c = resolve_config(TrainConfig(store="s", out="o", model="3d_shufflenet", device="cpu"))
    assert (c.batch_size, c.init) == (64, "scratch")
    with pytest.raises(TrainingError, match="unknown model 'nope'"):
        resolve_config(TrainConfig(store="s", out="o", model="nope"))


# --------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def trained(toy: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    store, knees = toy
    out = tmp_path_factory.mktemp("run") / "toy_run"
    return train_run(toy_config(store, out, epochs=3), knees=knees)


def test_run_folder_layout(trained: Path, toy: tuple[Path, pd.DataFrame]) -> None:
    _, knees = toy
    saved = json.loads((trained / "config.json").read_text())
    assert saved["config"]["seed"] == 0 and saved["config"]["model"] == "toy3d"
    assert saved["folds"] == [0, 1]
    assert saved["layout"]["crop_shape"] == [16, 32, 32] and saved["layout"]["stored_shape"] == [20, 36, 36]
    env = json.loads((trained / "environment.json").read_text())
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"]
    assert env["device"] == "cpu"
    labels = json.loads((trained / "labels.json").read_text())
    assert labels["counts"]["test"]["knees"] == int((knees["role"] == "test").sum())
    assert len(pd.read_csv(trained / "knees.csv")) == len(knees)
    for fold in (0, 1):
        fdir = trained / f"fold_{fold}"
        log = rf.read_log(fdir / "log.jsonl")
        assert [r["epoch"] for r in log] == [0, 1, 2]
        assert {"train_loss", "val_loss", "val_ap", "val_roc_auc", "lr", "volumes_per_s", "seconds"} <= set(log[0])
        n_fold = int((knees["fold"] == fold).sum())
        assert all(r["n_val"] == n_fold for r in log)
        assert log[0]["n_train"] == int(((knees["role"] == "train") & (knees["fold"] != fold)).sum())
        val = pd.read_csv(fdir / "val_predictions.csv")
        assert len(val) == n_fold
        assert np.allclose(val[["p_none", "p_fast", "p_slow"]].sum(axis=1), 1.0)
        summary = json.loads((fdir / "summary.json").read_text())
        # best snapshot: highest validation AP, ties to the later epoch
        aps = [r["val_ap"] for r in log]
        assert summary["best_epoch"] == max(i for i, ap in enumerate(aps) if ap == max(aps))
        best = load_checkpoint(fdir / "best.pt")  # weights_only=True inside
        assert best["meta"]["epoch"] == summary["best_epoch"]
        # a finished fold's last.pt holds the final epoch's weights only: no resume state to carry
        last = torch.load(fdir / "last.pt", weights_only=True)
        assert last["meta"]["epoch"] == 2 and set(last) == {"model", "meta"}
        final, _ = load_fold_model(fdir / "last.pt")
        assert final.state_dict().keys() == load_fold_model(fdir / "best.pt")[0].state_dict().keys()
        assert not (fdir / rf.BEST_PENDING).exists()
    assert rf.is_run_complete(trained)


def test_best_checkpoint_rebuilds_the_model(trained: Path) -> None:
    with toy_model():
        model, meta = load_fold_model(trained / "fold_0" / "best.pt")
    x = {"sag": torch.zeros(2, 1, 16, 32, 32)}
    assert model(x).shape == (2, 3) and meta["fold"] == 0


def test_loss_decreases_on_a_learnable_toy(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    store, knees = toy
    run = train_run(toy_config(store, tmp_path / "r", epochs=8, folds=[0]), knees=knees)
    log = rf.read_log(run / "fold_0" / "log.jsonl")
    losses = [r["train_loss"] for r in log]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    prevalence = float((knees.loc[knees["fold"] == 0, "label"] != "none").mean())
    assert max(r["val_ap"] for r in log) > prevalence + 0.2


def test_training_crops_stay_inside_each_volumes_valid_extent(
    toy: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The knee table's valid extents (padded series, oaimodels.data.crops) reach every draw."""
    from oaimodels.data import EXTENT_COLUMNS
    from oaimodels.data.transforms import Crop

    store, knees = toy
    # stored (20, 36, 36), crop (16, 32, 32): a box that leaves room for one offset per axis
    boxed = knees.assign(**dict(zip(EXTENT_COLUMNS, (1, 17, 2, 34, 3, 35))))
    offsets: list[list[int]] = []
    original = Crop.draw

    def recording(self: Crop, *args: Any, **kw: Any) -> torch.Tensor:
        drawn = original(self, *args, **kw)
        if self.random:  # the training draws (validation crops at the centre)
            offsets.extend(drawn.tolist())
        return drawn

    monkeypatch.setattr(Crop, "draw", recording)
    run = train_run(toy_config(store, tmp_path / "r", epochs=1, folds=[0]), knees=boxed)
    assert offsets and {tuple(o) for o in offsets} == {(1, 2, 3)}
    saved = pd.read_csv(run / "knees.csv")
    assert saved[list(EXTENT_COLUMNS)].drop_duplicates().values.tolist() == [[1, 17, 2, 34, 3, 35]]


# --------------------------------------------------------------------------- refusals


def test_leakage_is_refused_before_anything_is_written(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    store, knees = toy
    leaky = knees.copy()
    test_subject = int(leaky.loc[leaky["role"] == "test", "subject_id"].iloc[0])
    first_train = leaky.index[leaky["role"] == "train"][0]
    leaky.loc[first_train, "subject_id"] = test_subject
    with pytest.raises(LeakageError, match=f"test-set subject.*{test_subject}"):
        train_run(toy_config(store, tmp_path / "leak"), knees=leaky)
    assert not (tmp_path / "leak").exists()


def test_existing_run_needs_resume_and_the_same_options(trained: Path, toy: tuple[Path, pd.DataFrame]) -> None:
    store, knees = toy
    with pytest.raises(TrainingError, match="already holds a training run; pass --resume"):
        train_run(toy_config(store, trained), knees=knees)
    with pytest.raises(TrainingError, match=r"option\(s\) \['seed'\] differ"):
        train_run(toy_config(store, trained, seed=1), knees=knees, resume=True)
    # same options: the finished run is left as it is
    before = (trained / "fold_0" / "summary.json").stat().st_mtime_ns
    train_run(toy_config(store, trained), knees=knees, resume=True)
    assert (trained / "fold_0" / "summary.json").stat().st_mtime_ns == before


def test_unknown_fold_is_refused(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    store, knees = toy
    with pytest.raises(TrainingError, match=r"fold\(s\) \[7\] not in the split"):
        train_run(toy_config(store, tmp_path / "r", folds=[7]), knees=knees)


def test_train_all_makes_one_run_per_model_and_skips_finished_ones(
    toy: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    store, knees = toy
    (tmp_path / "knees.csv").write_text(knees.to_csv(index=False))
    config = toy_config(store, tmp_path / "study", epochs=1, folds=[0])
    with pytest.MonkeyPatch.context() as mp:
        # train_all reads labels from the database; hand it the toy knees instead
        import oaimodels.training.run as T

        table = KneeTable(knees, QueryProvenance(1, "toy", "h", 1, None), len(knees), 0)
        mp.setattr(T, "knee_table", lambda *a, **k: table)
        runs = train_all(config, db=object(), models=["toy3d"])
        assert [r.name for r in runs] == ["toy3d_scratch"]
        stamp = (runs[0] / "fold_0" / "summary.json").stat().st_mtime_ns
        assert train_all(config, db=object(), models=["toy3d"]) == runs  # finished: skipped
        assert (runs[0] / "fold_0" / "summary.json").stat().st_mtime_ns == stamp
        # an unfinished run is only continued on request
        (runs[0] / "fold_0" / "summary.json").unlink()
        with pytest.raises(TrainingError, match="pass --resume"):
            train_all(config, db=object(), models=["toy3d"])
        train_all(config, db=object(), models=["toy3d"], resume=True)
        assert rf.is_run_complete(runs[0])


# --------------------------------------------------------------------------- resume after SIGKILL


SCRIPT = """
import sys
import pandas as pd
from tests.helpers.training import register_toy_model
register_toy_model()  # at import: spawned DDP workers re-import this file
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run

if __name__ == "__main__":
    store, out, knees_csv, epochs, nproc = sys.argv[1:6]
    knees = pd.read_csv(knees_csv)
    config = TrainConfig(store=store, out=out, model="toy3d", epochs=int(epochs), batch_size=8, lr=3e-3,
                         warmup_epochs=2, loader="workers" if int(nproc) == 1 else "resident", workers=0,
                         device="cpu", threads=1, deterministic=True, nproc=int(nproc))
    train_run(config, knees=knees, resume="--resume" in sys.argv)
"""


def _script(tmp_path: Path, knees: pd.DataFrame) -> tuple[Path, Path]:
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT)
    knees_csv = tmp_path / "knees.csv"
    knees.to_csv(knees_csv, index=False)
    return script, knees_csv


def _run_script(script: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        env=env,
        check=check,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_resume_after_sigkill_ends_like_an_uninterrupted_run(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    store, knees = toy
    script, knees_csv = _script(tmp_path, knees)
    full, killed = tmp_path / "full", tmp_path / "killed"
    # the same config as SCRIPT's; the uninterrupted baseline and the resume run in this process
    config = toy_config(store, full, epochs=6, warmup_epochs=2, loader="workers")

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store), str(killed), str(knees_csv), "6", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The uninterrupted baseline runs after the kill, not meanwhile: racing it against the
    # subprocess's fold 0 depended on the machine's load.
    log_path = killed / "fold_0" / "log.jsonl"
    deadline = time.monotonic() + 240
    try:
        while len(rf.read_log(log_path)) < 2:  # kill in the middle of fold 0 (epoch 2 or later)
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not rf.is_run_complete(killed)
    epochs_before = len(rf.read_log(log_path))

    train_run(config, knees=knees)
    train_run(dataclasses.replace(config, out=str(killed)), knees=knees, resume=True)
    assert rf.is_run_complete(killed) and epochs_before < 6
    for fold in (0, 1):
        a, b = full / f"fold_{fold}", killed / f"fold_{fold}"
        assert _strip_timing(rf.read_log(a / "log.jsonl")) == _strip_timing(rf.read_log(b / "log.jsonl"))
        sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
        assert (sa["best_epoch"], sa["best_val_ap"]) == (sb["best_epoch"], sb["best_val_ap"])
        wa, wb = load_checkpoint(a / "best.pt")["model"], load_checkpoint(b / "best.pt")["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert pd.read_csv(a / "val_predictions.csv").equals(pd.read_csv(b / "val_predictions.csv"))


@pytest.mark.slow
def test_ddp_with_gloo_on_two_processes(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    store, knees = toy
    script, knees_csv = _script(tmp_path, knees)
    out = tmp_path / "ddp"
    result = _run_script(script, str(store), str(out), str(knees_csv), "2", "2", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rf.is_run_complete(out)
    for fold in (0, 1):
        log = rf.read_log(out / f"fold_{fold}" / "log.jsonl")
        n_train = int(((knees["role"] == "train") & (knees["fold"] != fold)).sum())
        assert len(log) == 2
        assert log[0]["n_train"] == n_train + n_train % 2  # both shards, padded to equal length
        assert log[0]["n_val"] == int((knees["fold"] == fold).sum())  # gathered from both ranks
        assert np.isfinite(log[-1]["train_loss"])
    # only rank 0 wrote: no stray temporary files of another process
    assert not list(out.rglob(".*.tmp*"))


# --------------------------------------------------------------------------- CLI with a database


def test_cli_train_then_eval_from_the_database(toy: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    from oaicli.main import app
    from oaicohort.db import open_database

    store, knees = toy
    db_path = tmp_path / "cohort.sqlite"
    db = open_database(db_path)
    split_id = populate_db(db, store, knees)
    db.dispose()
    runner = CliRunner()
    out = tmp_path / "cli_run"
    with toy_model():
        result = runner.invoke(app, [
            "--db", str(db_path), "train", "--store", str(store), "--model", "toy3d", "--out", str(out),
            "--epochs", "2", "--folds", "0,1", "--device", "cpu", "--workers", "0", "--loader", "workers",
            "--deterministic", "--json",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert [f["fold"] for f in summary["runs"][0]["folds"]] == [0, 1]
        labels = json.loads((out / "labels.json").read_text())
        assert labels["split"]["id"] == split_id and labels["definition"]["name"] == "panfilov2022"
        assert labels["knees_without_volume"] == 0

        result = runner.invoke(
            app,
            ["--db", str(db_path), "eval", str(out), "--json", "--resamples", "50", "--no-latency", "--device", "cpu"],
        )
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout)
    for key in ("ap", "ap_sd", "roc_auc", "roc_auc_sd", "balanced_accuracy", "n_knees", "prevalence"):
        assert key in metrics
    assert metrics["n_knees"] == int((knees["role"] == "test").sum())
    assert metrics["labels_match_database"] is True

    result = runner.invoke(
        app,
        ["--db", str(db_path), "train", "--store", str(store), "--model", "toy3d", "--out", str(out), "--folds", "0,x"],
    )
    assert result.exit_code == 2 and "--folds" in result.output
