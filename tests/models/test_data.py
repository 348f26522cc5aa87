"""Data pipeline: layouts, batched augmentations, sampling, volume sources, leakage check."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from oaicohort.cohort.splits import LeakageError
from oaicohort.imaging.store.volume_store import VolumeStore
from oaimodels import data as D
from tests.helpers.training import make_toy_cohort


class FakeStore:
    def __init__(self, stored: dict[str, tuple[int, int, int]], crops: dict[str, tuple[int, int, int]]):
        self.stored, self.crops = stored, crops

    def volume_shape(self, view: str) -> tuple[int, int, int]:
        return self.stored[view]

    def crop_shape(self, view: str) -> tuple[int, int, int]:
        return self.crops[view]


PAPER_STORE = FakeStore(
    {"sag": (80, 176, 176), "cor": (88, 176, 160), "ax": (88, 176, 160)},
    {"sag": (64, 160, 160), "cor": (80, 160, 128), "ax": (80, 160, 128)},
)
SMALL_STORE = FakeStore(
    {"sag": (20, 44, 44), "cor": (22, 44, 40), "ax": (22, 44, 40)},
    {"sag": (16, 40, 40), "cor": (20, 40, 32), "ax": (20, 40, 32)},
)


# --------------------------------------------------------------------------- layouts


def test_layout_uses_paper_shape_when_the_store_is_large_enough() -> None:
    layout = D.resolve_layout("2d_trf", None, PAPER_STORE)
    assert layout.crop_shape == (64, 160, 160) and layout.input_shapes() == {"sag": (1, 64, 160, 160)}
    cor = D.resolve_layout("2d_trf", "cor", PAPER_STORE)
    assert cor.source_view == "cor" and cor.input_shapes() == {"cor": (1, 80, 160, 128)}


def test_layout_falls_back_to_the_store_crop_for_small_stores() -> None:
    layout = D.resolve_layout("3d_shufflenet", None, SMALL_STORE)
    assert layout.crop_shape == (16, 40, 40)
    assert layout.input_shapes() == {"sag": (1, 16, 40, 40)}


def test_multiview_layout_slices_the_sagittal_crop_three_ways() -> None:
    layout = D.resolve_layout("2dsh_trf", None, PAPER_STORE)
    assert layout.source_view == "sag" and layout.derived_views
    # the reference's 64 sag slices of 160x160 + 160 cor of 160x64 + 160 ax of 160x64
    assert layout.input_shapes() == {
        "sag": (1, 64, 160, 160),
        "cor": (1, 160, 160, 64),
        "ax": (1, 160, 160, 64),
    }


def test_layout_survives_a_json_round_trip() -> None:
    layout = D.resolve_layout("2dsh_trf", None, PAPER_STORE)
    restored = D.InputLayout.from_dict(json.loads(json.dumps(layout.to_dict())))
    assert restored == layout and restored.input_shapes() == layout.input_shapes()


def test_layout_errors_name_the_problem() -> None:
    with pytest.raises(D.DataError, match=r"crop \(90, 160, 160\) does not fit"):
        D.resolve_layout("3d_shufflenet", None, PAPER_STORE, crop_shape=(90, 160, 160))
    with pytest.raises(D.DataError, match="does not apply"):
        D.resolve_layout("3d_shufflenet", "cor", PAPER_STORE)
    with pytest.raises(D.DataError, match=r"reads 'xray', which the store does not hold.*--view xray"):
        D.resolve_layout("xr_resnext50", None, PAPER_STORE)


# --------------------------------------------------------------------------- augmentation


def _layout(stored=(20, 20, 20), crop=(16, 16, 16), model="3d_shufflenet") -> D.InputLayout:
    return D.resolve_layout(model, None, FakeStore({"sag": stored}, {"sag": crop}), crop_shape=crop)


def _recipe(stored: tuple[int, int, int], crop: tuple[int, int, int], augment: D.AugmentParams) -> D.Compose:
    return D.recipe_transforms(_layout(stored, crop), augment)


def test_crop_offsets_cover_every_offset_within_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    off = D.Crop((20, 44, 44), (16, 40, 40), random=True).draw(4000, gen).numpy()
    assert off.min() == 0
    for axis, top in enumerate((4, 4, 4)):
        assert off[:, axis].max() == top  # stored - crop, inclusive
        assert set(np.unique(off[:, axis])) == set(range(top + 1))  # odd offsets too


def test_a_thousand_random_crops_of_a_padded_volume_never_see_padding() -> None:
    """A series one slice (and two columns) above the minimum is centre-padded; random crops drawn
    inside its recorded valid extent never contain a padded voxel, in every view (issue 21)."""
    from dataclasses import dataclass

    from oaicohort.imaging.recipe.extent import extent_notes, extent_of
    from oaicohort.imaging.recipe.mri import preprocess_mri
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.series.size import minimum_source_shape

    @dataclass
    class Series:
        pixels: np.ndarray
        spacing_mm: tuple[float, float, float] = (0.7, 0.365, 0.365)
        side: str = "R"

    params = PreprocessParams.small()
    slices, rows, cols = minimum_source_shape(params)
    # real data is 125..250 after >> 3 (no clipping needed), padding is 0: a stored voxel below
    # 125 averages some padding
    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 2001, size=(slices + 1, rows + 4, cols + 2), dtype=np.uint16)
    knee = preprocess_mri(Series(pixels), params)
    notes = {**knee.notes, **extent_notes(knee.notes["source_shape"], params, tuple(knee.volumes))}
    assert {"slices_padded", "cols_padded", "valid_extent"} <= set(notes)
    gen = torch.Generator().manual_seed(0)
    for view, volume in knee.volumes.items():
        stored, crop = volume.shape, params.crop_shape(view)
        assert volume.min() == 0  # there is padding to avoid
        extent = extent_of(notes, params, view)
        knees = pd.DataFrame([[a for axis in extent for a in axis]] * 1000, columns=list(D.EXTENT_COLUMNS))
        bounds = torch.from_numpy(D.offset_bounds(knees, stored, crop))
        volumes = torch.from_numpy(volume).expand(1000, *stored)
        step = D.Crop(stored, crop, random=True)
        offsets = step.draw(1000, gen, bounds)
        crops = step(volumes, offsets)
        assert int(crops.flatten(1).amin(dim=1).min()) >= 125, view
        # the offsets still vary wherever the data leaves room
        room = [b - a - c for (a, b), c in zip(extent, crop)]
        assert [len(np.unique(offsets[:, i])) for i in range(3)] == [r + 1 for r in room]
        # without the extent, random crops of the same volume do reach the padding
        free = step.draw(1000, gen)
        assert int(step(volumes, free).flatten(1).amin(dim=1).min()) < 125


def test_crop_bounds_centre_a_crop_larger_than_the_data() -> None:
    # a store made with too_small="pad": 10 real slices of 20, crop 16 -> the crop is centred on them
    knees = pd.DataFrame([[5, 15, 0, 44, 2, 44]], columns=list(D.EXTENT_COLUMNS))
    assert D.offset_bounds(knees, (20, 44, 44), (16, 40, 40)).tolist() == [[[2, 2], [0, 4], [2, 4]]]
    # no extent columns: anywhere in the stored volume
    assert D.offset_bounds(pd.DataFrame(index=[0]), (20, 44, 44), (16, 40, 40)).tolist() == [[[0, 4]] * 3]


def test_centre_crop_without_augmentation() -> None:
    gen = torch.Generator().manual_seed(0)
    offsets, _scale, rotation, gamma, _norm = _recipe((20, 44, 44), (16, 40, 40), D.AugmentParams.none()).draw(3, gen)
    assert offsets.tolist() == [[2, 2, 2]] * 3
    assert not rotation.apply.any() and torch.all(gamma.value == 1)


def test_rotation_and_gamma_probabilities_and_ranges() -> None:
    gen = torch.Generator().manual_seed(1)
    _crop, _scale, rotation, gamma, _norm = _recipe((20, 20, 20), (16, 16, 16), D.AugmentParams()).draw(4000, gen)
    assert 0.45 < rotation.apply.float().mean() < 0.55
    assert 0.45 < gamma.apply.float().mean() < 0.55
    rotated = rotation.value[rotation.apply]
    assert rotated.abs().max() <= 15 and rotated.abs().max() > 14
    assert torch.all(rotation.value[~rotation.apply] == 0)
    g = gamma.value[gamma.apply]
    assert g.min() >= 0.5 and g.max() <= 2.0 and g.min() < 0.55 and g.max() > 1.95
    assert torch.all(gamma.value[~gamma.apply] == 1)


def test_draws_do_not_depend_on_earlier_outcomes() -> None:
    # every parameter of every volume is drawn whether or not it is applied: turning the
    # rotation off changes neither the number of random values taken nor the gammas drawn after
    rotating = _recipe((20, 20, 20), (16, 16, 16), D.AugmentParams()).draw(50, torch.Generator().manual_seed(4))
    still = _recipe((20, 20, 20), (16, 16, 16), D.AugmentParams(rotate_p=0.0)).draw(
        50, torch.Generator().manual_seed(4)
    )
    assert torch.equal(rotating[0], still[0]) and torch.equal(rotating[3].value, still[3].value)
    assert rotating[2].apply.any() and not still[2].apply.any()


def test_inference_form_is_the_recipe_without_its_random_steps() -> None:
    recipe = _recipe((20, 20, 20), (16, 16, 16), D.AugmentParams())
    inference = recipe.inference()
    assert [type(s) for s in inference.steps] == [D.Crop, D.ScaleToUnit, D.Normalise]
    assert inference.find(D.Crop).random is False and recipe.find(D.Crop).random is True
    vols = torch.randint(0, 256, (2, 20, 20, 20), dtype=torch.uint8)
    assert torch.equal(inference(vols), D.inference_transforms(_layout())(vols))  # no generator needed
    with pytest.raises(ValueError, match="RandomRotation is random"):
        D.RandomRotation(0.5, 15.0, "sag").draw(2, None)


def test_rotation_keeps_shape_and_uses_one_angle_per_volume() -> None:
    torch.manual_seed(0)
    img = torch.rand(24, 24)
    x = torch.stack([img.expand(5, 24, 24), img.flip(0).expand(5, 24, 24)])  # (2, 5, 24, 24)
    out = D.rotate_in_slice(x, torch.tensor([10.0, -7.0]))
    assert out.shape == x.shape
    for b in range(2):  # every slice of a volume rotated identically
        assert torch.allclose(out[b], out[b, :1].expand_as(out[b]))
    # each volume with its own angle: equal to rotating that single slice alone
    single = D.rotate_in_slice(img.flip(0)[None, None], torch.tensor([-7.0]))
    assert torch.allclose(out[1, 0], single[0, 0], atol=1e-6)
    assert not torch.allclose(out[0, 0], img)


def test_rotation_by_90_degrees_is_exact_and_rigid_on_non_square_slices() -> None:
    img = torch.arange(25.0).view(5, 5)
    out = D.rotate_in_slice(img[None, None], torch.tensor([90.0]))[0, 0]
    assert torch.allclose(out, torch.rot90(img, 1), atol=1e-4) or torch.allclose(out, torch.rot90(img, -1), atol=1e-4)
    # A point 5 px right of the centre of a 21x41 slice lands 5 px above or below it.
    x = torch.zeros(1, 1, 21, 41)
    x[0, 0, 10, 25] = 1.0
    r = D.rotate_in_slice(x, torch.tensor([90.0]))[0, 0]
    peak = divmod(int(r.argmax()), 41)
    assert peak in ((15, 20), (5, 20)) and r.max() > 0.99


def test_gamma_and_scaling() -> None:
    x = torch.tensor([[0.0, 0.25, 1.0]])
    assert torch.allclose(D.apply_gamma(x, torch.tensor([2.0])), x.sqrt())
    v = torch.tensor([[10.0, 20.0, 30.0], [5.0, 5.0, 5.0]])
    assert torch.allclose(D.scale_to_unit(v), torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]))


def test_eval_inputs_are_the_normalised_centre_crop() -> None:
    vols = torch.randint(0, 256, (2, 20, 20, 20), dtype=torch.uint8)
    inputs = D.BatchPreparer(_layout()).eval_inputs(vols)
    x = inputs["sag"]
    assert x.shape == (2, 1, 16, 16, 16) and x.dtype == torch.float32
    centre = vols[:, 2:18, 2:18, 2:18].float()
    lo = centre.flatten(1).amin(1).view(2, 1, 1, 1)
    hi = centre.flatten(1).amax(1).view(2, 1, 1, 1)
    expected = ((centre - lo) / (hi - lo) - D.NORM_MEAN) / D.NORM_STD
    assert torch.allclose(x[:, 0], expected, atol=1e-5)


def test_train_inputs_crop_at_the_drawn_offsets() -> None:
    vols = torch.randint(0, 256, (3, 20, 20, 20), dtype=torch.uint8)
    prep = D.BatchPreparer(_layout(), D.AugmentParams(rotate_p=0.0, gamma_p=0.0))
    draw = prep.draw(3, torch.Generator().manual_seed(3))
    x = prep.apply(vols, draw)["sag"]
    for b, (od, oh, ow) in enumerate(draw[0].tolist()):
        crop = vols[b, od : od + 16, oh : oh + 16, ow : ow + 16].float()
        crop = (crop - crop.min()) / (crop.max() - crop.min())
        assert torch.allclose(x[b, 0], (crop - D.NORM_MEAN) / D.NORM_STD, atol=1e-5)


def test_train_inputs_are_reproducible_for_a_generator_seed() -> None:
    vols = torch.randint(0, 256, (4, 20, 20, 20), dtype=torch.uint8)
    prep = D.BatchPreparer(_layout())
    a = prep.train_inputs(vols, torch.Generator().manual_seed(7))["sag"]
    b = prep.train_inputs(vols, torch.Generator().manual_seed(7))["sag"]
    c = prep.train_inputs(vols, torch.Generator().manual_seed(8))["sag"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.gpu
def test_train_inputs_on_the_gpu_match_the_cpu() -> None:
    # every augmentation applied, so the pinned host-to-device copies of indices, angles and
    # gammas are all exercised
    vols = torch.randint(0, 256, (4, 20, 20, 20), dtype=torch.uint8)
    prep = D.BatchPreparer(_layout(), D.AugmentParams(rotate_p=1.0, gamma_p=1.0))
    draw = prep.draw(4, torch.Generator().manual_seed(5))
    cpu = prep.apply(vols, draw)["sag"]
    gpu = prep.apply(vols.cuda(), draw)["sag"]
    # bilinear weights differ in the last float bits between devices, and x ** (1/g) magnifies
    # that near 0; a wrong index, angle or gamma would differ by O(1)
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-2)


def test_multiview_inputs_are_permutations_of_one_cropped_volume() -> None:
    layout = _layout(stored=(20, 24, 28), crop=(16, 20, 24), model="2dsh_trf")
    vols = torch.randint(0, 256, (2, 20, 24, 28), dtype=torch.uint8)
    inputs = D.BatchPreparer(layout).eval_inputs(vols)
    assert {k: tuple(v.shape[1:]) for k, v in inputs.items()} == layout.input_shapes()
    sag = inputs["sag"]
    assert torch.equal(inputs["cor"], sag.permute(0, 1, 4, 3, 2))
    assert torch.equal(inputs["ax"], sag.permute(0, 1, 3, 4, 2))


def test_preparer_rejects_volumes_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"expected stored volumes \(B, 20, 20, 20\)"):
        D.BatchPreparer(_layout()).eval_inputs(torch.zeros(1, 20, 20, 19, dtype=torch.uint8))


# --------------------------------------------------------------------------- sampling


def test_weighted_sampler_balances_classes_and_is_seeded_per_epoch() -> None:
    classes = np.array([0] * 80 + [1] * 15 + [2] * 5)
    sampler = D.WeightedEpochSampler(classes, seed=0)
    draws = np.concatenate([sampler.indices(e) for e in range(50)])
    share = np.bincount(classes[draws], minlength=3) / draws.size
    assert np.allclose(share, 1 / 3, atol=0.03)  # weights 1/class frequency
    assert len(sampler.indices(0)) == 100  # epoch length = training-set size
    assert np.array_equal(sampler.indices(3), D.WeightedEpochSampler(classes, seed=0).indices(3))
    assert not np.array_equal(sampler.indices(3), sampler.indices(4))


def test_sampler_shards_are_disjoint_and_cover_the_epoch() -> None:
    classes = np.array([0, 1, 2] * 7)  # 21 knees, 2 ranks -> padded to 22
    full = D.WeightedEpochSampler(classes, seed=5).epoch_indices(2)
    shards = [D.WeightedEpochSampler(classes, seed=5, rank=r, world_size=2).indices(2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 11
    merged = np.empty(22, dtype=np.int64)
    merged[0::2], merged[1::2] = shards
    assert np.array_equal(merged[:21], full) and merged[21] == full[0]


def test_batches_never_end_with_a_single_volume() -> None:
    sizes = [len(b) for b in D.batches_of(np.arange(9), 4)]
    assert sizes == [4, 5]
    assert [len(b) for b in D.batches_of(np.arange(8), 4)] == [4, 4]


# --------------------------------------------------------------------------- sources


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    return make_toy_cohort(tmp_path_factory.mktemp("data"), n_subjects=6)


@pytest.mark.parametrize("mode,workers", [("resident", 0), ("workers", 0), ("workers", 2)])
def test_sources_yield_the_stored_bytes(toy: tuple[Path, pd.DataFrame], mode: str, workers: int) -> None:
    store_path, knees = toy
    positions = knees["position"].to_numpy()[::-1].copy()  # any order
    source = D.make_source(mode, VolumeStore.open(store_path), "sag", positions, torch.device("cpu"), workers=workers)
    store = VolumeStore.open(store_path)
    batches = D.batches_of(np.arange(len(positions)), 4)
    try:
        for _epoch in range(2):  # a second epoch reuses the (persistent) workers
            for batch, volumes in zip(batches, source.iterate(batches), strict=True):
                assert volumes.dtype == torch.uint8 and volumes.shape == (len(batch), 20, 36, 36)
                for i, item in enumerate(batch):
                    assert np.array_equal(volumes[i].numpy(), store.read("sag", positions[item]))
    finally:
        source.close()


def test_store_volumes_do_not_pickle_the_open_store(toy: tuple[Path, pd.DataFrame]) -> None:
    store_path, knees = toy
    ds = D.StoreVolumes(str(store_path), "sag", knees["position"])
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._store is None and np.array_equal(clone[3], ds[3])


# --------------------------------------------------------------------------- knee tables


def _knees() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "knee_id": [1, 2, 3, 4, 5, 6],
            "subject_id": [10, 10, 11, 11, 12, 12],
            "side": ["R", "L"] * 3,
            "label": ["none", "fast", "none", "slow", "none", "none"],
            "role": ["train", "train", "train", "train", "test", "test"],
            "fold": [0, 0, 1, 1, None, None],
            "position": [0, 1, 2, 3, 4, 5],
        }
    )


def test_validate_knees_adds_class_indices() -> None:
    out = D.validate_knees(_knees())
    assert out["y"].tolist() == [0, 1, 0, 2, 0, 0]


def test_leakage_check_refuses_a_test_subject_in_training() -> None:
    knees = _knees()
    knees.loc[5, "subject_id"] = 10  # a test knee of a training subject
    knees.loc[5, "role"] = "test"
    with pytest.raises(LeakageError, match=r"1 test-set subject\(s\) also appear.*subject 10"):
        D.validate_knees(knees)


def test_leakage_check_refuses_a_subject_in_two_folds() -> None:
    knees = _knees()
    knees.loc[1, "fold"] = 1
    with pytest.raises(LeakageError, match="more than one cross-validation fold.*subject 10"):
        D.validate_knees(knees)


def test_validate_knees_names_bad_labels_and_roles() -> None:
    knees = _knees()
    knees.loc[0, "label"] = "rapid"
    with pytest.raises(D.DataError, match="'rapid'"):
        D.validate_knees(knees)
    knees = _knees()
    knees.loc[0, "role"] = "val"
    with pytest.raises(D.DataError, match=r"unknown role\(s\) \['val'\]"):
        D.validate_knees(knees)
