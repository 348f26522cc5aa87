"""Fold-ensemble evaluation: probabilities averaged once, report files, several runs compared."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oaimodels.evaluation.held_out import (
    EvaluationError,
    comparison_report,
    ensemble_probabilities,
    evaluate_runs,
)
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run
from tests.helpers.training import make_toy_cohort, toy_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_ensemble_averages_probabilities_once() -> None:
    # fold A: logits (0, ln 3, 0) -> softmax (0.2, 0.6, 0.2); fold B: (ln 2, 0, ln 2) -> (0.4, 0.2, 0.4)
    a = np.array([[0.0, np.log(3.0), 0.0]])
    b = np.array([[np.log(2.0), 0.0, np.log(2.0)]])
    probs = ensemble_probabilities([a, b])
    np.testing.assert_allclose(probs, [[0.3, 0.4, 0.3]])
    # the reference's second softmax would give a different, flattened distribution
    double = np.exp(probs) / np.exp(probs).sum()
    assert not np.allclose(double, probs) and double.max() < probs.max()
    # score = p(fast) + p(slow)
    assert probs[0, 1] + probs[0, 2] == pytest.approx(0.7)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Path], pd.DataFrame]]:
    root = tmp_path_factory.mktemp("eval")
    with toy_model():
        store, knees = make_toy_cohort(root, n_subjects=20)
        runs = []
        for seed in (0, 1):
            config = TrainConfig(
                store=str(store), out=str(root / f"toy_seed{seed}"), model="toy3d", epochs=2, batch_size=8,
                lr=3e-3, warmup_epochs=0, seed=seed, loader="resident", workers=0, device="cpu",
            )  # fmt: skip
            runs.append(train_run(config, knees=knees))
        yield runs, knees


def test_evaluate_one_run_writes_every_file(two_runs: tuple[list[Path], pd.DataFrame], tmp_path: Path) -> None:
    (run, _), knees = two_runs
    with toy_model():
        result = evaluate_runs([run], out_dir=tmp_path / "ev", n_resamples=100)
    out = tmp_path / "ev"
    test = knees[knees["role"] == "test"]
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == len(test) and set(predictions["knee_id"]) == set(test["knee_id"])
    probs = predictions[["p_none", "p_fast", "p_slow"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(predictions["score"], probs[:, 1] + probs[:, 2])
    # the ensemble is the mean of the fold models' own probabilities
    assert {"score_fold0", "score_fold1"} <= set(predictions.columns)
    np.testing.assert_allclose(predictions["score"], predictions[["score_fold0", "score_fold1"]].mean(axis=1))
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "ap",
        "ap_sd",
        "ap_ci_low",
        "ap_ci_high",
        "roc_auc",
        "roc_auc_sd",
        "balanced_accuracy",
        "n_knees",
        "prevalence",
        "brier",
        "confusion_matrix",
        "seed",
        "efficiency",
    ):
        assert key in metrics, key
    assert metrics["n_knees"] == len(test) and metrics["seed"] == 0
    assert metrics["prevalence"] == pytest.approx(float((test["label"] != "none").mean()))
    assert np.asarray(metrics["confusion_matrix"]).sum() == len(test)
    assert metrics["efficiency"]["params"] > 0 and metrics["efficiency"]["latency_ms"] > 0
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "| toy_seed0 | toy3d | sag | scratch |" in report and "## Cohort and split" in report
    assert result["ap"] == metrics["ap"] and result["report"] == str(out / "report.md")
    # every file went through the atomic writer: no temporary left, exactly the documented files
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "predictions.csv",
            "metrics.json",
            "recalibrated.csv",
            "report.md",
            "roc.png",
            "pr.png",
            "confusion.png",
            "calibration.png",
        ]
    )


def test_compare_two_runs_in_one_report(two_runs: tuple[list[Path], pd.DataFrame]) -> None:
    runs, _ = two_runs
    with toy_model():
        result = evaluate_runs(runs, n_resamples=50, latency=False)
    root = runs[0].parent / "comparison"
    assert result["report"] == str(root / "report.md")
    report = (root / "report.md").read_text()
    assert report.count("| toy3d | sag | scratch |") == 2
    for run in runs:  # each run keeps its own evaluation folder
        assert (run / "eval" / "metrics.json").is_file()
    assert (root / "roc.png").read_bytes()[:8] == PNG_MAGIC


def test_table2_pairs_scratch_and_imagenet_runs() -> None:
    def fake(init: str, ap: float) -> dict:
        return dict(
            name=f"2d_trf_sag_{init}",
            model="2d_trf",
            views=["sag"],
            init=init,
            ap=ap,
            ap_sd=0.02,
            roc_auc=0.78,
            roc_auc_sd=0.01,
            balanced_accuracy=0.5,
            balanced_accuracy_sd=0.02,
            efficiency=None,
            paper=None,
            out_dir="x",
            labels={},
        )

    report = comparison_report([fake("scratch", 0.57), fake("imagenet", 0.58)])
    assert "(Table 2)" in report
    assert "| 2d_trf | sag | 0.57 ± 0.02 | 0.58 ± 0.02 | 0.78 ± 0.01 | 0.78 ± 0.01 |" in report


def test_unfinished_or_missing_runs_are_explained(two_runs: tuple[list[Path], pd.DataFrame], tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="not a run folder"):
        evaluate_runs([tmp_path])
    (run, _), _ = two_runs
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "knees.csv", "labels.json"):
        (broken / name).write_bytes((run / name).read_bytes())
    with pytest.raises(EvaluationError, match=r"fold\(s\) \[0, 1\] have no best.pt.*--resume"):
        evaluate_runs([broken])


def test_runs_tested_on_different_knees_are_refused_or_flagged(
    two_runs: tuple[list[Path], pd.DataFrame], tmp_path: Path
) -> None:
    import shutil

    (first, second), knees = two_runs
    other = tmp_path / "fewer_test_knees"
    shutil.copytree(second, other, ignore=shutil.ignore_patterns("eval"))
    table = pd.read_csv(other / "knees.csv")
    dropped = table.index[table["role"] == "test"][:3]
    table.drop(index=dropped).to_csv(other / "knees.csv", index=False)
    n_test = int((knees["role"] == "test").sum())
    with toy_model(), pytest.raises(EvaluationError) as info:
        evaluate_runs([first, other], out_dir=tmp_path / "cmp", n_resamples=20, latency=False)
    message = str(info.value)
    assert "fewer_test_knees: 3 knees differ (0 not in toy_seed0's, 3 of toy_seed0's missing)" in message
    assert "--require sag,xray" in message and "--allow-different-test-knees" in message
    assert not (tmp_path / "cmp").exists()  # refused before anything was evaluated
    with toy_model():
        result = evaluate_runs(
            [first, other], out_dir=tmp_path / "cmp", n_resamples=20, latency=False, allow_different_test_knees=True
        )
    assert result["test_sets"][0]["same"] is False and result["test_sets"][0]["differing"] == ["fewer_test_knees"]
    assert result["test_sets"][0]["shared_knees"] == n_test - 3
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert report.split("\n")[2].startswith("> **WARNING: these runs were tested on different knees")
    assert f"| fewer_test_knees | {n_test - 3} | 0 | 3 |" in report
    # runs on one test set: the report says so, with its knee count
    with toy_model():
        same = evaluate_runs([first, second], out_dir=tmp_path / "same", n_resamples=20, latency=False)
    assert same["test_sets"][0]["same"] is True
    subjects = knees.loc[knees["role"] == "test", "subject_id"].nunique()
    assert (
        f"Measured on one shared test set: {n_test} knees of {subjects} subjects."
        in (tmp_path / "same" / "report.md").read_text()
    )


@pytest.mark.slow
def test_mri_and_xray_runs_of_a_require_definition_share_one_test_set(tmp_path: Path) -> None:
    from oaicohort.cohort.labels import derive_labels
    from oaicohort.cohort.splits import make_split
    from oaicohort.db import open_database
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.runs.mri import run_preprocess
    from oaicohort.imaging.runs.xray import run_xray_preprocess
    from oaicohort.ingest.run import ingest_release
    from oaicohort.synth.clinical import write_release
    from oaicohort.synth.images import write_images
    from oaicohort.synth.radiograph_release import write_radiographs

    release, store = tmp_path / "release", tmp_path / "store.zarr"
    write_release(release, subjects=40, seed=3)
    write_images(release, size="small", seed=3)
    write_radiographs(release, size="small", seed=3)
    db = open_database(tmp_path / "oai.sqlite")
    try:
        ingest_release(db, release)
        run_preprocess(db, store, PreprocessParams.small(), views=("sag",))
        run_xray_preprocess(db, store, PreprocessParams.small())
        labels = derive_labels(db, store=store, require=("sag", "xray"))
        make_split(db, test_sites=("D",), folds=2, seed=0)
        common = dict(store=str(store), folds=[0], epochs=1, batch_size=4, init="scratch", limit_train=8,
                      device="cpu", loader="resident", workers=0, warmup_epochs=0, tensorboard=False)  # fmt: skip
        runs = [
            train_run(TrainConfig(out=str(tmp_path / name), model=name, **common), db)  # type: ignore[arg-type]
            for name in ("3d_shufflenet", "xr_resnext50")
        ]
        result = evaluate_runs(runs, db, n_resamples=20, latency=False)
    finally:
        db.dispose()
    included = labels.labels[labels.labels["exclusion"].isna()]
    test_knees = [m["n_knees"] for m in result["runs"]]
    assert result["test_sets"][0]["same"] is True and test_knees[0] == test_knees[1] > 0
    assert result["test_sets"][0]["shared_knees"] == test_knees[0] <= len(included)
    report = Path(result["report"]).read_text()
    assert f"Measured on one shared test set: {test_knees[0]} knees of" in report
    assert "| 3d_shufflenet | sag |" in report and "| xr_resnext50 | xray |" in report
