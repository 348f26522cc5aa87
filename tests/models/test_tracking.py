"""Experiment tracking: TensorBoard event files per fold (and training without tensorboard),
MLflow on a file store (and against a stand-in module), run titles."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pandas as pd
import pytest
import torch

from oaimodels import run_folder as rf
from oaimodels.training import tracking
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run
from tests.helpers.training import make_toy_cohort, toy_model

SCALAR_KEYS = {"loss/train": "train_loss", "loss/val": "val_loss", "val/ap": "val_ap", "val/roc_auc": "val_roc_auc"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, pd.DataFrame]]:
    with toy_model():
        yield make_toy_cohort(tmp_path_factory.mktemp("toy"), n_subjects=16)


def _config(store: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(
        store=str(store), out=str(out), model="toy3d", epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0,
        loader="resident", workers=0, device="cpu", threads=1, deterministic=True,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _weights(run: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {k: torch.load(p / rf.BEST, weights_only=True)["model"] for k, p in rf.fold_dirs(run).items()}


def _events(fold_path: Path) -> list[Path]:
    return sorted(fold_path.glob("events.out.tfevents.*"))


def test_tensorboard_events_per_fold_and_training_without_tensorboard(
    toy: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the 'tracking' extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store, knees = toy
    with toy_model():
        tracked = train_run(_config(store, tmp_path / "tracked"), knees=knees)
    for fold_path in rf.fold_dirs(tracked).values():
        assert len(_events(fold_path)) == 1, "event files belong next to log.jsonl"
        acc = EventAccumulator(str(fold_path))
        acc.Reload()
        log = rf.read_log(fold_path / rf.LOG)
        assert set(tracking.SCALARS.values()) <= set(acc.Tags()["scalars"])
        for tag, key in {**SCALAR_KEYS, "lr": "lr", "throughput/volumes_per_s": "volumes_per_s"}.items():
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [r["epoch"] for r in log]
            assert [e.value for e in events] == pytest.approx([r[key] for r in log], rel=1e-6)

    # without the tensorboard package: the same run, no event files, one warning saying how
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(tracking, "_said_tensorboard_off", False)
    caplog.set_level(logging.WARNING, logger="oaimodels.training.tracking")
    with toy_model():
        untracked = train_run(_config(store, tmp_path / "untracked"), knees=knees)
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard logs are off" in r.getMessage()]
    assert len(warnings) == 1 and "pip install" in warnings[0]
    assert not any(_events(p) for p in rf.fold_dirs(untracked).values())
    # tracking changes nothing that is computed: the weights are bit-identical
    a, b = _weights(tracked), _weights(untracked)
    assert a.keys() == b.keys() == {0, 1}
    assert all(torch.equal(a[k][n], b[k][n]) for k in a for n in a[k])
    for fold in a:
        strip = [
            {k: v for k, v in r.items() if k in SCALAR_KEYS.values()}
            for r in rf.read_log(tracked / f"fold_{fold}" / rf.LOG)
        ]
        again = [
            {k: v for k, v in r.items() if k in SCALAR_KEYS.values()}
            for r in rf.read_log(untracked / f"fold_{fold}" / rf.LOG)
        ]
        assert strip == again


def test_mlflow_file_store(toy: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="--track mlflow needs the 'mlflow' extra")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store, knees = toy
    uri = tmp_path / "mlruns"
    config = _config(
        store, tmp_path / "run", track="mlflow", tracking_uri=str(uri), tensorboard=False, name="toy baseline",
        tags={"purpose": "test"}, experiment="toy-exp",
    )  # fmt: skip
    with toy_model():
        run_dir = train_run(config, knees=knees)
    record = rf.read_json(run_dir / tracking.MLFLOW_RUN)
    assert record["tracking_uri"] == uri.resolve().as_uri()
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "toy-exp"
    assert run.data.tags["mlflow.runName"] == "toy baseline"
    assert (run.data.tags["purpose"], run.data.tags["model"], run.data.tags["init"]) == ("test", "toy3d", "scratch")
    assert float(run.data.params["lr"]) == 3e-3 and run.data.params["sampler"] == "weighted"
    assert run.data.params["augment.rotate_p"] == "0.5"
    for fold in (0, 1):
        log = rf.read_log(run_dir / f"fold_{fold}" / rf.LOG)
        history = client.get_metric_history(run.info.run_id, f"fold{fold}/val_ap")
        assert [m.step for m in history] == [0, 1]
        assert [m.value for m in history] == pytest.approx([r["val_ap"] for r in log])
        summary = rf.read_json(run_dir / f"fold_{fold}" / rf.SUMMARY)
        assert run.data.metrics[f"fold{fold}/best_val_ap"] == pytest.approx(summary["best_val_ap"])


class _FakeClient:
    """Records the MlflowClient calls the tracker makes (the documented client API)."""

    calls: ClassVar[list[tuple]] = []

    def __init__(self, tracking_uri: str) -> None:
        self.calls.append(("init", tracking_uri))

    def get_experiment_by_name(self, name: str) -> None:
        return None

    def create_experiment(self, name: str) -> str:
        self.calls.append(("create_experiment", name))
        return "7"

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> Any:
        self.calls.append(("create_run", experiment_id, run_name, tags))
        return SimpleNamespace(info=SimpleNamespace(run_id="run-1"))

    def log_param(self, run_id: str, key: str, value: str) -> None:
        self.calls.append(("param", run_id, key, value))

    def log_metric(self, run_id: str, key: str, value: float, step: int | None = None) -> None:
        self.calls.append(("metric", run_id, key, value, step))

    def set_terminated(self, run_id: str, status: str) -> None:
        self.calls.append(("terminated", run_id, status))


def test_mlflow_tracker_against_a_stand_in_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracker's MLflow calls, without the mlflow package (it is an optional extra)."""
    fake = types.ModuleType("mlflow")
    fake_tracking = types.ModuleType("mlflow.tracking")
    fake_tracking.MlflowClient = _FakeClient  # type: ignore[attr-defined]
    fake.tracking = fake_tracking  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", fake_tracking)
    _FakeClient.calls = []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rf.write_json(run_dir / rf.CONFIG, {"folds": [0]})
    config = TrainConfig(
        store="s", out=str(run_dir), model="3d_shufflenet", init="scratch", track="mlflow", lr=1e-4,
        tracking_uri="http://tracking.example:5000", tensorboard=False, tags={"site": "D"},
    )  # fmt: skip
    options = tracking.tracking_options(config, run_dir)
    tracker = tracking.open_fold_tracker(options, 0, 0, main=True)
    tracker.epoch({"epoch": 0, "train_loss": 0.5, "val_ap": 0.25, "val_roc_auc": float("nan"), "lr": 1e-4})
    (run_dir / "fold_0").mkdir()
    rf.write_json(run_dir / "fold_0" / rf.SUMMARY, {"fold": 0})
    tracker.finish({"best_val_ap": 0.25, "best_epoch": 0}, run_dir)
    calls = _FakeClient.calls
    assert calls[0] == ("init", "http://tracking.example:5000")
    assert ("create_experiment", "oai") in calls
    create = next(c for c in calls if c[0] == "create_run")
    assert create[2] == "3d_shufflenet, scratch"
    assert create[3]["site"] == "D" and create[3]["model"] == "3d_shufflenet"
    assert ("param", "run-1", "lr", "0.0001") in calls
    metrics = [c for c in calls if c[0] == "metric"]
    assert ("metric", "run-1", "fold0/val_ap", 0.25, 0) in metrics
    assert not any(c[2] == "fold0/val_roc_auc" for c in metrics), "NaN is not logged"
    assert ("metric", "run-1", "fold0/best_val_ap", 0.25, None) in metrics
    assert calls[-1] == ("terminated", "run-1", "FINISHED")
    # a resumed run continues the same MLflow run
    _FakeClient.calls = []
    tracking.open_fold_tracker(options, 0, 1, main=True)
    assert not any(c[0] in ("create_run", "create_experiment") for c in _FakeClient.calls)
    assert not tracking.open_fold_tracker(options, 0, 0, main=False).sinks


def test_run_titles() -> None:
    assert (
        tracking.describe_run("2d_trf", "sag", "imagenet", test_site="D", n=120)
        == "2d_trf sag, imagenet; test site D, n=120"
    )
    assert tracking.describe_run("3d_shufflenet", None, "scratch") == "3d_shufflenet, scratch"
    assert tracking.describe_run("3d_shufflenet", None, "scratch", n=5, name="baseline") == "baseline; n=5"
    assert tracking.resolve_tracking_uri("http://host:5000") == "http://host:5000"
    assert tracking.resolve_tracking_uri("rel/mlruns") == (Path.cwd() / "rel/mlruns").resolve().as_uri()


def test_track_mlflow_without_mlflow_stops_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oaimodels.training.config import TrainingError, resolve_config

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        TrainingError, match=r"--track mlflow needs the mlflow package: pip install 'oai-toolkit\[mlflow\]'"
    ):
        resolve_config(TrainConfig(store="s", out=str(tmp_path / "run"), model="3d_shufflenet", track="mlflow"))
    with pytest.raises(TrainingError, match="track must be mlflow"):
        resolve_config(TrainConfig(store="s", out="o", model="3d_shufflenet", track="wandb"))
    assert not (tmp_path / "run").exists()
