"""Screening radiographs feed the baseline X-ray run, and zipped image downloads are preprocessed.

Many participants' baseline bilateral PA is in the screening package (P001). The synthetic release
renders the same image whichever package holds it, so a store made from a release with a share of
screening radiographs must equal, knee for knee, the store of the release without any.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from oaicohort.db import Database, open_database
from oaicohort.db.schema import ImageSeries, Knee, Volume
from oaicohort.errors import InputFileError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.imaging.series.source import series_folder, split_zip_series
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from oaicohort.synth.distributions import convert_release
from oaicohort.synth.images import write_images
from oaicohort.synth.radiograph_release import read_xray_truth, write_radiographs
from oaicohort.visits import SCREENING_VISIT

SUBJECTS, SEED = 10, 7
SMALL = PreprocessParams.small()


def _release(root: Path, screening_share: float) -> Path:
    write_release(root, subjects=SUBJECTS, seed=SEED)
    write_images(root, size="small", seed=SEED)
    write_radiographs(root, size="small", seed=SEED, screening_share=screening_share)
    return root


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("screening")
    out = {"none": _release(base / "none", 0.0), "screened": _release(base / "screened", 0.5)}
    shutil.copytree(out["screened"], base / "zip")
    convert_release(base / "zip", "ascii", images="zip")
    out["zip"] = base / "zip"
    return out


def _ingested(root: Path, tmp_path: Path, name: str) -> Database:
    db = open_database(tmp_path / f"{name}.sqlite")
    ingest_release(db, root)
    return db


def _checksums(db: Database, view: str) -> dict[tuple[int, str], str]:
    with db.read() as s:
        rows = s.execute(
            select(Knee.subject_id, Knee.side, Volume.checksum)
            .join(Knee, Knee.id == Volume.knee_id)
            .where(Volume.view == view, Volume.status == "ok")
        ).all()
    return {(r.subject_id, r.side): r.checksum for r in rows}


def test_a_knee_without_a_baseline_radiograph_takes_the_screening_one(
    releases: dict[str, Path], tmp_path: Path
) -> None:
    truth = read_xray_truth(releases["screened"])
    screened = {s for (s, _), row in truth.items() if row["visit_dir"] == "XR/P001"}
    assert 0 < len(screened) < len({s for s, _ in truth})
    plain = _ingested(releases["none"], tmp_path, "none")
    db = _ingested(releases["screened"], tmp_path, "screened")

    reference = run_xray_preprocess(plain, tmp_path / "none.zarr", SMALL)
    summary = run_xray_preprocess(db, tmp_path / "screened.zarr", SMALL)
    assert reference.from_screening == 0 and reference.done == len(truth)
    assert summary.failed == 0 and summary.done == len(truth) and summary.from_screening == 2 * len(screened)
    # the same ROIs, knee for knee: the screening radiograph is the image the baseline one would be
    assert _checksums(db, "xray") == _checksums(plain, "xray")
    # and the store says where each came from
    with db.read() as s:
        rows = s.execute(
            select(Knee.subject_id, Volume.visit, Volume.notes, ImageSeries.visit.label("series_visit"))
            .join(Knee, Knee.id == Volume.knee_id)
            .join(ImageSeries, ImageSeries.id == Volume.series_id)
            .where(Volume.view == "xray")
        ).all()
    assert {r.visit for r in rows} == {0}
    assert {r.subject_id for r in rows if r.series_visit == SCREENING_VISIT} == screened
    assert {r.subject_id for r in rows if (r.notes or {}).get("source_visit") == "P01"} == screened
    assert all("source_visit" not in (r.notes or {}) for r in rows if r.series_visit == 0)
    # a second run has nothing left to do
    again = run_xray_preprocess(db, tmp_path / "screened.zarr")
    assert (again.done, again.skipped) == (0, len(truth))
    plain.dispose()
    db.dispose()


def test_taking_screening_radiographs_is_a_parameter_of_the_store(releases: dict[str, Path], tmp_path: Path) -> None:
    without = dataclasses.replace(SMALL, xray_baseline_from_screening=False)
    assert without.hash() != SMALL.hash()
    # stores made before the parameter existed keep their identity: it reads as the default
    stored = {k: v for k, v in SMALL.to_dict().items() if k != "xray_baseline_from_screening"}
    assert PreprocessParams.from_dict(stored) == SMALL and PreprocessParams.from_dict(stored).hash() == SMALL.hash()

    truth = read_xray_truth(releases["screened"])
    baseline = {(s, side) for (s, side), row in truth.items() if row["visit_dir"] == "XR/00m"}
    db = _ingested(releases["screened"], tmp_path, "without")
    summary = run_xray_preprocess(db, tmp_path / "without.zarr", without)
    assert summary.from_screening == 0 and summary.done == summary.selected == len(baseline)
    assert set(_checksums(db, "xray")) == baseline
    db.dispose()


def test_a_zipped_download_is_preprocessed_like_the_indexed_release(releases: dict[str, Path], tmp_path: Path) -> None:
    indexed = _ingested(releases["screened"], tmp_path, "indexed")
    zipped = _ingested(releases["zip"], tmp_path, "zipped")
    with zipped.read() as s:
        dirs = set(s.scalars(select(ImageSeries.visit_dir)))
    assert dirs and all(".zip!" in d for d in dirs)
    for db, name in ((indexed, "indexed"), (zipped, "zipped")):
        mri = run_preprocess(db, tmp_path / f"{name}.zarr", SMALL, views=("sag",), strict=True)
        xray = run_xray_preprocess(db, tmp_path / f"{name}.zarr", SMALL, strict=True)
        assert mri.failed == 0 and mri.done > 0 and xray.failed == 0 and xray.done > 0
    for view in ("sag", "xray"):
        assert _checksums(zipped, view) == _checksums(indexed, view)
    indexed.dispose()
    zipped.dispose()


def test_zipped_series_paths_are_checked(releases: dict[str, Path]) -> None:
    archive = releases["zip"] / "00m" / "results" / "00m.zip"
    assert split_zip_series(f"{archive}!./0.C.2/9000001/20040101/1") == (archive, "0.C.2/9000001/20040101/1")
    assert split_zip_series(archive) is None
    with pytest.raises(InputFileError, match="leaves its zip archive"):
        split_zip_series(f"{archive}!0.C.2/../../x")
    with (
        pytest.raises(InputFileError, match="no such series folder in the zip archive"),
        series_folder(Path(f"{archive}!0.C.2/1/2/3")),
    ):
        pass
