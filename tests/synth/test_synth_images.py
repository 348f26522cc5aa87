"""Synthetic DESS series: DICOM content, determinism, parallel writing, latent-driven anatomy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from oaicohort.errors import InputFileError
from oaicohort.imaging.series.dicom import read_series
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaicohort.synth.images import write_images
from oaicohort.synth.mri_anatomy import knee_anatomy, render_knee_volume
from oaicohort.synth.raster import IMAGE_SIZES, ImageGeometry

CONTENTS = """Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription
0.C.2/9000099/20040909/10249506,9000099,20040909,016610201903,OAI^MR^ENROLLMENT^RIGHT,SAG_3D_DESS_RIGHT
0.C.2/9000099/20040909/10249507,9000099,20040909,016610201903,OAI^MR^ENROLLMENT^RIGHT,COR_MPR_RIGHT
0.C.2/9000099/20040909/10249512,9000099,20040909,016610201903,OAI^MR^ENROLLMENT^LEFT,  SAG_3D_DESS_LEFT   
0.E.1/9000296/20050112/11381903,9000296,20050112,16610301417,OAI^MR^ENROLLMENT^LEFT,SAG_3D_DESS_LEFT
"""
TRUTH = """subject_id,side,latent,label_hint
9000099,R,1.8,fast
9000099,L,-0.4,none
9000296,L,0.2,slow
9000296,R,0.0,none
"""
DESS_FOLDERS = [
    "0.C.2/9000099/20040909/10249506",
    "0.C.2/9000099/20040909/10249512",
    "0.E.1/9000296/20050112/11381903",
]


def make_release(root: Path, contents: str = CONTENTS, truth: str = TRUTH) -> Path:
    (root / "00m").mkdir(parents=True)
    (root / "00m" / "contents.csv").write_text(contents)
    (root / "synth_truth.csv").write_text(truth)
    return root


def series_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in (root / "00m").rglob("*") if p.is_file() and p.name != "contents.csv")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def small_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_release(tmp_path_factory.mktemp("release"))
    calls: list[tuple[str, float, float | None]] = []
    written = write_images(root, size="small", seed=5, progress=lambda *a: calls.append(a))
    assert written == 3
    assert calls[0] == ("images", 0, 3) and calls[-1] == ("images", 3, 3)
    return root


def test_one_file_per_slice_for_every_dess_row_only(small_release: Path) -> None:
    visit = small_release / "00m"
    for folder in DESS_FOLDERS:
        assert sorted(p.name for p in (visit / folder).iterdir()) == [f"{k:03d}" for k in range(1, 41)]
    assert not (visit / "0.C.2/9000099/20040909/10249507").exists()


def test_dicom_headers_are_realistic(small_release: Path) -> None:
    folder = small_release / "00m" / DESS_FOLDERS[0]
    first = pydicom.dcmread(folder / "001")
    last = pydicom.dcmread(folder / "040")

    assert first.preamble == b"\x00" * 128
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPClassUID == MRImageStorage == first.SOPClassUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID != last.SOPInstanceUID
    assert first.SeriesInstanceUID == last.SeriesInstanceUID
    assert (first.PatientID, first.StudyDate, first.AccessionNumber) == ("9000099", "20040909", "016610201903")
    assert (first.StudyDescription, first.SeriesDescription) == ("OAI^MR^ENROLLMENT^RIGHT", "SAG_3D_DESS_RIGHT")
    assert (first.Modality, first.Manufacturer, first.ManufacturerModelName) == ("MR", "SIEMENS", "Trio")
    assert float(first.MagneticFieldStrength) == 3.0
    assert (first.Rows, first.Columns) == (96, 96)
    assert [float(v) for v in first.PixelSpacing] == [1.46, 1.46]
    assert float(first.SliceThickness) == pytest.approx(2.8)
    assert float(first.SpacingBetweenSlices) == pytest.approx(2.8)
    assert [float(v) for v in first.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
    assert (first.BitsAllocated, first.BitsStored, first.HighBit, first.PixelRepresentation) == (16, 12, 11, 0)
    assert (first.SamplesPerPixel, first.PhotometricInterpretation) == (1, "MONOCHROME2")
    assert (first.InstanceNumber, last.InstanceNumber) == (1, 40)
    # sagittal: the normal of [0,1,0]x[0,0,-1] is -x; positions move along it by the spacing
    x = [float(pydicom.dcmread(folder / f"{k:03d}").ImagePositionPatient[0]) for k in (1, 2, 40)]
    assert x[0] - x[1] == pytest.approx(2.8) and x[0] - x[2] == pytest.approx(39 * 2.8)
    assert first.pixel_array.dtype == np.uint16 and first.pixel_array.max() <= 4095


def test_series_read_back_with_side_and_geometry(small_release: Path) -> None:
    for folder, side in zip(DESS_FOLDERS, ("R", "L", "L")):
        series = read_series(small_release / "00m" / folder)
        assert series.side == side
        assert series.shape == IMAGE_SIZES["small"].shape
        assert series.spacing_mm == pytest.approx(IMAGE_SIZES["small"].spacing_mm)
        assert series.notes == []
        assert 200 < series.pixels.mean() < 1200


def test_same_seed_same_bytes_other_seed_other_images(small_release: Path, tmp_path: Path) -> None:
    again = make_release(tmp_path / "again")
    write_images(again, size="small", seed=5)
    assert series_bytes(again) == series_bytes(small_release)

    other = make_release(tmp_path / "other")
    write_images(other, size="small", seed=6)
    reference = read_series(small_release / "00m" / DESS_FOLDERS[0]).pixels
    assert not np.array_equal(read_series(other / "00m" / DESS_FOLDERS[0]).pixels, reference)


def test_two_workers_write_the_same_files_as_one(small_release: Path, tmp_path: Path) -> None:
    parallel = make_release(tmp_path / "parallel")
    assert write_images(parallel, size="small", seed=5, workers=2) == 3
    assert series_bytes(parallel) == series_bytes(small_release)


def test_rewrite_replaces_a_longer_earlier_series(tmp_path: Path) -> None:
    root = make_release(tmp_path / "r")
    stale = root / "00m" / DESS_FOLDERS[0] / "041"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write_images(root, size="small", seed=1)
    assert not stale.exists()
    assert read_series(stale.parent).shape[0] == 40


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_fast_slice_encoder_writes_the_same_bytes_as_pydicom(tmp_path: Path, photometric: str) -> None:
    volume = render_knee_volume(0.0, "L", np.random.default_rng(4), ImageGeometry(5, 16, 12, 2.8, 1.46, 1.46))
    meta = SeriesMeta("9000099", "SAG_3D_DESS_LEFT", accession_number="016610201", spacing_mm=(2.8, 1.46, 1.46))
    options = {"photometric": photometric, "positions_mm": [0.0, 2.8, 5.6, 8.4, 11.2], "file_names": list("edcba")}
    fast = write_series(tmp_path / "fast", volume, meta, **options)
    slow = write_series(tmp_path / "pydicom", volume, meta, force_pydicom=True, **options)
    for a, b in zip(fast, slow):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes()
    assert pydicom.dcmread(fast[0]).file_meta.ImplementationVersionName == "OAICOHORT_SYNTH"


def test_right_knee_is_the_mirror_image_of_the_left() -> None:
    left = render_knee_volume(0.3, "L", np.random.default_rng(11), "small")
    right = render_knee_volume(0.3, "R", np.random.default_rng(11), "small")
    np.testing.assert_array_equal(right, left[::-1])
    # and the knee itself is not symmetric, so the flip matters
    assert np.abs(left.astype(int) - left[::-1].astype(int)).mean() > 20


def test_render_is_deterministic_and_uses_the_full_geometry() -> None:
    tiny = ImageGeometry(slices=10, rows=24, cols=24, slice_spacing_mm=11.2, row_spacing_mm=5.84, col_spacing_mm=5.84)
    a = render_knee_volume(0.0, "L", np.random.default_rng(2), tiny)
    b = render_knee_volume(0.0, "L", np.random.default_rng(2), tiny)
    assert a.shape == (10, 24, 24) and a.dtype == np.uint16
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown image size"):
        render_knee_volume(0.0, "L", np.random.default_rng(2), "huge")
    with pytest.raises(ValueError, match="side"):
        render_knee_volume(0.0, "right", np.random.default_rng(2), tiny)


def test_anatomy_follows_the_latent_factor() -> None:
    latents = [-2.0, -1.0, 0.0, 1.0, 2.0]
    for seed in range(5):
        knees = [knee_anatomy(z, np.random.default_rng(seed)) for z in latents]
        medial = [k.joint_space_mm[0] for k in knees]
        assert medial == sorted(medial, reverse=True), medial
        assert medial[0] - medial[-1] > 3.0
        # subject variation is the same whatever the latent
        assert len({k.shift_mm for k in knees}) == 1
    knees = {z: [knee_anatomy(z, np.random.default_rng(s)) for s in range(200)] for z in (-1.0, 1.5)}
    lesions = {z: np.mean([len(k.marrow_lesions) for k in knees[z]]) for z in knees}
    spurs = {z: np.mean([len(k.osteophytes) for k in knees[z]]) for z in knees}
    assert lesions[1.5] > 3 * lesions[-1.0]
    assert spurs[1.5] > 3 * spurs[-1.0]


def _medial_cartilage_voxels(volume: np.ndarray) -> int:
    """Cartilage-bright voxels in a box around the medial tibiofemoral joint of a small left knee."""
    g = IMAGE_SIZES["small"]
    s, r, c = g.shape
    x = (np.arange(s) - (s - 1) / 2) * g.slice_spacing_mm
    z = -(np.arange(r) - (r - 1) / 2) * g.row_spacing_mm
    y = (np.arange(c) - (c - 1) / 2) * g.col_spacing_mm
    box = volume[np.ix_((x > -32) & (x < -8), (z > -10) & (z < 16), (y > -8) & (y < 16))]
    # relative to the median (muscle-dominated) so the subject's intensity scale cancels; marrow
    # lesions (fainter than cartilage) stay below it
    return int((box > 2.2 * np.median(volume)).sum())


def test_latent_factor_is_visible_in_the_image() -> None:
    # Same subject (seed), three latents: thinner cartilage means fewer bright voxels at the joint.
    for seed in range(4):
        counts = [
            _medial_cartilage_voxels(render_knee_volume(z, "L", np.random.default_rng(seed), "small"))
            for z in (-1.5, 0.0, 1.5)
        ]
        assert counts[0] > counts[1] > counts[2], (seed, counts)
        assert counts[0] > 1.3 * counts[2], (seed, counts)


def test_missing_inputs_and_bad_rows_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "00m").mkdir(parents=True)
    with pytest.raises(InputFileError, match="contents.csv"):
        write_images(root, size="small")
    (root / "00m" / "contents.csv").write_text(CONTENTS)
    with pytest.raises(InputFileError, match="synth_truth.csv"):
        write_images(root, size="small")

    bad_latent = make_release(tmp_path / "latent", truth=TRUTH.replace("1.8", "high"))
    with pytest.raises(InputFileError, match=r"synth_truth.csv, line 2, column 'latent'"):
        write_images(bad_latent, size="small")

    no_latent = make_release(tmp_path / "nolatent", truth=TRUTH.replace("9000296,L,0.2,slow\n", ""))
    with pytest.raises(InputFileError, match="no latent for subject 9000296 side L"):
        write_images(no_latent, size="small")

    escaping = make_release(tmp_path / "escape", contents=CONTENTS.replace("0.E.1/9000296", "../../9000296"))
    with pytest.raises(InputFileError, match=r"line 5, column 'Folder'"):
        write_images(escaping, size="small")

    no_column = make_release(tmp_path / "nocolumn", contents=CONTENTS.replace("SeriesDescription", "Series"))
    with pytest.raises(InputFileError, match=r"missing column\(s\) \['SeriesDescription'\]"):
        write_images(no_column, size="small")
