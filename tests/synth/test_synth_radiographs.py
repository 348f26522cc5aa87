"""Synthetic bilateral PA radiographs: package layout, DICOM header, anatomy following KLG and latent."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.synth import write_release
from oaicohort.synth.radiograph_release import (
    BILATERAL_PA,
    XRAY_TRUTH_FILE,
    baseline_grades,
    read_xray_truth,
    write_radiographs,
)
from oaicohort.synth.radiographs import DETECTOR_SIZES, draw_layout, radiograph_knee


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("xr") / "release"
    write_release(root, subjects=6, seed=3)
    assert write_radiographs(root, size="full", seed=3, limit=2) == 2
    return root


def test_package_layout_and_header(release: Path) -> None:
    with (release / "XR" / "00m" / "contents.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and {r["SeriesDescription"] for r in rows} == {BILATERAL_PA}
    for row in rows:
        files = list((release / "XR" / "00m" / row["Folder"]).iterdir())
        assert [f.name for f in files] == ["001"]  # one DICOM file per series
        ds = pydicom.dcmread(files[0])
        assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
        assert (ds.Rows, ds.Columns) in DETECTOR_SIZES
        spacing = [float(v) for v in ds.ImagerPixelSpacing]
        assert spacing[0] == spacing[1] and 0.10 <= spacing[0] <= 0.20
        assert "ImageLaterality" not in ds and "PixelSpacing" not in ds
        assert int(ds.pixel_array.max()) <= 4095 and ds.PatientID == row["ParticipantID"]


def test_truth_has_joint_centres_right_knee_on_screen_left(release: Path) -> None:
    truth = read_xray_truth(release)
    assert len(truth) == 4
    for (_subject, side), row in truth.items():
        col, cols = float(row["centre_col"]), int(row["cols"])
        assert (col < cols / 2) if side == "R" else (col > cols / 2)
        assert 0 < float(row["centre_row"]) < int(row["rows"])
    header = (release / XRAY_TRUTH_FILE).read_text().splitlines()[0]
    assert header.startswith("subject_id,side,folder,klg,latent,centre_row,centre_col")


def test_joint_centre_is_in_the_dark_joint_space_between_bright_bones(release: Path) -> None:
    truth = read_xray_truth(release)
    for (_subject, side), row in truth.items():
        image = pydicom.dcmread(release / "XR" / "00m" / row["folder"] / "001").pixel_array.astype(float)
        r, c, s = round(float(row["centre_row"])), round(float(row["centre_col"])), float(row["spacing_mm"])
        band = image[:, c - round(8 / s) : c + round(8 / s)].mean(axis=1)
        femur, tibia = band[r - round(12 / s)], band[r + round(12 / s)]
        assert band[r] < femur - 100 and band[r] < tibia - 100, side


def test_same_seed_same_bytes(tmp_path: Path, release: Path) -> None:
    other = tmp_path / "again"
    write_release(other, subjects=6, seed=3)
    write_radiographs(other, size="small", seed=3, limit=1)
    again = tmp_path / "again2"
    write_release(again, subjects=6, seed=3)
    write_radiographs(again, size="small", seed=3, limit=1)
    files = sorted((other / "XR").rglob("001"))
    assert files and all(f.read_bytes() == (again / f.relative_to(other)).read_bytes() for f in files)


def test_jsw_and_osteophytes_follow_klg_and_weakly_the_latent() -> None:
    def mean_knee(klg: int, latent: float) -> tuple[float, float]:
        rng = np.random.default_rng(0)
        knees = [radiograph_knee("R", klg, latent, rng) for _ in range(300)]
        return float(np.mean([k.jsw_mm[0] for k in knees])), float(np.mean([len(k.spurs) for k in knees]))

    jsw = [mean_knee(k, 0.0)[0] for k in range(5)]
    spurs = [mean_knee(k, 0.0)[1] for k in range(5)]
    assert all(a > b for a, b in itertools.pairwise(jsw)) and all(a < b for a, b in itertools.pairwise(spurs))
    latent_per_sd = (mean_knee(2, -1.0)[0] - mean_knee(2, 1.0)[0]) / 2
    klg_effect = jsw[2] - jsw[3]
    assert 0.5 < latent_per_sd < klg_effect  # present, one SD weaker than one KL grade


def test_layout_sizes_and_spacing() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        layout = draw_layout(rng, "full")
        assert 0.10 <= layout.spacing_mm <= 0.20 and (layout.rows, layout.cols) in DETECTOR_SIZES
        assert layout.centres["R"][1] < layout.cols / 2 < layout.centres["L"][1]


def test_cli_synth_images_writes_radiographs(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["synth", str(tmp_path / "rel"), "--subjects", "3", "--images", "--image-size", "small", "--json"]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)["radiographs"]
    assert written == len(baseline_grades(tmp_path / "rel")) >= 1  # one per subject with a baseline reading
    assert len(list((tmp_path / "rel" / "XR" / "00m").rglob("001"))) == written
