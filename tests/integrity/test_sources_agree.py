"""Class 2: the index (contents.csv) and the DICOM headers must agree before a series is stored.

Each disagreement is a recorded failure of that series naming both values; nothing of it reaches
the store and the other series are done. Pixel values are read exactly or not at all."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select, update

from oaicohort.db import Database, open_database
from oaicohort.db.schema import ImageSeries, Volume
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.series.consistency import folder_participants, normal_axis
from oaicohort.imaging.series.dicom import read_series
from oaicohort.imaging.store.index import verify_store
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key

SMALL = PreprocessParams.preset_named("small")


@pytest.fixture
def victim(
    imaging_release: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[Database, ImageSeries, Path, ImageSeries]]:
    """A database copy, the first DESS series (to damage; restored after) and another participant's."""
    _, template = imaging_release
    shutil.copy(template, tmp_path / "db.sqlite")
    db = open_database(tmp_path / "db.sqlite")
    with db.read() as s:
        rows = s.scalars(
            select(ImageSeries)
            .where(ImageSeries.sequence == "SAG_3D_DESS", ImageSeries.visit == 0)
            .order_by(ImageSeries.subject_id, ImageSeries.side)
        ).all()
    series = rows[0]
    other = next(r for r in rows if r.subject_id != series.subject_id)
    folder = Path(series.visit_dir) / series.folder
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    try:
        yield db, series, folder, other
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(backup, folder)
        db.dispose()


def _edit_slices(folder: Path, edit: Callable[[pydicom.Dataset, int], None]) -> None:
    for k, path in enumerate(sorted(p for p in folder.iterdir() if p.is_file())):
        ds = pydicom.dcmread(path)
        edit(ds, k)
        ds.save_as(path)


def _run_and_check_failed_alone(db: Database, series: ImageSeries, tmp_path: Path, *fragments: str) -> str:
    store = tmp_path / "vol.zarr"
    summary = run_preprocess(db, store, SMALL, views=("sag",), workers=1)
    assert summary.failed == 1 and summary.done == summary.selected - 1, summary.failures
    (failure,) = summary.failures
    assert failure["subject_id"] == series.subject_id and failure["side"] == series.side
    for fragment in fragments:
        assert fragment in failure["reason"], failure["reason"]
    with db.read() as s:
        rows = s.execute(select(Volume.status, Volume.reason).where(Volume.series_id == series.id)).all()
    assert [r.status for r in rows] == ["failed"]
    assert knee_key(series.subject_id, series.side) not in VolumeStore.open(store).knee_keys("sag")
    report = verify_store(db, store)
    assert report["mismatches"] == [] and report["ok"] == summary.done
    return failure["reason"]


def test_index_folder_of_another_participant(victim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, series, _, other = victim
    with db.write() as s:  # contents.csv row whose Folder is another participant's series
        s.execute(update(ImageSeries).where(ImageSeries.id == series.id).values(folder=other.folder))
    _run_and_check_failed_alone(
        db,
        series,
        tmp_path,
        f"the index Folder path names participant {other.subject_id}",
        f"its ParticipantID is {series.subject_id}",
    )


def test_dicom_patient_id_of_another_participant(victim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, series, folder, _ = victim
    _edit_slices(folder, lambda ds, k: setattr(ds, "PatientID", "9999999"))
    _run_and_check_failed_alone(
        db, series, tmp_path, "DICOM PatientID is '9999999'", f"the index says participant {series.subject_id}"
    )


def test_dicom_description_of_another_sequence(victim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, series, folder, _ = victim
    side = "RIGHT" if series.side == "R" else "LEFT"
    _edit_slices(folder, lambda ds, k: setattr(ds, "SeriesDescription", f"SAG_T2_MAP_{side}"))
    _run_and_check_failed_alone(
        db, series, tmp_path, f"DICOM SeriesDescription is 'SAG_T2_MAP_{side}'", f"'SAG_3D_DESS_{side}'"
    )


def test_axial_slices_stored_as_a_sagittal_series(victim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, series, folder, _ = victim

    def axial(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 0.7 * k]

    _edit_slices(folder, axial)
    _run_and_check_failed_alone(db, series, tmp_path, "slices are axial", "is stored as sagittal")


@pytest.mark.parametrize("spacing", [["0", "0.365"], ["-0.365", "0.365"]])
def test_pixel_spacing_must_be_positive(victim, tmp_path: Path, spacing: list[str]) -> None:  # type: ignore[no-untyped-def]
    db, series, folder, _ = victim
    _edit_slices(folder, lambda ds, k: setattr(ds, "PixelSpacing", spacing))
    _run_and_check_failed_alone(db, series, tmp_path, "every spacing must be positive and finite")


def test_unsupported_depth_is_a_recorded_failure(victim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, series, folder, _ = victim

    def deeper(ds: pydicom.Dataset, k: int) -> None:
        pixels = ds.pixel_array.astype(np.uint32) + 70000
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
        ds.PixelData = pixels.tobytes()

    _edit_slices(folder, deeper)
    _run_and_check_failed_alone(db, series, tmp_path, "unsupported pixel depth: BitsAllocated 32")


def test_negative_signed_pixels_are_a_failure_not_clipped(victim, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, series, folder, _ = victim

    def signed(ds: pydicom.Dataset, k: int) -> None:
        pixels = ds.pixel_array.astype(np.int16) - 100
        ds.PixelRepresentation = 1
        ds.PixelData = pixels.tobytes()

    _edit_slices(folder, signed)
    _run_and_check_failed_alone(db, series, tmp_path, "below 0 in signed pixel data")


def test_full_16_bit_values_are_read_exactly(victim) -> None:  # type: ignore[no-untyped-def]
    _, _, folder, _ = victim
    expected = []

    def full_range(ds: pydicom.Dataset, k: int) -> None:
        pixels = (ds.pixel_array.astype(np.uint32) * 16 + 15).clip(0, 65535).astype(np.uint16)
        pixels[0, 0] = 65535
        ds.BitsStored, ds.HighBit = 16, 15
        ds.PixelData = pixels.tobytes()
        expected.append((float(ds.ImagePositionPatient[0]), pixels))

    _edit_slices(folder, full_range)
    series = read_series(folder)
    assert series.pixels.max() == 65535
    by_position = [p for _, p in sorted(expected, key=lambda e: -e[0])]  # sagittal normal is -x
    assert any(np.array_equal(series.pixels, np.stack(order)) for order in (by_position, by_position[::-1]))


def test_helpers() -> None:
    assert folder_participants("0.C.2/9011337/20051116/25438264") == {9011337}
    assert folder_participants("P001/x") == set()
    assert normal_axis([0, 1, 0, 0, 0, -1])[0] == 0  # the synthetic DESS orientation: sagittal
    assert normal_axis([1, 0, 0, 0, 0, -1])[0] == 1  # coronal
    assert normal_axis([1, 0, 0, 0, 1, 0])[0] == 2  # axial
