"""``oai preprocess --view xray``: localiser accuracy, crops in the store, ROI rows, failures, ROI file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database, open_database
from oaicohort.db.schema import ImageSeries, Knee, Volume, XrayRoi
from oaicohort.errors import InputFileError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.recipe.xray import crop_knee, roi_iou
from oaicohort.imaging.recipe.xray_localiser import JointCentre, LocaliserFailure, localise_knees
from oaicohort.imaging.runs.xray import read_roi_file, run_xray_preprocess
from oaicohort.imaging.store.export import ExportError, export_nifti
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from oaicohort.synth.radiograph_release import read_xray_truth, write_radiographs
from oaicohort.synth.radiographs import draw_layout, radiograph_knee, render_radiograph

SUBJECTS = 24


@pytest.fixture(scope="module")
def xray_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("xr_release") / "release"
    write_release(root, subjects=SUBJECTS, seed=7)
    write_radiographs(root, size="small", seed=7)
    return root


@pytest.fixture
def ingested(xray_release: Path, tmp_path: Path) -> tuple[Database, Path]:
    root = tmp_path / "release"
    shutil.copytree(xray_release, root)
    db = open_database(tmp_path / "oai.sqlite")
    ingest_release(db, root)
    yield db, root
    db.dispose()


def test_localiser_finds_synthetic_joint_centres_and_fails_degenerate_images() -> None:
    rng = np.random.default_rng(11)
    ious = []
    for _ in range(12):
        layout = draw_layout(rng, "small")
        knees = {s: radiograph_knee(s, int(rng.integers(0, 5)), float(rng.normal()), rng) for s in "RL"}
        image = render_radiograph(knees, layout, rng)
        found = localise_knees(image, layout.spacing_mm)
        for side in "RL":
            result = found[side]
            assert isinstance(result, JointCentre), result
            ious.append(roi_iou((result.row, result.col), layout.centres[side], 140.0 / layout.spacing_mm))
    assert min(ious) >= 0.8
    blank = localise_knees(np.full_like(image, 400), layout.spacing_mm)
    assert all(isinstance(r, LocaliserFailure) and "blank" in r.reason for r in blank.values())
    one_leg = image.copy()
    one_leg[:, image.shape[1] // 2 :] = int(np.percentile(image, 1))
    result = localise_knees(one_leg, layout.spacing_mm)
    assert isinstance(result["R"], JointCentre) and isinstance(result["L"], LocaliserFailure)
    assert "no leg" in result["L"].reason
    rotated = localise_knees(np.ascontiguousarray(np.rot90(image)), layout.spacing_mm)
    assert all(isinstance(r, LocaliserFailure) and "rotated" in r.reason for r in rotated.values())


def test_crop_flips_left_knees_and_normalises_to_percentiles() -> None:
    params = PreprocessParams()
    image = np.zeros((800, 1000), dtype=np.uint16)
    image[:, 500:] = 2000  # right half bright
    image[400:, :] += 1000  # lower half brighter
    right = crop_knee(image, 0.15, (400.0, 500.0), "R", params)
    left = crop_knee(image, 0.15, (400.0, 500.0), "L", params)
    assert right.image.shape == (1, 350, 350) and right.image.dtype == np.uint8
    np.testing.assert_array_equal(left.image, right.image[:, :, ::-1])
    assert right.image.min() == 0 and right.image.max() == 255 and left.notes["flipped"] is True
    r0, c0, r1, c1 = right.box
    # the reference's ROI: 700 pixels of 0.195 mm (issue 21; stores before it: 140 mm at 0.2 mm)
    assert (params.xray_roi_mm, params.xray_resample_mm) == (136.5, 0.195)
    assert (r1 - r0) * 0.15 == pytest.approx(136.5) and (c0 + c1) / 2 == pytest.approx(500.0)


def test_run_stores_knee_rois_with_boxes_localiser_and_montage(ingested: tuple[Database, Path], tmp_path: Path) -> None:
    db, root = ingested
    with db.read() as session:
        series = session.execute(select(ImageSeries).where(ImageSeries.sequence.like("BILATERAL%"))).scalars().all()
    assert series and {s.side for s in series} == {""}
    truth = read_xray_truth(root)
    summary = run_xray_preprocess(db, tmp_path / "store.zarr", PreprocessParams.small())
    assert summary.done == len(truth) and summary.failed == 0 and summary.qc_montages
    assert Path(summary.qc_montages[0]).is_file() and Path(summary.qc_montages[0]).with_suffix(".csv").is_file()
    store = VolumeStore.open(tmp_path / "store.zarr")
    assert store.volume_shape("xray") == (1, 70, 70) and "xray" in store.views  # the small preset
    with db.read() as session:
        knees = {k.id: (k.subject_id, k.side) for k in session.execute(select(Knee)).scalars()}
        rows = session.execute(select(Volume, XrayRoi).join(XrayRoi, XrayRoi.volume_id == Volume.id)).all()
    assert len(rows) == len(truth)
    for volume, roi in rows:
        subject, side = knees[volume.knee_id]
        t = truth[(subject, side)]
        spacing = float(t["spacing_mm"])
        assert roi.localiser == "profile-v1" and roi.source_spacing_mm == pytest.approx(spacing)
        assert (roi.box[2] - roi.box[0]) * spacing == pytest.approx(136.5, abs=0.01)
        true_centre = (float(t["centre_row"]), float(t["centre_col"]))
        assert roi_iou((roi.centre_row, roi.centre_col), true_centre, 140.0 / spacing) >= 0.8
        assert volume.view == "xray" and volume.status == "ok" and volume.shape == [1, 70, 70]
        assert store.read("xray", volume.position).shape == (1, 70, 70)
    again = run_xray_preprocess(db, tmp_path / "store.zarr")
    assert (again.done, again.skipped) == (0, len(truth))
    # a projection's ROI has no place in scanner space: NIfTI export says so and writes nothing
    with pytest.raises(ExportError, match="projection radiograph.*oai store qc"):
        export_nifti(db, tmp_path / "store.zarr", tmp_path / "nifti")
    assert not (tmp_path / "nifti").exists()


def test_degenerate_radiograph_is_a_recorded_failure(ingested: tuple[Database, Path], tmp_path: Path) -> None:
    db, root = ingested
    truth = read_xray_truth(root)
    (subject, _side), row = next(iter(truth.items()))
    path = root / "XR" / "00m" / row["folder"] / "001"
    ds = pydicom.dcmread(path)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 300, dtype="<u2").tobytes()  # blank exposure
    ds.save_as(path)
    summary = run_xray_preprocess(db, tmp_path / "store.zarr", PreprocessParams.small())
    failed = {(f["subject_id"], f["side"]): f["reason"] for f in summary.failures}
    assert set(failed) == {(subject, "R"), (subject, "L")}
    assert all("blank image" in reason for reason in failed.values())
    with db.read() as session:
        statuses = session.execute(select(Volume.status, Volume.reason).where(Volume.status == "failed")).all()
    assert len(statuses) == 2 and all("blank image" in r for _, r in statuses)


def test_roi_file_gives_the_centres(ingested: tuple[Database, Path], tmp_path: Path) -> None:
    db, root = ingested
    truth = read_xray_truth(root)
    roi_file = tmp_path / "landmarks.csv"
    with roi_file.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject_id", "side", "row", "col"])
        for (subject, side), t in list(truth.items())[:-1]:  # the last knee is missing
            writer.writerow([subject, "right" if side == "R" else "L", t["centre_row"], t["centre_col"]])
    result = CliRunner().invoke(
        app,
        ["--db", str(tmp_path / "oai.sqlite"), "preprocess", "--view", "xray", "--store", str(tmp_path / "s.zarr"),
         "--preset", "small", "--roi-file", str(roi_file), "--workers", "2", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["localiser"] == "roi-file" and summary["done"] == len(truth) - 1 and summary["failed"] == 1
    assert "no landmarks" in summary["failures"][0]["reason"]
    with db.read() as session:
        rois = session.execute(select(XrayRoi)).scalars().all()
    assert rois and {r.localiser for r in rois} == {"roi-file"}
    by_centre = {(round(r.centre_row, 2), round(r.centre_col, 2)) for r in rois}
    assert (
        round(float(truth[next(iter(truth))]["centre_row"]), 2),
        round(float(truth[next(iter(truth))]["centre_col"]), 2),
    ) in by_centre


def test_roi_file_errors_name_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("subject_id,side,row\n9000001,R,10\n")
    with pytest.raises(InputFileError, match="missing column"):
        read_roi_file(path, 0)
    path.write_text("subject_id,side,row,col\n9000001,X,10,20\n")
    with pytest.raises(InputFileError, match="side 'X'"):
        read_roi_file(path, 0)
    path.write_text("subject_id,side,row,col\n9000001,R,ten,20\n")
    with pytest.raises(InputFileError, match="not numbers"):
        read_roi_file(path, 0)
