"""Radiographs augmented at twice the model's resolution, as the reference (issue 21): a store at
``xray_stored_scale=2`` holds the ROI at 2x the model's input, training rotates and gamma-corrects
it there and then takes 2x2 means; evaluation, prediction and explanation take the same means."""

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
from oaicohort.db import open_database
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from oaicohort.synth.radiograph_release import write_radiographs
from oaicohort.vocabulary import DEFAULT_DEFINITION
from oaimodels.data import AugmentParams, BatchPreparer, InputLayout, resolve_layout
from oaimodels.data.rotation import rotate_in_slice
from oaimodels.data.transforms import scale_to_unit

SCALE2 = dataclasses.replace(PreprocessParams.small(), xray_stored_scale=2)


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small radiograph release preprocessed at scale 1 and at scale 2 (same knees), labelled and split."""
    root = tmp_path_factory.mktemp("xray_scale")
    write_release(root / "release", subjects=30, seed=2)
    write_radiographs(root / "release", size="small", seed=2)
    db = open_database(root / "oai.sqlite")
    try:
        ingest_release(db, root / "release")
        for name, params in (("x1", PreprocessParams.small()), ("x2", SCALE2)):
            assert run_xray_preprocess(db, root / f"{name}.zarr", params).done > 0
        derive_labels(db, DEFAULT_DEFINITION)
        make_split(db, definition=DEFAULT_DEFINITION, test_sites=("D",), folds=2, seed=0)
    finally:
        db.dispose()
    return {"x1": root / "x1.zarr", "x2": root / "x2.zarr", "db": root / "oai.sqlite", "release": root / "release"}


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
    keys = {int(k): i for i, k in enumerate(two.knee_keys("xray"))}
    assert sorted(keys) == sorted(int(k) for k in one.knee_keys("xray"))
    for position, key in enumerate(one.knee_keys("xray")[:6]):
        small = one.read("xray", position).astype(np.float64)
        fine = two.read("xray", keys[int(key)]).astype(np.float64)
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
