"""Preprocessing steps on hand-made arrays: intensity, flip, margin/pad, downsample, views."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from oaicohort.imaging.recipe.intensity import intensity_range, map_intensity, percentile_of_counts
from oaicohort.imaging.recipe.mri import block_mean, centre_fit, fit_region, orient_left, preprocess_mri
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.series.size import ImageTooSmall, minimum_source_shape
from oaicohort.vocabulary import MRI_VIEWS


@dataclass
class FakeSeries:
    pixels: np.ndarray
    spacing_mm: tuple[float, float, float] = (0.7, 0.365, 0.365)
    side: str = "L"


def tiny_params(**overrides: object) -> PreprocessParams:
    base = dict(
        preset="test",
        margin=2,
        inplane_size=(8, 8),
        n_slices=4,
        downsample=2,
        sag_crop=(2, 2, 2),
        reprojection_blocks=(4, 2, 1),
        reprojection_crop=(2, 4, 4),
    )
    base.update(overrides)
    return PreprocessParams(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- params


def test_full_and_small_geometry() -> None:
    full, small = PreprocessParams.full(), PreprocessParams.small()
    assert full.stored_shape("sag") == (80, 176, 176)
    assert full.crop_shape("sag") == (64, 160, 160)
    assert full.stored_shape("cor") == full.stored_shape("ax") == (88, 176, 160)
    assert full.crop_shape("cor") == (80, 160, 128)
    assert small.stored_shape("sag") == (20, 44, 44)
    assert small.crop_shape("sag") == (16, 40, 40)
    for p in (full, small):
        n = np.prod(p.crop_shape("sag"))
        assert np.prod(p.crop_shape("cor")) == np.prod(p.crop_shape("ax")) == n


def test_params_hash_is_stable_and_sensitive() -> None:
    # a change to this value means every existing store is silently re-bound: bump deliberately
    assert PreprocessParams().hash() == PreprocessParams.full().hash()
    assert PreprocessParams.from_dict(PreprocessParams.small().to_dict()) == PreprocessParams.small()
    assert PreprocessParams.from_dict(PreprocessParams().to_dict()).hash() == PreprocessParams().hash()
    assert PreprocessParams(percentile_high=99.5).hash() != PreprocessParams().hash()
    assert len(PreprocessParams().hash()) == 64


def test_params_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="crop"):
        PreprocessParams(sag_crop=(90, 160, 160))
    with pytest.raises(ValueError, match="divisible"):
        PreprocessParams(n_slices=161)
    with pytest.raises(ValueError, match="unknown preprocessing parameters"):
        PreprocessParams.from_dict({"margn": 3})
    with pytest.raises(ValueError, match="intensity_mode"):
        PreprocessParams(intensity_mode="linear")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- intensity


def test_percentile_of_counts_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    values = rng.integers(0, 300, 10_001)
    counts = np.bincount(values)
    for q in (0.0, 12.5, 50.0, 99.9, 100.0):
        assert percentile_of_counts(counts, q) == pytest.approx(np.percentile(values, q))


@pytest.mark.parametrize("seed", range(4))
def test_intensity_range_equals_numpy_percentile(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # skewed like MR: mostly dark, a bright tail, a few extreme voxels
    pixels = np.minimum(rng.gamma(2.0, 150.0, (24, 40, 40)), 65535).astype(np.uint16)
    pixels[0, 0, : seed * 3] = 60000
    shifted = pixels >> 3
    for lo, hi in ((0.0, 99.9), (0.0, 95.0), (1.0, 99.0)):
        params = PreprocessParams(percentile_low=lo, percentile_high=hi)
        assert intensity_range(pixels, params) == pytest.approx(tuple(np.percentile(shifted, [lo, hi])), abs=1e-9)


def test_intensity_reference_shift_clip_cast() -> None:
    # 1000 voxels: shifted values 0..999 >> 3; p99.9 of 0..999 (shifted) is computed by hand
    raw = (np.arange(1000, dtype=np.uint16) * 8).reshape(10, 10, 10)  # shifted = 0..999
    params = PreprocessParams(intensity_mode="reference")
    out, notes = map_intensity(raw, params)
    # p99.9 of 0..999 = 0.999*999 = 998.001 > 255 -> rescaled onto 0..255
    assert notes["intensity_rescaled"] is True
    assert out.max() == 255 and out.min() == 0

    # typical DESS: shifted values below 256: 750 zeros and 0..249 once; p99.9 = 248.001
    shifted_values = np.concatenate([np.zeros(750), np.arange(250)]).astype(np.uint16)
    raw = (shifted_values * 8 + 5).reshape(10, 10, 10)
    out, notes = map_intensity(raw, params)
    shifted = (raw >> 3).astype(float)
    p_hi = np.percentile(shifted, 99.9)
    assert notes["intensity_range"] == [0.0, pytest.approx(p_hi, abs=1e-3)]
    assert "intensity_rescaled" not in notes
    expected = np.clip(shifted, 0, p_hi).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert p_hi == pytest.approx(248.001)
    assert out.max() == 248  # 249 clipped to 248.001, truncated by the cast


def test_intensity_rescale_mode_maps_range_to_full_byte() -> None:
    raw = np.array([0, 8, 16, 800], dtype=np.uint16).reshape(1, 2, 2)  # shifted 0, 1, 2, 100
    out, _ = map_intensity(raw, PreprocessParams(intensity_mode="rescale", percentile_high=100))
    np.testing.assert_array_equal(out.ravel(), [0, 3, 5, 255])  # round(x * 255 / 100)


def test_intensity_rejects_non_uint16() -> None:
    with pytest.raises(ValueError, match="uint16"):
        map_intensity(np.zeros((2, 2, 2), dtype=np.int32), PreprocessParams())


# --------------------------------------------------------------------------- geometry


def test_right_knee_flipped_along_slices_left_untouched() -> None:
    vol = np.arange(3 * 2 * 2).reshape(3, 2, 2)
    params = PreprocessParams()
    np.testing.assert_array_equal(orient_left(vol, "R", params)[0], vol[2])
    np.testing.assert_array_equal(orient_left(vol, "L", params), vol)
    assert orient_left(vol, "R", PreprocessParams(flip_right=False)) is vol
    with pytest.raises(ValueError, match="side"):
        orient_left(vol, "X", params)


def test_centre_fit_pads_and_crops_deterministically() -> None:
    a = np.arange(5)[:, None]
    padded, change = centre_fit(a, 0, 8, pad_value=0)
    assert change == 3 and padded[:, 0].tolist() == [0, 0, 1, 2, 3, 4, 0, 0]
    cropped, change = centre_fit(a, 0, 2)
    assert change == -3 and cropped[:, 0].tolist() == [1, 2]


def test_margin_cut_from_384_gives_352() -> None:
    vol = np.zeros((160, 384, 384), dtype=np.uint8)
    vol[:, 16:368, 16:368] = 7  # everything outside the margin
    region, notes = fit_region(vol, PreprocessParams())
    assert region.shape == (160, 352, 352) and (region == 7).all() and notes == {}


def test_352_wide_and_short_series_are_padded_with_notes() -> None:
    vol = np.full((150, 384, 352), 9, dtype=np.uint8)
    region, notes = fit_region(vol, PreprocessParams())
    assert region.shape == (160, 352, 352)
    # 352 - 2*16 = 320 columns of data, 16 zero columns each side; 5 empty slices each side
    assert notes == {"slices_padded": {"from": 150, "to": 160}, "cols_padded": {"from": 320, "to": 352}}
    assert (region[5:155, :, 16:336] == 9).all()
    assert region[:5].max() == 0 and region[155:].max() == 0 and region[:, :, :16].max() == 0


def test_long_series_is_centre_cropped_with_note() -> None:
    vol = np.arange(176, dtype=np.uint8)[:, None, None] * np.ones((1, 384, 384), dtype=np.uint8)
    region, notes = fit_region(vol, PreprocessParams())
    assert notes == {"slices_cropped": {"from": 176, "to": 160}}
    assert region[0, 0, 0] == 8 and region[-1, 0, 0] == 167


def test_downsample_is_rounded_mean_of_2x2x2_blocks() -> None:
    a = np.zeros((2, 2, 4), dtype=np.uint8)
    a[:, :, :2] = [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]  # mean 3.5 -> 4 (half up)
    a[:, :, 2:] = 255  # no overflow: sum 2040 held in uint16
    a[0, 0, 2] = 254  # mean 254.875 -> 255
    out = block_mean(a, (2, 2, 2))
    assert out.shape == (1, 1, 2) and out.dtype == np.uint8
    assert out.tolist() == [[[4, 255]]]
    b = np.array([1, 2, 2, 2, 2, 2, 2, 2], dtype=np.uint8).reshape(2, 2, 2)  # 15/8=1.875 -> 2
    assert block_mean(b, (2, 2, 2)).item() == 2
    with pytest.raises(ValueError, match="divisible"):
        block_mean(np.zeros((3, 2, 2), dtype=np.uint8), (2, 2, 2))


def test_downsample_matches_float_mean_on_random_data() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 6, 8), dtype=np.uint8)
    expected = np.floor(a.reshape(2, 2, 3, 2, 4, 2).mean(axis=(1, 3, 5)) + 0.5)
    np.testing.assert_array_equal(block_mean(a, (2, 2, 2)), expected)


# --------------------------------------------------------------------------- whole series


def test_preprocess_mri_shapes_voxel_counts_and_spacing() -> None:
    params = tiny_params()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 1600, (4, 12, 12), dtype=np.uint16)
    out = preprocess_mri(FakeSeries(pixels), params)
    assert set(out.volumes) == set(MRI_VIEWS)
    for view in MRI_VIEWS:
        assert out.volumes[view].shape == params.stored_shape(view)
        assert out.volumes[view].dtype == np.uint8
    assert params.stored_shape("sag") == (2, 4, 4)
    assert params.stored_shape("cor") == (2, 4, 4)  # (cols/4, rows/2, slices)
    assert out.spacing_mm["sag"] == (1.4, 0.73, 0.73)
    assert out.spacing_mm["cor"] == pytest.approx((1.46, 0.73, 0.7))
    # every view is a block mean of the same 4x8x8 region: totals agree up to rounding
    region_mean = out.volumes["sag"].astype(float).mean()
    for view in ("cor", "ax"):
        assert abs(out.volumes[view].astype(float).mean() - region_mean) < 1.0


def test_reprojections_are_block_means_of_transposed_region() -> None:
    params = tiny_params(intensity_mode="rescale", percentile_high=100.0)
    pixels = np.zeros((4, 12, 12), dtype=np.uint16)
    # one bright voxel at slice 1, row 3, col 6 of the region (rows/cols offset by the margin)
    pixels[1, 3 + 2, 6 + 2] = 8 * 255
    out = preprocess_mri(FakeSeries(pixels), params)
    cor, ax, sag = out.volumes["cor"], out.volumes["ax"], out.volumes["sag"]
    # cor = (cols/4, rows/2, slices): 255/8 rounded = 32
    assert np.argwhere(cor).tolist() == [[6 // 4, 3 // 2, 1]] and cor.max() == 32
    assert np.argwhere(ax).tolist() == [[3 // 4, 6 // 2, 1]] and ax.max() == 32
    assert np.argwhere(sag).tolist() == [[0, 1, 3]] and sag.max() == 32


def test_preprocess_flips_right_knee_and_records_notes() -> None:
    params = tiny_params()
    pixels = np.zeros((4, 12, 12), dtype=np.uint16)
    pixels[0] = 1000  # first slice bright
    left = preprocess_mri(FakeSeries(pixels, side="L"), params, views=("sag",))
    right = preprocess_mri(FakeSeries(pixels, side="R"), params, views=("sag",))
    assert left.volumes["sag"][0].max() > 0 and left.volumes["sag"][1].max() == 0
    np.testing.assert_array_equal(right.volumes["sag"], left.volumes["sag"][::-1])
    assert right.notes["flipped"] is True and "flipped" not in left.notes
    assert set(right.volumes) == {"sag"}


def test_preprocess_short_narrow_series_notes() -> None:
    params = tiny_params(too_small="pad")  # the pre-reference behaviour, kept as an option
    pixels = np.full((3, 12, 10), 800, dtype=np.uint16)
    out = preprocess_mri(FakeSeries(pixels), params)
    assert out.notes["slices_padded"] == {"from": 3, "to": 4}
    assert out.notes["cols_padded"] == {"from": 6, "to": 8}
    assert out.notes["source_shape"] == [3, 12, 10]


def test_preprocess_excludes_series_smaller_than_the_crop_by_default() -> None:
    params = tiny_params()
    assert params.too_small == "exclude" and minimum_source_shape(params) == (4, 8, 8)
    with pytest.raises(ImageTooSmall, match=r"^image_too_small: series is 3x12x10 .* at least 4x8x8"):
        preprocess_mri(FakeSeries(np.full((3, 12, 10), 800, dtype=np.uint16)), params)
    with pytest.raises(ImageTooSmall, match="image_too_small: series is 4x12x7"):
        preprocess_mri(FakeSeries(np.full((4, 12, 7), 800, dtype=np.uint16)), params)
    assert preprocess_mri(FakeSeries(np.full((4, 8, 8), 800, dtype=np.uint16)), params).volumes


def test_preprocess_params_record_fidelity_switches_and_keep_legacy_hashes() -> None:
    params = PreprocessParams()
    assert params.to_dict()["canonical_orientation"] is True and params.to_dict()["too_small"] == "exclude"
    legacy = {k: v for k, v in params.to_dict().items() if k not in ("canonical_orientation", "too_small")}
    old = PreprocessParams.from_dict(legacy)  # a store written before the switches existed
    assert old.canonical_orientation is False and old.too_small == "pad"
    assert old.hash() != params.hash()
    assert PreprocessParams.from_dict(old.to_dict()).hash() == old.hash()
    with pytest.raises(ValueError, match="too_small"):
        PreprocessParams(too_small="crop")  # type: ignore[arg-type]


def test_xray_pixel_size_is_the_references_and_old_stores_keep_their_hash() -> None:
    """New stores: 700 pixels of 0.195 mm (136.5 mm); a store made before issue 21 (140 mm at
    0.2 mm, recorded in its params) keeps the hash it was made with."""
    import dataclasses

    params = PreprocessParams()
    assert (params.xray_resample_mm, params.xray_roi_mm) == (0.195, 136.5)
    assert round(params.xray_roi_mm / params.xray_resample_mm) == 700
    # the hashes of the full and small presets before the change (commit fa8a18c)
    before = {
        "full": "97b38072c3142f80c2fc5193a11c38450373dbccebad71a6e6d79024d531c1de",
        "small": "6e11ea51e5b5aa4741b2bd064af9c9cdf4d369a128d09b6f33e67b4cac20b484",
    }
    for name, digest in before.items():
        old = dataclasses.replace(PreprocessParams.preset_named(name), xray_roi_mm=140.0, xray_resample_mm=0.2)
        assert old.hash() == digest
        assert PreprocessParams.from_dict(old.to_dict()).hash() == digest  # as a store records it
        assert PreprocessParams.preset_named(name).hash() != digest  # a new store is another identity


def test_preprocess_rejects_too_small_series() -> None:
    with pytest.raises(ValueError, match="too small"):
        preprocess_mri(FakeSeries(np.zeros((4, 4, 4), dtype=np.uint16)), tiny_params(too_small="pad"))
