"""NIfTI export with the scanner affine, and QC montages of stored volumes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database
from oaicohort.imaging.recipe.mri import preprocess_mri
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.store.export import ExportError, export_nifti
from oaicohort.imaging.store.geometry import GEOMETRY_NOTE, LPS_TO_RAS, stored_affine
from oaicohort.imaging.store.index import indexed_volumes
from oaicohort.imaging.store.qc import GAP, write_qc
from oaicohort.imaging.store.volume_store import VolumeStore
from tests.helpers.mri_release import SMALL, SUBJECTS, make_release, read_series_for_tests

nib = pytest.importorskip("nibabel", reason="nibabel is the [export] extra")


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def _oblique(deg: float) -> tuple[float, ...]:
    """Sagittal orientation rotated by ``deg`` about the superior axis (rows stay A -> P-ish)."""
    a = math.radians(deg)
    return (math.sin(a), math.cos(a), 0.0, 0.0, 0.0, -1.0)


@dataclass
class _Series:
    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    side: str
    orientation: tuple[float, ...]
    origin_mm: tuple[float, float, float]


def _physical(series: _Series, index: np.ndarray) -> np.ndarray:
    """LPS position of a (k, r, c) series index, straight from the DICOM definition."""
    o = np.asarray(series.orientation)
    row_cos, col_cos = o[:3], o[3:]
    normal = np.cross(row_cos, col_cos)
    k, r, c = index
    ds, dr, dc = series.spacing_mm
    return np.asarray(series.origin_mm) + k * ds * normal + r * dr * col_cos + c * dc * row_cos


@pytest.mark.parametrize("side", ["L", "R"])
@pytest.mark.parametrize("view", ["sag", "cor", "ax"])
def test_affine_maps_a_blob_back_to_its_scanner_position(side: str, view: str) -> None:
    params = SMALL  # margin 4, region 40 x 88 x 88, sag x2 blocks, cor/ax (4, 2, 1) blocks
    series_shape = (36, 96, 100)  # slices padded, columns cropped: every step of the plan is used
    for centre in ((12.0, 40.0, 55.0), (25.5, 60.0, 35.5), (18.0, 30.5, 70.0)):
        k, r, c = np.indices(series_shape, dtype=np.float64)
        blob = ((k - centre[0]) / 4) ** 2 + ((r - centre[1]) / 7) ** 2 + ((c - centre[2]) / 6) ** 2 <= 1
        pixels = np.where(blob, 1600, 0).astype(np.uint16)
        series = _Series(pixels, (1.4, 0.73, 0.71), side, _oblique(12.0), (31.0, -80.5, 44.25))
        result = preprocess_mri(series, params, (view,))
        stored = result.volumes[view].astype(np.float64)
        notes = {**result.notes, GEOMETRY_NOTE: {
            "orientation": list(series.orientation), "origin_mm": list(series.origin_mm),
            "spacing_mm": list(series.spacing_mm)}}  # fmt: skip
        affine = stored_affine(params, view, side, notes)
        centroid = (np.indices(stored.shape).reshape(3, -1) * stored.reshape(-1)).sum(axis=1) / stored.sum()
        ras = affine @ np.append(centroid, 1.0)
        expected = LPS_TO_RAS @ np.append(_physical(series, np.asarray(centre)), 1.0)
        np.testing.assert_allclose(ras[:3], expected[:3], atol=0.05, err_msg=f"blob at {centre}")
        np.testing.assert_allclose(
            np.linalg.norm(affine[:3, :3], axis=0), params.spacing_mm(view, series.spacing_mm), rtol=1e-9
        )
        # right knees are stored mirrored: their affine has the other handedness
        assert (np.linalg.det(affine[:3, :3]) < 0) == (side == "L") or view != "sag"


@pytest.fixture
def preprocessed(db: Database, tmp_path: Path) -> tuple[Path, dict[tuple[int, str], Path]]:
    folders = make_release(db, tmp_path / "release")
    store = tmp_path / "small.zarr"
    run_preprocess(db, store, SMALL, views=("sag", "cor", "ax"), reader=read_series_for_tests)
    return store, folders


def _dicom_positions(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per slice (sorted along the normal) its ImagePositionPatient, and the row/col steps (LPS)."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    o = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    ipp = np.array([np.asarray(s.ImagePositionPatient, dtype=np.float64) for s in slices])
    ipp = ipp[np.argsort(ipp @ normal)]
    dr, dc = (float(v) for v in slices[0].PixelSpacing)
    return ipp, o[3:] * dr, o[:3] * dc, normal


def test_nifti_export_reopens_with_affine_and_voxels(
    db: Database, preprocessed: tuple[Path, dict[tuple[int, str], Path]], tmp_path: Path
) -> None:
    store_path, folders = preprocessed
    out = tmp_path / "nifti"
    index = export_nifti(db, store_path, out, knees=[(SUBJECTS[0], "R"), (SUBJECTS[1], "L")])
    assert len(index) == 6 and sorted(index["view"]) == ["ax", "ax", "cor", "cor", "sag", "sag"]
    store = VolumeStore.open(store_path)
    rows = indexed_volumes(db, store_path).set_index(["subject_id", "side", "view"])
    for rec in index.itertuples():
        image = nib.load(out / rec.file)
        row = rows.loc[(rec.subject_id, rec.side, rec.view)]
        np.testing.assert_array_equal(np.asarray(image.dataobj), store.read(rec.view, int(row["position"])))
        assert image.get_data_dtype() == np.uint8
        expected = stored_affine(store.params, rec.view, rec.side, row["notes"])
        np.testing.assert_allclose(image.affine, expected, atol=1e-5)
        np.testing.assert_allclose(image.header.get_qform(), expected, atol=1e-4)
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        np.testing.assert_allclose(image.header.get_zooms(), row["spacing_mm"], rtol=1e-5)
        if rec.view == "sag":
            # a stored voxel is the mean of a 2x2x2 block: its centre from the DICOM headers themselves
            ipp, row_step, col_step, _ = _dicom_positions(folders[(rec.subject_id, rec.side)])
            n_slices = len(ipp)
            d, h, w = 7, 20, 31
            src_k = [2 * d + i for i in (0, 1)]  # 40 slices: no pad/crop along slices
            if rec.side == "R":  # stored mirrored along the slice axis
                src_k = [n_slices - 1 - k for k in src_k]
            src_r = [2 * h + i + 4 for i in (0, 1)]  # the 4-pixel margin
            src_c = [2 * w + i + 4 for i in (0, 1)]
            points = [ipp[k] + r * row_step + c * col_step for k in src_k for r in src_r for c in src_c]
            lps = np.mean(points, axis=0)
            ras = image.affine @ np.array([d, h, w, 1.0])
            np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-3)


def test_export_refuses_volumes_without_geometry(
    db: Database, preprocessed: tuple[Path, dict[tuple[int, str], Path]], tmp_path: Path
) -> None:
    from oaicohort.db.schema import Volume

    store_path, _ = preprocessed
    with db.write() as session:  # as an older toolkit wrote them
        for volume in session.query(Volume).all():
            volume.notes = {k: v for k, v in (volume.notes or {}).items() if k != GEOMETRY_NOTE}
    with pytest.raises(ExportError, match="geometry was not recorded"):
        export_nifti(db, store_path, tmp_path / "n", views=["sag"], limit=1)
    assert not list((tmp_path / "n").glob("*.nii.gz"))


def test_qc_montages_have_the_expected_sizes(
    db: Database, preprocessed: tuple[Path, dict[tuple[int, str], Path]], tmp_path: Path
) -> None:
    store_path, _ = preprocessed
    store = VolumeStore.open(store_path)
    out = tmp_path / "qc"
    index = write_qc(store_path, out, columns=2, rows=2)  # no database: the store's own keys
    assert len(index) == 2 * len(SUBJECTS)
    sag, cor, ax = (store.volume_shape(v) for v in ("sag", "cor", "ax"))  # (20,44,44) (22,44,40) (22,44,40)
    height, width = max(sag[1], cor[1], ax[1]), sag[2] + cor[2] + ax[2] + 2 * GAP
    for rec in index.itertuples():
        png = _png(out / rec.file)
        assert png.shape[:2] == (height, width)
    # the sagittal panel is the stored mid-slice, pixel for pixel
    first = index.iloc[0]
    position = int(np.flatnonzero(store.knee_keys("sag") == first.subject_id * 10 + (1 if first.side == "R" else 2))[0])
    panel = _png(out / first.file)[: sag[1], : sag[2]]
    np.testing.assert_array_equal(panel, store.read("sag", position)[sag[0] // 2])
    sheets = sorted((out / "sheets").glob("*.png"))
    assert [p.name for p in sheets] == ["sheet_0001.png", "sheet_0002.png"]  # 6 knees, 4 per sheet
    assert _png(sheets[0]).shape[:2] == (2 * height + GAP, 2 * width + GAP)
    # with the database and a knee list, through the CLI
    db_url = str(db.url)
    result = CliRunner().invoke(
        app,
        ["--db", db_url, "store", "qc", str(store_path), "--out", str(tmp_path / "qc2"), "--view", "sag",
         "--knees", f"{SUBJECTS[2]}L", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "qc2" / "index.csv")["file"].tolist() == [f"knees/{SUBJECTS[2]}L_v00.png"]
    assert _png(tmp_path / "qc2" / "knees" / f"{SUBJECTS[2]}L_v00.png").shape[:2] == sag[1:]


def test_store_export_command(
    db: Database, preprocessed: tuple[Path, dict[tuple[int, str], Path]], tmp_path: Path
) -> None:
    store_path, _ = preprocessed
    result = CliRunner().invoke(
        app, ["--db", str(db.url), "store", "export", str(store_path), "--nifti", str(tmp_path / "x"), "--view", "cor"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "x").glob("*_cor.nii.gz"))) == 2 * len(SUBJECTS)
    result = CliRunner().invoke(
        app, ["--db", str(db.url), "store", "export", str(store_path), "--nifti", str(tmp_path / "y"), "--knees", "1R"]
    )
    assert result.exit_code == 1 and "no volume of knee(s) 1R" in result.output
