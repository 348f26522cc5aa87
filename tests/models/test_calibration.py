"""Calibration in the evaluation report: per-bin counts, why balanced sampling inflates
p(progression), recalibrated probabilities fitted off the test set, titles and report links."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oaimodels.evaluation import calibration
from oaimodels.evaluation.held_out import evaluate_runs
from oaimodels.metrics import progression_score
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run
from tests.helpers.training import make_toy_cohort, toy_model


def test_prior_correction_is_bayes_rule_for_the_sampler_prior() -> None:
    uniform = np.full((1, 3), 1 / 3)
    corrected = calibration.prior_corrected(uniform, np.array([0.8, 0.1, 0.1]), np.full(3, 1 / 3))
    np.testing.assert_allclose(corrected, [[0.8, 0.1, 0.1]])
    # a confident progression call stays a progression call, with a smaller probability
    probs = np.array([[0.2, 0.5, 0.3]])
    corrected = calibration.prior_corrected(probs, np.array([0.8, 0.1, 0.1]), np.full(3, 1 / 3))
    assert progression_score(corrected)[0] == pytest.approx(0.08 / (0.16 + 0.08))


def test_platt_fit_recovers_known_parameters() -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0.02, 0.98, size=40_000)
    truth = calibration.apply_platt(score, 2.0, -1.0)
    y = (rng.uniform(size=score.size) < truth).astype(int)
    a, b = calibration.fit_platt(score, y)
    assert a == pytest.approx(2.0, abs=0.08) and b == pytest.approx(-1.0, abs=0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Path], pd.DataFrame]]:
    root = tmp_path_factory.mktemp("calib")
    with toy_model():
        store, knees = make_toy_cohort(root, n_subjects=20)
        knees["site"] = np.where(knees["role"] == "test", "D", "A")
        out = []
        for seed, name in ((0, None), (1, "seed one")):
            config = TrainConfig(
                store=str(store), out=str(root / f"toy_seed{seed}"), model="toy3d", epochs=2, batch_size=8,
                lr=3e-3, warmup_epochs=0, seed=seed, loader="resident", workers=0, device="cpu", name=name,
                tags={"purpose": "calibration"}, tensorboard=False,
            )  # fmt: skip
            out.append(train_run(config, knees=knees))
        yield out, knees


def test_recalibration_is_fitted_on_out_of_fold_validation_only(
    runs: tuple[list[Path], pd.DataFrame], tmp_path: Path
) -> None:
    (run, _), knees = runs
    with toy_model():
        m = evaluate_runs([run], out_dir=tmp_path / "ev", n_resamples=20, latency=False)
    rec = m["recalibration"]
    test = knees[knees["role"] == "test"]
    train = knees[knees["role"] == "train"]
    assert rec["sampler"] == "weighted"
    assert rec["train_class_frequency"]["none"] == pytest.approx(float((train["label"] == "none").mean()))
    assert rec["sampled_class_frequency"] == pytest.approx({"none": 1 / 3, "fast": 1 / 3, "slow": 1 / 3})
    # Platt: the parameters are those of a fit on the recorded validation predictions, not the test knees
    oof = pd.concat([pd.read_csv(run / f"fold_{k}" / "val_predictions.csv") for k in (0, 1)])
    assert set(oof["knee_id"]).isdisjoint(test["knee_id"])
    oof_y = (oof["label"] != "none").astype(int).to_numpy()
    a, b = calibration.fit_platt(progression_score(oof[["p_none", "p_fast", "p_slow"]].to_numpy()), oof_y)
    platt = rec["methods"]["platt_oof"]
    assert (platt["a"], platt["b"]) == pytest.approx((a, b))
    assert "out-of-fold validation" in platt["fitted_on"] and f"({len(oof)} knees" in platt["fitted_on"]
    table = pd.read_csv(tmp_path / "ev" / "recalibrated.csv")
    predictions = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert table["knee_id"].tolist() == predictions["knee_id"].tolist()
    np.testing.assert_allclose(table["p_progression_platt_oof"], calibration.apply_platt(predictions["score"], a, b))
    # balanced sampling inflates p(progression); the prior correction brings it down
    assert table["p_progression_prior_corrected"].mean() < table["score"].mean()
    for method in rec["methods"].values():
        assert sum(method["reliability"]["count"]) == len(test)
    assert sum(m["reliability"]["count"]) == len(test)

    report = (tmp_path / "ev" / "report.md").read_text()
    assert "## Calibration" in report and "weighted sampling" in report and "inflated" in report
    assert "Platt, fitted on out-of-fold validation" in report and "prior-corrected" in report
    assert "never fitted on the test knees" in report
    # the title names model, init, test site and n (not the folder name)
    assert m["title"] == f"toy3d, scratch; test site D, n={len(test)}"
    assert report.startswith(f"# Evaluation of {m['title']}\n")
    assert "Run folder `toy_seed0` (tags: purpose=calibration)" in report
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["test_site"] == "D" and saved["tags"] == {"purpose": "calibration"}
    assert (tmp_path / "ev" / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_named_run_title_and_comparison_links_with_a_relative_out(
    runs: tuple[list[Path], pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dirs, knees = runs
    monkeypatch.chdir(tmp_path)
    with toy_model():
        result = evaluate_runs(run_dirs, out_dir=Path("reports/cmp"), n_resamples=20, latency=False)
    n = int((knees["role"] == "test").sum())
    assert result["runs"][1]["title"] == f"seed one; test site D, n={n}"
    root = tmp_path / "reports" / "cmp"
    report = (root / "report.md").read_text()
    links = re.findall(r"\[(toy_seed\d)\]\(([^)]+)\)", report)
    assert [name for name, _ in links] == ["toy_seed0", "toy_seed1"]
    for name, link in links:
        assert not Path(link).is_absolute()
        assert (root / link).resolve() == (root / name / "report.md").resolve() and (root / link).is_file()
    # the default place (comparison/ beside the runs) links to each run's eval/ folder
    with toy_model():
        result = evaluate_runs(run_dirs, n_resamples=20, latency=False)
    default_root = run_dirs[0].parent / "comparison"
    for name, link in re.findall(r"\[(toy_seed\d)\]\(([^)]+)\)", (default_root / "report.md").read_text()):
        assert (default_root / link).resolve() == (run_dirs[0].parent / name / "eval" / "report.md").resolve()
