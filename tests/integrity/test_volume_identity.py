"""Class 9: a volume's identity travels with the run.

``knees.csv`` records per knee the checksum of the volume the run was trained or tested on.
``oai eval``, ``oai explain`` and ``oai predict`` follow each knee to the slot that holds that
volume (a store rebuilt in another slot order scores exactly as before) and refuse a store whose
volume for a knee changed, naming it. ``run_hash`` covers ``config.json``, and a config.json
that no longer matches the weights (edited, or weights of another run) is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.imaging.store.volume_store import VolumeStore
from oaimodels.evaluation.held_out import evaluate_runs
from oaimodels.inference.predict import predict
from oaimodels.inference.trained_run import TrainedRun
from oaimodels.run_volumes import VolumeIdentityError
from oaimodels.training.checkpoint import CheckpointError
from tests.helpers.toy_run import ToyRun, copy_toy_run, train_toy_run
from tests.helpers.training import toy_model


def _oai(*args: str) -> tuple[int, str]:
    with toy_model():
        result = CliRunner().invoke(app, list(args))
    output = " ".join(result.output.split())
    assert "Traceback" not in result.output and "unexpected error" not in output, output
    return result.exit_code, output


def rebuild_reordered(store: Path, *, change: tuple[int, str] | None = None, seed: int = 0) -> None:
    """The store made again with the same parameters and volumes in another slot order (and,
    with ``change``, one knee's volume different by one voxel)."""
    old = VolumeStore.open(store)
    keys, visits = old.knee_keys("sag"), old.visits("sag")
    used = [int(p) for p in np.flatnonzero(keys >= 0)]
    volumes = {p: old.read("sag", p) for p in used}
    params = old.params
    shutil.rmtree(store)
    new = VolumeStore.create(store, params, views=("sag",))
    order = np.random.default_rng(seed).permutation(len(used))
    for slot, i in enumerate(order):
        p = used[int(i)]
        volume = volumes[p].copy()
        if change is not None and int(keys[p]) == change[0] * 10 + (1 if change[1] == "R" else 2):
            volume[0, 0, 0] ^= 1
        new.write("sag", slot, volume, key=int(keys[p]), visit=int(visits[p]))


@pytest.fixture
def run_copy(toy_run: ToyRun, tmp_path: Path) -> ToyRun:
    return copy_toy_run(toy_run, tmp_path)


def _evaluate(run: Path, out: Path) -> dict:
    with toy_model():
        return evaluate_runs([run], out_dir=out, n_resamples=20, latency=False)


def test_a_store_rebuilt_in_another_slot_order_scores_the_same_knees(run_copy: ToyRun, tmp_path: Path) -> None:
    knees = pd.read_csv(run_copy.run / "knees.csv")
    assert knees["checksum"].str.fullmatch(r"[0-9a-f]{64}").all()  # recorded per knee at training
    before = _evaluate(run_copy.run, tmp_path / "ev0")
    with toy_model():
        predicted = predict(run_copy.run, [run_copy.store], device="cpu").set_index("knee_id")
    rebuild_reordered(run_copy.store)
    after = _evaluate(run_copy.run, tmp_path / "ev1")
    p0 = pd.read_csv(tmp_path / "ev0" / "predictions.csv")
    p1 = pd.read_csv(tmp_path / "ev1" / "predictions.csv")
    assert p1["knee_id"].tolist() == p0["knee_id"].tolist()
    np.testing.assert_allclose(p1["score"], p0["score"], rtol=1e-6, atol=1e-7)
    assert after["ap"] == pytest.approx(before["ap"])
    assert after["volumes"]["relocated"] > 0 and before["volumes"]["relocated"] == 0
    with toy_model():  # predict names each slot's knee by the knee, not by the old slot number
        again = predict(run_copy.run, [run_copy.store], device="cpu").set_index("knee_id")
    assert sorted(again.index) == sorted(predicted.index)
    np.testing.assert_allclose(again.loc[predicted.index, "score"], predicted["score"], rtol=1e-6, atol=1e-7)
    assert (again.loc[predicted.index, "subject_id"] == predicted["subject_id"]).all()


def test_a_store_whose_volume_of_a_knee_changed_is_refused(run_copy: ToyRun, tmp_path: Path) -> None:
    knees = pd.read_csv(run_copy.run / "knees.csv")
    victim = knees[knees["role"] == "test"].iloc[0]
    name = f"{victim.subject_id}{victim.side}"
    rebuild_reordered(run_copy.store, change=(int(victim.subject_id), str(victim.side)))
    with pytest.raises(VolumeIdentityError) as err:
        _evaluate(run_copy.run, tmp_path / "ev")
    message = str(err.value)
    assert f"knee {name}" in message and str(run_copy.store) in message and "the run recorded" in message
    assert not (tmp_path / "ev" / "metrics.json").exists()
    code, out = _oai("explain", str(run_copy.run), "--out", str(tmp_path / "ex"), "--steps", "2")
    assert code == 1 and f"knee {name}" in out and "not the volume the run" in out, out
    code, out = _oai("predict", str(run_copy.run), str(run_copy.store), "--out", str(tmp_path / "p.csv"))
    assert code == 1 and f"knee {name}" in out and not (tmp_path / "p.csv").exists(), out
    code, out = _oai(  # another knee of the store is still fine to score
        "predict", str(run_copy.run), str(run_copy.store), "--out", str(tmp_path / "p.csv"),
        "--knees", next(f"{r.subject_id}{r.side}" for r in knees.itertuples() if f"{r.subject_id}{r.side}" != name),
    )  # fmt: skip
    assert code == 0, out


def test_run_hash_covers_config_json(run_copy: ToyRun) -> None:
    with toy_model():
        before = TrainedRun.open(run_copy.run).hash
    path = run_copy.run / "config.json"
    config = json.loads(path.read_text())
    config["config"]["name"] = "renamed"  # descriptive: not in the config hash, but in the run's bytes
    path.write_text(json.dumps(config, indent=2))
    with toy_model():
        assert TrainedRun.open(run_copy.run).hash != before


@pytest.mark.parametrize("model", ["foo_net", "2d_trf"])
def test_a_config_edited_to_another_model_is_refused(run_copy: ToyRun, tmp_path: Path, model: str) -> None:
    path = run_copy.run / "config.json"
    config = json.loads(path.read_text())
    config["config"]["model"] = model
    path.write_text(json.dumps(config, indent=2))
    code, out = _oai("predict", str(run_copy.run), str(run_copy.store), "--out", str(tmp_path / "p.csv"))
    assert code == 1 and f"{path}: does not match the weights of" in out, out
    assert f"model '{model}' in config.json, 'toy3d' in the weights" in out and not (tmp_path / "p.csv").exists()
    code, out = _oai("eval", str(run_copy.run), "--out", str(tmp_path / "ev"), "--no-latency")
    assert code == 1 and "does not match the weights" in out, out


def test_weights_of_another_run_are_refused(run_copy: ToyRun, tmp_path: Path) -> None:
    other = train_toy_run(tmp_path / "other", run_copy.store, run_copy.knees, seed=1)
    shutil.copy(other / "fold_0" / "best.pt", run_copy.run / "fold_0" / "best.pt")
    with pytest.raises(CheckpointError, match=r"config_hash .* in config.json, .* in the weights"), toy_model():
        predict(run_copy.run, [run_copy.store], device="cpu")
    code, out = _oai("explain", str(run_copy.run), "--out", str(tmp_path / "ex"), "--steps", "2")
    assert code == 1 and str(run_copy.run / "fold_0" / "best.pt") in out, out
