"""Reference fidelity of the preprocess run: canonical orientation and too-small series excluded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from oaicohort.db import Database
from oaicohort.db.schema import Knee, Volume
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.series.dicom import SeriesError, read_series
from oaicohort.imaging.series.orientation import CANONICAL_ORIENTATION, reorientation, to_canonical
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaicohort.synth.mri_anatomy import render_knee_volume
from tests.helpers.mri_release import GEOMETRY, SMALL, make_release

# name -> (ImageOrientationPatient, how the canonical volume is stored under it): every variant
# reverses the slice axis, a row or column axis, or swaps rows and columns
VARIANTS = {
    "rows_and_slices_reversed": ((0.0, 1.0, 0.0, 0.0, 0.0, 1.0), lambda v: v[::-1, ::-1, :]),
    "cols_and_slices_reversed": ((0.0, -1.0, 0.0, 0.0, 0.0, -1.0), lambda v: v[::-1, :, ::-1]),
    "rotated_180": ((0.0, -1.0, 0.0, 0.0, 0.0, 1.0), lambda v: v[:, ::-1, ::-1]),
    "transposed_slices_reversed": ((0.0, 0.0, -1.0, 0.0, 1.0, 0.0), lambda v: v[::-1].transpose(0, 2, 1)),
}


def _volume(subject: int, side: str) -> np.ndarray:
    return render_knee_volume(0.0, side, np.random.default_rng([subject, ord(side)]), "small")


def _rewrite(
    folder: Path, volume: np.ndarray, orientation: tuple[float, ...], description: str, patient_id: str = "1"
) -> None:
    shutil.rmtree(folder)
    spacing = GEOMETRY.spacing_mm
    if volume.shape[1:] != (GEOMETRY.rows, GEOMETRY.cols):
        spacing = (spacing[0], spacing[2], spacing[1])
    meta = SeriesMeta(
        patient_id=patient_id, series_description=description, spacing_mm=spacing, orientation=orientation
    )
    write_series(folder, np.ascontiguousarray(volume), meta)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reversed_or_transposed_series_read_back_canonical(tmp_path: Path, variant: str) -> None:
    original = _volume(9000010, "L")
    write_series(tmp_path / "a", original, SeriesMeta("1", "SAG_3D_DESS_LEFT", spacing_mm=GEOMETRY.spacing_mm))
    orientation, store_as = VARIANTS[variant]
    (tmp_path / "b").mkdir()
    _rewrite(tmp_path / "b", store_as(original), orientation, "SAG_3D_DESS_LEFT")
    reference, changed = read_series(tmp_path / "a"), read_series(tmp_path / "b")
    assert not np.array_equal(changed.pixels, original)
    assert reorientation(reference.orientation).is_identity
    canonical = to_canonical(changed)
    np.testing.assert_array_equal(canonical.pixels, original)
    assert canonical.spacing_mm == pytest.approx(reference.spacing_mm)
    assert canonical.orientation == pytest.approx(CANONICAL_ORIENTATION)
    assert canonical.origin_mm == pytest.approx(reference.origin_mm, abs=1e-3)
    assert any(n.startswith("reoriented") for n in canonical.notes)
    assert to_canonical(reference) is reference


def test_too_oblique_series_is_refused(tmp_path: Path) -> None:
    c = float(np.sqrt(0.5))
    with pytest.raises(SeriesError, match="too oblique"):
        reorientation((0.0, c, c, 0.0, c, -c), tmp_path)


def test_run_stores_reoriented_series_identically_and_excludes_too_small(db: Database, tmp_path: Path) -> None:
    folders = make_release(db, tmp_path / "release")
    first = run_preprocess(db, tmp_path / "a.zarr", SMALL, views=("sag", "cor"))
    assert first.failed == 0
    reference = VolumeStore.open(tmp_path / "a.zarr")
    changed = {
        (9000010, "R"): "rows_and_slices_reversed",
        (9000020, "L"): "cols_and_slices_reversed",
        (9000020, "R"): "transposed_slices_reversed",
        (9000030, "R"): "rotated_180",
    }
    for (subject, side), variant in changed.items():
        orientation, store_as = VARIANTS[variant]
        description = f"SAG_3D_DESS_{'RIGHT' if side == 'R' else 'LEFT'}"
        _rewrite(folders[(subject, side)], store_as(_volume(subject, side)), orientation, description, str(subject))
    _rewrite(
        folders[(9000030, "L")],
        _volume(9000030, "L")[:29],
        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        "SAG_3D_DESS_LEFT",
        "9000030",
    )

    second = run_preprocess(db, tmp_path / "b.zarr", SMALL, views=("sag", "cor"))
    assert (second.done, second.failed) == (5, 1)
    (failure,) = second.failures
    assert (failure["subject_id"], failure["side"]) == (9000030, "L")
    assert failure["reason"].startswith("image_too_small: series is 29x96x96")
    store = VolumeStore.open(tmp_path / "b.zarr")
    assert store.params.to_dict()["too_small"] == "exclude" and store.params.canonical_orientation
    with db.read() as session:
        knees = {k.id: (k.subject_id, k.side) for k in session.execute(select(Knee)).scalars()}
        rows = session.execute(select(Volume).where(Volume.store_id == store.ref.id)).scalars().all()
        ref_rows = session.execute(select(Volume).where(Volume.store_id == reference.ref.id)).scalars().all()
    ref_pos = {(knees[r.knee_id], r.view): r.position for r in ref_rows}
    failed = [r for r in rows if r.status == "failed"]
    assert {(knees[r.knee_id], r.view) for r in failed} == {((9000030, "L"), "sag"), ((9000030, "L"), "cor")}
    assert all(r.position is None and r.reason.startswith("image_too_small") for r in failed)
    assert knee_key(9000030, "L") not in set(store.knee_keys("sag").tolist())
    for row in rows:
        if row.status != "ok":
            continue
        knee = knees[row.knee_id]
        np.testing.assert_array_equal(
            store.read(row.view, row.position), reference.read(row.view, ref_pos[(knee, row.view)]), err_msg=str(knee)
        )
