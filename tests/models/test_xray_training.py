"""The X-ray prior art from the store's ``xray`` array: layout, batches, recipe, train and evaluate;
and radiographs stored at twice the model's input, augmented there as the reference (issue 21)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.splits import make_split
from oaicohort.db import Database, open_database
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.imaging.store.selection import select_slots, store_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from oaicohort.synth.radiograph_release import write_radiographs
from oaicohort.vocabulary import DEFAULT_DEFINITION
from oaimodels.data import AugmentParams, BatchPreparer, InputLayout, resolve_layout
from oaimodels.data.rotation import rotate_in_slice
from oaimodels.data.store_models import table1_models
from oaimodels.data.transforms import scale_to_unit
from oaimodels.training.config import TrainConfig, TrainingError, resolve_config
from oaimodels.training.recipe import lr_at


@pytest.fixture(scope="module")
def xray_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("xray_study")
    write_release(root / "release", subjects=40, seed=2)
    write_radiographs(root / "release", size="small", seed=2)
    db = open_database(root / "oai.sqlite")
    try:
        ingest_release(db, root / "release")
        summary = run_xray_preprocess(db, root / "store.zarr", PreprocessParams.small())
        assert summary.done > 0
        derive_labels(db, DEFAULT_DEFINITION)
        make_split(db, definition=DEFAULT_DEFINITION, test_sites=("D",), folds=2, seed=0)
    finally:
        db.dispose()
    return root / "store.zarr", root / "oai.sqlite"


def _reference_xray_lr(epoch: int) -> float:
    """The reference runner's X-ray schedule, from its facts: lr_init 1e-3, CustomWarmupMultiStepLR
    (linear from 0.1 x lr while epoch <= 5, then x0.1 per milestone 20, 40 offset by the 5 warm-up
    epochs), stepped once per epoch."""
    if epoch <= 5:
        return 1e-3 * (0.1 + 0.9 * epoch / 5)
    return 1e-3 * 0.1 ** sum(epoch >= 5 + m for m in (20, 40))


def test_recipe_is_the_reference_xray_recipe_unless_overridden(tmp_path: Path) -> None:
    config = resolve_config(TrainConfig(store=str(tmp_path), out=str(tmp_path / "r"), model="xr_resnext50"))
    assert (config.batch_size, config.lr, config.warmup_epochs, config.warmup_start_lr, config.lr_milestones) == (
        64, 1e-3, 5, 1e-4, [25, 45],
    )  # fmt: skip
    # every epoch of the 100 as the reference runs it: warm-up 1e-4 -> 1e-3, drops at 25 and 45
    assert [lr_at(e, config.schedule()) for e in range(100)] == pytest.approx(
        [_reference_xray_lr(e) for e in range(100)]
    )
    assert [lr_at(e, config.schedule()) for e in (0, 5, 24, 25, 44, 45)] == pytest.approx(
        [1e-4, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5]
    )
    own = resolve_config(TrainConfig(store=str(tmp_path), out=str(tmp_path / "r"), model="xr_resnext50", lr=5e-4))
    assert own.lr == 5e-4
    mri = resolve_config(TrainConfig(store=str(tmp_path), out=str(tmp_path / "r"), model="3d_shufflenet"))
    assert (mri.lr, mri.warmup_epochs, mri.warmup_start_lr, mri.lr_milestones) == (1e-4, 5, 1e-5, None)


def test_a_value_given_for_the_xray_model_is_used_even_when_it_is_the_papers(tmp_path: Path) -> None:
    # the paper's lr/warm-up given explicitly must not be mistaken for "not given" and replaced
    given = TrainConfig(
        store=str(tmp_path), out=str(tmp_path / "r"), model="xr_resnext50", lr=1e-4, warmup_epochs=5,
        warmup_start_lr=1e-5, lr_milestones=[],
    )  # fmt: skip
    config = resolve_config(given)
    assert (config.lr, config.warmup_epochs, config.lr_milestones, config.lr_gamma) == (1e-4, 5, [], 0.1)
    assert [lr_at(e, config.schedule()) for e in (0, 5, 45)] == pytest.approx([1e-5, 1e-4, 1e-4])
    assert resolve_config(config).hash() == config.hash()  # a resolved config resolves to itself
    # the warm-up start not given: the model's own (absolute, 1e-4)
    flat = resolve_config(dataclasses.replace(given, warmup_start_lr=None))
    assert flat.warmup_start_lr == 1e-4 and lr_at(0, flat.schedule()) == pytest.approx(1e-4)


def test_radiographs_are_normalised_with_the_reference_xray_constants(xray_study: tuple[Path, Path]) -> None:
    store_path, _ = xray_study
    store = VolumeStore.open(store_path)
    layout = resolve_layout("xr_resnext50", None, store)
    assert layout.normalisation == (0.543, 0.296) and layout.to_dict()["normalisation"] == [0.543, 0.296]
    volumes = torch.from_numpy(store.read_many("xray", [0, 1]))
    x = BatchPreparer(layout).eval_inputs(volumes)["xray"]
    unit = volumes.float()
    lo, hi = unit.flatten(1).amin(1).view(-1, 1, 1, 1), unit.flatten(1).amax(1).view(-1, 1, 1, 1)
    assert torch.allclose(x, ((unit - lo) / (hi - lo) - 0.543) / 0.296, atol=1e-5)
    # a run recorded before the layout held its normalisation was trained with the MRI pair
    legacy = {k: v for k, v in layout.to_dict().items() if k != "normalisation"}
    assert InputLayout.from_dict(legacy).normalisation == (0.257, 0.235)
    # MRI layouts keep theirs
    assert resolve_layout("3d_shufflenet", None, FakeSag()).normalisation == (0.257, 0.235)


class FakeSag:
    def volume_shape(self, view: str) -> tuple[int, int, int]:
        return (20, 44, 44)

    def crop_shape(self, view: str) -> tuple[int, int, int]:
        return (16, 40, 40)


def test_dry_run_shows_the_xray_recipe_with_its_sources(xray_study: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from oaicli.main import app

    store_path, _ = xray_study
    args = ["train", "--store", str(store_path), "--model", "xr_resnext50", "--out", str(tmp_path / "r"), "--dry-run"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    described = json.loads(res.stdout)
    lines = {line["name"]: line for line in described["recipe_sources"]}
    assert lines["warmup_epochs"]["value"] == 5 and "runner.sh:197" in lines["warmup_epochs"]["source"]
    assert (
        lines["lr_milestones"]["value"] == [25, 45] and "absolute epochs 25 and 45" in lines["lr_milestones"]["source"]
    )
    assert lines["lr"]["value"] == 1e-3 and "runner.sh:196" in lines["lr"]["source"]
    assert lines["normalisation"]["value"] == [0.543, 0.296]
    assert "_data_provider.py:264-266" in lines["normalisation"]["source"]
    # the demo-size store (small preset): 0.195 mm pixels from the reference, 70-pixel ROI ours
    assert lines["store.xray_resample_mm"]["value"] == 0.195
    assert "prepare_data_xr_mipt.py:28-29" in lines["store.xray_resample_mm"]["source"]
    assert lines["store.xray_size"]["source"].startswith("ours: the small preset")
    assert all(line["source"] for line in described["recipe_sources"])  # every value has a source
    assert not (tmp_path / "r").exists()  # nothing trained or written
    # a value given is marked as given, with the reference's value beside it
    res = CliRunner().invoke(app, [*args, "--json", "--lr", "1e-4"])
    lines = {line["name"]: line for line in json.loads(res.stdout)["recipe_sources"]}
    assert lines["lr"]["source"] == "given (a flag or config file; the reference's: 0.001)"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "runner.sh:197" in res.stdout


def test_an_unresolved_schedule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="resolve_config"):
        TrainConfig(store=str(tmp_path), out=str(tmp_path / "r")).schedule()


def test_layout_and_batches_of_the_xray_array(xray_study: tuple[Path, Path]) -> None:
    store_path, _ = xray_study
    store = VolumeStore.open(store_path)
    layout = resolve_layout("xr_resnext50", None, store)
    assert (layout.source_view, layout.stored_shape, layout.crop_shape) == ("xray", (1, 70, 70), (1, 70, 70))
    assert layout.input_shapes() == {"xray": (1, 70, 70)}
    volumes = torch.from_numpy(store.read_many("xray", [0, 1]))
    prep = BatchPreparer(layout, AugmentParams(rotate_p=1.0))
    train = prep.train_inputs(volumes, torch.Generator().manual_seed(0))["xray"]
    evaluation = prep.eval_inputs(volumes)["xray"]
    assert train.shape == evaluation.shape == (2, 1, 70, 70)
    assert not torch.equal(train, evaluation)  # rotated and gamma-corrected
    assert table1_models(str(store_path)) == ["xr_resnext50"]


def test_a_radiograph_read_for_prediction_gives_the_stored_rois(xray_study: tuple[Path, Path]) -> None:
    """``oai predict`` on a release or a radiograph folder crops the knees exactly as the store."""
    from oaimodels.inference.inputs import radiograph_scans, release_radiograph_scans

    store_path, _ = xray_study
    store = VolumeStore.open(store_path)
    slots = store_slots(store, "xray", visit=0).head(4)
    knees = [(int(s), str(side)) for s, side in zip(slots["subject_id"], slots["side"])]
    scans = release_radiograph_scans(store_path.parent / "release", store.params, knees, 0, lambda *a: None)
    assert [(s.subject_id, s.side, s.visit) for s in scans] == [(*k, 0) for k in knees]
    for scan, position in zip(scans, slots["position"]):
        np.testing.assert_array_equal(scan.preprocessed(), store.read("xray", int(position)))
    # one radiograph folder, one knee of it (--side)
    (alone,) = radiograph_scans(Path(scans[0].input), store.params, [scans[0].side], "series")
    assert (alone.subject_id, alone.side, alone.kind) == (scans[0].subject_id, scans[0].side, "series")
    np.testing.assert_array_equal(alone.preprocessed(), scans[0].preprocessed())


@pytest.mark.slow
def test_xray_model_trains_and_evaluates_end_to_end(xray_study: tuple[Path, Path], tmp_path: Path) -> None:
    from oaimodels.evaluation.held_out import evaluate_runs
    from oaimodels.training.run import train_run

    store_path, db_path = xray_study
    db: Database = open_database(db_path)
    try:
        config = TrainConfig(
            store=str(store_path),
            out=str(tmp_path / "run"),
            model="xr_resnext50",
            folds=[0],
            epochs=1,
            batch_size=4,
            init="scratch",
            limit_train=8,
            threads=2,
            device="cpu",
            loader="resident",
        )
        run_dir = train_run(config, db)
        metrics = evaluate_runs([run_dir], db, n_resamples=20, seed=0)
    finally:
        db.dispose()
    assert metrics["model"] == "xr_resnext50" and metrics["n_knees"] > 0
    assert 0.0 <= metrics["ap"] <= 1.0 and Path(metrics["report"]).is_file()

    # and it scores radiographs straight from the release, as from its store
    from oaimodels.inference.predict import predict

    from_store = predict(run_dir, [store_path], device="cpu").head(6)
    knees = list(zip(from_store["subject_id"].astype(int), from_store["side"]))
    from_release = predict(run_dir, [store_path.parent / "release"], knees=knees, device="cpu")
    assert from_release["knee"].tolist() == from_store["knee"].tolist()
    assert set(from_release["kind"]) == {"release"}
    np.testing.assert_allclose(from_release["score"], from_store["score"], rtol=1e-5, atol=1e-6)

    # and explains them: one image per knee, saliency over the ROI
    from oaimodels.inference.explain import explain_run

    table = explain_run(run_dir, tmp_path / "explain", knees=knees[:2], steps=2, device="cpu", db=None)
    assert table["knee"].tolist() == from_store["knee"].tolist()[:2]
    saliency = np.load(tmp_path / "explain" / "knees" / table["knee"][0] / "saliency.npy")
    assert saliency.shape == (1, 70, 70) and saliency.sum() == pytest.approx(1.0, rel=1e-5)


# --------------------------------------------------------------------------- augmented at 2x the input
# The reference rotates and gamma-corrects its 700-pixel ROI and then downscales it x0.5 (issue 21):
# a store at ``xray_stored_scale=2`` holds the ROI at 2x the model's input; training augments it
# there and then takes 2x2 means; evaluation, prediction and explanation take the same means.

SCALE2 = dataclasses.replace(PreprocessParams.small(), xray_stored_scale=2)


@pytest.fixture(scope="module")
def two_stores(xray_study: tuple[Path, Path]) -> dict[str, Path]:
    """The study's release at scale 1 (its store) and at scale 2 (same knees, same database)."""
    store, db_path = xray_study
    db = open_database(db_path)
    try:
        assert run_xray_preprocess(db, store.parent / "x2.zarr", SCALE2).done > 0
    finally:
        db.dispose()
    return {"x1": store, "x2": store.parent / "x2.zarr", "db": db_path, "release": store.parent / "release"}


def test_the_stored_scale_is_a_recorded_parameter_old_stores_keep_their_hash() -> None:
    full = PreprocessParams.full()
    at_700 = dataclasses.replace(full, xray_stored_scale=2)
    assert full.stored_shape("xray") == (1, 350, 350) and at_700.stored_shape("xray") == (1, 700, 700)
    assert at_700.crop_shape("xray") == (1, 700, 700)
    assert full.hash() != at_700.hash()
    # a parameter set recorded before the scale existed reads as scale 1, with the same hash
    recorded = {k: v for k, v in full.to_dict().items() if k != "xray_stored_scale"}
    assert PreprocessParams.from_dict(recorded) == full and PreprocessParams.from_dict(recorded).hash() == full.hash()
    with pytest.raises(ValueError, match="xray_stored_scale must be >= 1"):
        dataclasses.replace(full, xray_stored_scale=0)
    with pytest.raises(
        ValueError, match=r"not a multiple of the stored size 1050 \(xray_size 350 x xray_stored_scale 3\)"
    ):
        from oaicohort.imaging.recipe.xray import crop_knee

        crop_knee(np.zeros((800, 800), np.uint16), 0.5, (400, 400), "R", dataclasses.replace(full, xray_stored_scale=3))


def test_a_scale_2_store_holds_the_same_rois_at_twice_the_pixels(two_stores: dict[str, Path]) -> None:
    one, two = VolumeStore.open(two_stores["x1"]), VolumeStore.open(two_stores["x2"])
    assert one.volume_shape("xray") == (1, 70, 70) and two.volume_shape("xray") == (1, 140, 140)
    slots = {name: store_slots(store, "xray", visit=None) for name, store in (("x1", one), ("x2", two))}
    knees = {name: list(zip(frame["subject_id"], frame["side"])) for name, frame in slots.items()}
    assert sorted(knees["x1"]) == sorted(knees["x2"]) and knees["x1"]
    fine_positions = select_slots(slots["x2"], knees["x1"][:6], where="x2")["position"]
    for position, fine_position in zip(slots["x1"]["position"][:6], fine_positions, strict=True):
        small = one.read("xray", int(position)).astype(np.float64)
        fine = two.read("xray", int(fine_position)).astype(np.float64)
        means = fine.reshape(1, 70, 2, 70, 2).mean(axis=(2, 4))
        # the same ROI: each store maps its own [5, 99] percentiles onto 0..255, so the grey levels
        # differ by a near-linear map; after it, the 2x2 means are the 70-pixel ROI to a grey level or two
        fit = np.polyval(np.polyfit(means.ravel(), small.ravel(), 1), means)
        assert np.abs(fit - small).mean() < 2.0
        assert np.corrcoef(means.ravel(), small.ravel())[0, 1] > 0.99


def test_training_augments_at_the_stored_size_then_takes_2x2_means(two_stores: dict[str, Path]) -> None:
    store = VolumeStore.open(two_stores["x2"])
    layout = resolve_layout("xr_resnext50", None, store)
    assert (layout.stored_shape, layout.crop_shape, layout.downscale) == ((1, 140, 140), (1, 140, 140), 2)
    assert layout.input_shapes() == {"xray": (1, 70, 70)}
    assert InputLayout.from_dict(layout.to_dict()) == layout and layout.to_dict()["downscale"] == 2
    one = resolve_layout("xr_resnext50", None, VolumeStore.open(two_stores["x1"]))
    assert one.downscale == 1 and "downscale" not in one.to_dict()  # config.json of scale-1 runs unchanged
    volumes = torch.from_numpy(store.read_many("xray", [0, 1, 2]))
    mean, std = layout.normalisation
    unit = scale_to_unit(volumes.float())
    # evaluation: [0, 1] scaling, 2x2 means, normalisation
    evaluation = BatchPreparer(layout).eval_inputs(volumes)["xray"]
    torch.testing.assert_close(evaluation, ((F.avg_pool2d(unit, 2) - mean) / std)[:, :1])
    # training: every knee rotated (and gamma-corrected) at 140 pixels, then reduced
    prep = BatchPreparer(layout, AugmentParams(rotate_p=1.0, gamma_p=0.0))
    draws = prep.draw(3, torch.Generator().manual_seed(5))
    angles = draws[2].value
    assert bool((angles != 0).all())
    trained = prep.apply(volumes, draws)["xray"]
    expected = (F.avg_pool2d(rotate_in_slice(unit, angles), 2) - mean) / std
    torch.testing.assert_close(trained, expected[:, :1])
    # not the same as rotating the reduced image (what a scale-1 store does)
    reduced_first = (rotate_in_slice(F.avg_pool2d(unit, 2), angles) - mean) / std
    assert not torch.allclose(trained, reduced_first[:, :1], atol=1e-3)


def test_a_crop_that_the_scale_does_not_divide_is_refused(two_stores: dict[str, Path]) -> None:
    from oaimodels.data.layout import DataError

    with pytest.raises(DataError, match="not divisible by the store's xray_stored_scale 2"):
        resolve_layout("xr_resnext50", None, VolumeStore.open(two_stores["x2"]), crop_shape=(1, 139, 139))


def test_dry_run_names_the_stored_scale_and_its_source(two_stores: dict[str, Path], tmp_path: Path) -> None:
    from oaimodels.training.config import TrainConfig
    from oaimodels.training.recipe_sources import describe_recipe

    def lines(store: Path) -> dict[str, dict[str, object]]:
        config = TrainConfig(store=str(store), out=str(tmp_path / "r"), model="xr_resnext50")
        return {line["name"]: line for line in describe_recipe(config)["recipe_sources"]}

    at_2, at_1 = lines(two_stores["x2"]), lines(two_stores["x1"])
    assert at_2["store.xray_stored_scale"]["value"] == 2
    assert "runner.sh:195" in str(at_2["store.xray_stored_scale"]["source"])
    assert at_2["crop"]["value"] == [1, 140, 140]
    assert at_1["store.xray_stored_scale"]["value"] == 1
    assert str(at_1["store.xray_stored_scale"]["source"]).startswith("ours: ")
    assert "the reference's: 2" in str(at_1["store.xray_stored_scale"]["source"])


def test_a_scale_2_run_trains_and_predicts_from_the_release_as_from_its_store(
    two_stores: dict[str, Path], tmp_path: Path
) -> None:
    from oaimodels.inference.predict import predict
    from oaimodels.training.config import TrainConfig
    from oaimodels.training.run import train_run

    db = open_database(two_stores["db"])
    try:
        config = TrainConfig(
            store=str(two_stores["x2"]), out=str(tmp_path / "run"), model="xr_resnext50", folds=[0], epochs=1,
            batch_size=4, init="scratch", limit_train=8, threads=2, device="cpu", loader="resident",
        )  # fmt: skip
        run_dir = train_run(config, db)
    finally:
        db.dispose()
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["layout"]["downscale"] == 2 and recorded["layout"]["input_shapes"] == {"xray": [1, 70, 70]}
    from_store = predict(run_dir, [two_stores["x2"]], device="cpu").head(4)
    knees = list(zip(from_store["subject_id"].astype(int), from_store["side"]))
    # a radiograph read from the release is cropped at the run's 140 pixels and reduced like the store's
    from_release = predict(run_dir, [two_stores["release"]], knees=knees, device="cpu")
    assert from_release["knee"].tolist() == from_store["knee"].tolist()
    np.testing.assert_allclose(from_release["score"], from_store["score"], rtol=1e-5, atol=1e-6)


def test_preprocess_stores_at_the_scale_asked_and_refuses_another_on_the_same_store(
    two_stores: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from oaicli.main import app

    def preprocess(*extra: str) -> tuple[int, str]:
        args = ["--db", str(two_stores["db"]), "preprocess", "--store", str(tmp_path / "s.zarr"), "--preset", "small"]
        result = CliRunner().invoke(app, [*args, "--limit", "2", "--workers", "1", *extra])
        return result.exit_code, result.output

    code, output = preprocess("--view", "sag", "--xray-stored-scale", "2")
    assert code == 2 and "only applies to --view xray" in output and not (tmp_path / "s.zarr").exists()
    code, output = preprocess("--view", "xray", "--xray-stored-scale", "2")
    assert code == 0, output
    assert VolumeStore.open(tmp_path / "s.zarr").volume_shape("xray") == (1, 140, 140)
    # the same store at another scale: refused, the store unchanged
    code, output = preprocess("--view", "xray", "--xray-stored-scale", "1")
    assert code == 1 and "s.zarr" in output and "xray_stored_scale 2 here, 1 asked" in " ".join(output.split())
    assert VolumeStore.open(tmp_path / "s.zarr").params.xray_stored_scale == 2
