"""Reading DICOM series: ordering by position, consistency checks, corrupt series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless

from oaicohort.errors import InputFileError
from oaicohort.imaging.series.dicom import DicomVolume, SeriesError, read_series, side_from_description
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaicohort.synth.mri_anatomy import render_knee_volume
from oaicohort.synth.raster import image_geometry

SPACING = (0.7, 0.365, 0.365)
META = SeriesMeta(
    patient_id="9000099",
    series_description="SAG_3D_DESS_LEFT",
    study_date="20041104",
    accession_number="016610201903",
    spacing_mm=SPACING,
)


@pytest.fixture
def volume() -> np.ndarray:
    """A tiny series with distinct slices: 6 slices of 12x10 (rows x cols)."""
    return np.random.default_rng(7).integers(0, 4096, size=(6, 12, 10), dtype=np.uint16)


def write(folder: Path, volume: np.ndarray, meta: SeriesMeta = META, **kwargs) -> Path:
    write_series(folder, volume, meta, **kwargs)
    return folder


def assert_fails(folder: Path, file_name: str | None, *words: str) -> SeriesError:
    with pytest.raises(SeriesError) as caught:
        read_series(folder)
    error = caught.value
    if file_name is not None:
        assert error.path == folder / file_name, str(error)
        assert file_name in str(error)
    for word in words:
        assert word in error.reason, error.reason
    return error


def test_round_trip_of_a_rendered_small_series(tmp_path: Path) -> None:
    geometry = image_geometry("small")
    rendered = render_knee_volume(0.5, "R", np.random.default_rng(3), "small")
    meta = SeriesMeta("9000099", "SAG_3D_DESS_RIGHT", study_date="20050301", spacing_mm=geometry.spacing_mm)
    write(tmp_path / "s", rendered, meta)

    series = read_series(tmp_path / "s", expected_description="SAG_3D_DESS_RIGHT")

    assert isinstance(series, DicomVolume)
    assert series.pixels.dtype == np.uint16
    assert series.shape == geometry.shape == (40, 96, 96)
    np.testing.assert_array_equal(series.pixels, rendered)
    assert series.spacing_mm == pytest.approx(geometry.spacing_mm)
    assert (series.side, series.patient_id, series.study_date) == ("R", "9000099", "20050301")
    assert series.photometric == "MONOCHROME2"
    assert series.series_description == "SAG_3D_DESS_RIGHT"
    assert series.orientation == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert [p.name for p in series.files] == [f"{k:03d}" for k in range(1, 41)]
    assert series.notes == []


def test_slices_are_sorted_by_position_not_file_name(tmp_path: Path, volume: np.ndarray) -> None:
    names = ["004", "001", "006", "002", "005", "003"]
    write(tmp_path / "s", volume, file_names=names)

    series = read_series(tmp_path / "s")

    np.testing.assert_array_equal(series.pixels, volume)
    assert [p.name for p in series.files] == names
    assert any("sorted by position" in note for note in series.notes)


def test_position_is_measured_along_the_slice_normal(tmp_path: Path, volume: np.ndarray) -> None:
    # Axial orientation: the normal is +z, so the position is the z coordinate of each slice.
    axial = SeriesMeta("1", "AX_TEST", orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing_mm=(1.5, 0.5, 0.5))
    write(tmp_path / "s", volume, axial, positions_mm=[7.5, 0.0, 6.0, 1.5, 4.5, 3.0])

    series = read_series(tmp_path / "s")

    np.testing.assert_array_equal(series.pixels, volume[[1, 3, 5, 4, 2, 0]])
    assert series.spacing_mm == pytest.approx((1.5, 0.5, 0.5))
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in series.files]
    assert z == sorted(z)
    assert series.side is None


def test_missing_slice_names_the_file_after_the_gap(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    (folder / "004").unlink()
    assert_fails(folder, "005", "missing slice", "003", "1 slice")


def test_inconsistent_spacing(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume, positions_mm=[0.0, 0.7, 1.4, 2.35, 2.8, 3.5])
    assert_fails(folder, "004", "inconsistent slice spacing")


def test_duplicate_positions(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume, positions_mm=[0.0, 0.7, 1.4, 1.4, 2.1, 2.8])
    assert_fails(folder, "004", "duplicate slice position", "003")


def test_non_dicom_file_named_like_a_slice(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    (folder / "001").write_text("this is not an image\n")
    assert_fails(folder, "001", "not a DICOM file")


def test_slice_truncated_inside_the_pixel_data(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    data = (folder / "003").read_bytes()
    (folder / "003").write_bytes(data[:-40])
    assert_fails(folder, "003", "pixel data has", "truncated")


def test_slice_truncated_inside_the_header(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    data = (folder / "002").read_bytes()
    (folder / "002").write_bytes(data[:400])
    assert_fails(folder, "002", "truncated")


def test_dicom_without_pixel_data(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    ds = pydicom.dcmread(folder / "002")
    del ds.PixelData
    ds.save_as(folder / "002")
    assert_fails(folder, "002", "no pixel data")


def test_mixed_slice_sizes(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    other = write(tmp_path / "other", np.zeros((6, 12, 8), dtype=np.uint16))
    shutil.copy(other / "003", folder / "003")
    assert_fails(folder, "003", "12x8", "12x10")


def test_files_of_two_series_in_one_folder(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    other_meta = SeriesMeta("9000099", "SAG_3D_DESS_LEFT", series_uid="1.2.3.4", spacing_mm=SPACING)
    other = write(tmp_path / "other", volume, other_meta)
    shutil.copy(other / "006", folder / "007")
    assert_fails(folder, "007", "SeriesInstanceUID", "two series")


def test_single_slice_series(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume[:1])
    assert_fails(folder, "001", "single slice")


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    error = assert_fails(tmp_path / "empty", None, "no slice files")
    assert error.path == tmp_path / "empty"
    error = assert_fails(tmp_path / "absent", None, "does not exist")
    assert error.path == tmp_path / "absent"


def test_series_error_is_an_input_file_error_naming_the_file(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    (folder / "003").write_bytes(b"")
    with pytest.raises(InputFileError, match=r"s[/\\]003: "):
        read_series(folder)


def test_monochrome1_is_inverted(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume, photometric="MONOCHROME1")
    stored = pydicom.dcmread(folder / "001").pixel_array
    np.testing.assert_array_equal(stored, 4095 - volume[0])

    series = read_series(folder)

    np.testing.assert_array_equal(series.pixels, volume)
    assert series.photometric == "MONOCHROME1"
    assert "MONOCHROME1 inverted" in series.notes


def test_rle_compressed_series_is_decoded(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume, transfer_syntax=RLELossless)
    assert pydicom.dcmread(folder / "001").file_meta.TransferSyntaxUID == RLELossless

    series = read_series(folder)

    np.testing.assert_array_equal(series.pixels, volume)
    assert any("RLE Lossless" in note for note in series.notes)


def test_undecodable_compression_names_the_transfer_syntax(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8not really jpeg-ls\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path)
    # Either no decoder is installed or the fragment is garbage: both must fail on the first file.
    error = assert_fails(folder, "001")
    assert "JPEG-LS" in error.reason or "decode" in error.reason


def test_expected_description_mismatch(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    assert read_series(folder, expected_description=" sag_3d_dess_left ").side == "L"
    with pytest.raises(SeriesError, match="expected 'SAG_3D_DESS_RIGHT'"):
        read_series(folder, expected_description="SAG_3D_DESS_RIGHT")


def test_hidden_files_are_ignored_with_a_note(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")

    series = read_series(folder)

    np.testing.assert_array_equal(series.pixels, volume)
    assert any(".DS_Store" in note for note in series.notes)


def test_declared_slice_spacing_that_disagrees_with_positions_is_noted(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume, positions_mm=[1.0 * k for k in range(6)])

    series = read_series(folder)

    assert series.spacing_mm[0] == pytest.approx(1.0)
    assert any("SpacingBetweenSlices 0.7" in note for note in series.notes)


@pytest.mark.parametrize(
    ("description", "side"),
    [("SAG_3D_DESS_RIGHT", "R"), ("SAG_3D_DESS_LEFT  ", "L"), ("cor_mpr_left", "L"), ("AX_T1_THIGH", None)],
)
def test_side_from_description(description: str, side: str | None) -> None:
    assert side_from_description(description) == side


def test_slices_may_differ_in_encoding_but_not_in_value(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    compressed = write(tmp_path / "rle", volume, transfer_syntax=RLELossless)
    shutil.copy(compressed / "002", folder / "002")  # same series, one slice RLE-compressed
    ds = pydicom.dcmread(folder / "005")
    ds.PixelSpacing = ["0.36500", "0.365000"]  # same value written differently
    ds.save_as(folder / "005")

    series = read_series(folder)

    np.testing.assert_array_equal(series.pixels, volume)


def test_pixel_spacing_that_really_differs_is_rejected(tmp_path: Path, volume: np.ndarray) -> None:
    folder = write(tmp_path / "s", volume)
    ds = pydicom.dcmread(folder / "005")
    ds.PixelSpacing = ["0.4", "0.365"]
    ds.save_as(folder / "005")
    assert_fails(folder, "005", "PixelSpacing", "001")
