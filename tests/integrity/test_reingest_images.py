"""Class 1, image indexes: a re-ingest never leaves volumes pointing at a removed series.

A root without one image package of a visit (the X-ray ``contents.csv`` of 00m) keeps the
series that package listed, as a root without any index keeps them all; an index file read
again that no longer lists series that volumes or X-ray ROIs were made from stops the ingest
(exit 1, naming the file and the counts) unless ``--allow-shrink``, which then removes those
volumes with their series; the no-index warning says what really happens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from oaicohort.cohort.labels import derive_labels
from oaicohort.db import Database
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.ingest.guards import ShrinkingReleaseError
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from oaicohort.synth.radiograph_release import write_radiographs
from tests.helpers.releases import ASCII
from tests.helpers.reliability import DATA_TABLES, message_lines, run_oai, table_rows

XR_INDEX = "XR/00m/contents.csv"
# volumes whose series is gone: NULL (PostgreSQL's ON DELETE SET NULL) or dangling (SQLite)
ORPHANED = (
    "SELECT count(*) FROM volumes v WHERE v.series_id IS NULL "
    "OR NOT EXISTS (SELECT 1 FROM image_series s WHERE s.id = v.series_id)"
)


@pytest.fixture(scope="module")
def xray_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("xr") / "release"
    write_release(root, subjects=8, seed=7)
    write_radiographs(root, size="small", seed=7)
    return root


def _preprocessed(db: Database, release: Path, tmp_path: Path) -> None:
    ingest_release(db, release)
    summary = run_xray_preprocess(db, tmp_path / "store.zarr", PreprocessParams.small())
    assert summary.done > 0 and summary.failed == 0


def _count(db: Database, sql: str) -> int:
    with db.read() as s:
        return int(s.execute(text(sql)).scalar_one())


def _copy(release: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(release, root)
    return root


def _drop_last_series(root: Path, n: int) -> None:
    """The X-ray package without its last ``n`` radiographs: neither listed by its index nor on
    disk (a folder still there would be read from its DICOM header, as an unlisted download is)."""
    index = root / XR_INDEX
    lines = index.read_text().splitlines()
    for line in lines[-n:]:
        shutil.rmtree(index.parent / line.split(",", 1)[0])
    index.write_text("\n".join(lines[:-n]) + "\n")


def test_a_root_without_one_image_package_keeps_its_series_and_their_volumes(
    xray_release: Path, tmp_path: Path, any_db: Database
) -> None:
    _preprocessed(any_db, xray_release, tmp_path)
    series = _count(any_db, "SELECT count(*) FROM image_series")
    volumes = _count(any_db, "SELECT count(*) FROM volumes")
    partial = _copy(xray_release, tmp_path, "partial")
    (partial / XR_INDEX).unlink()  # its folders, unlisted now, are read from their DICOM headers
    shutil.rmtree(partial / "XR" / "00m")  # a root without the whole package
    result = ingest_release(any_db, partial)
    assert result.status == "succeeded" and result.removed["image_series"] == 0
    assert _count(any_db, "SELECT count(*) FROM image_series") == series
    assert _count(any_db, "SELECT count(*) FROM volumes") == volumes and _count(any_db, ORPHANED) == 0
    assert any(w.startswith(f"{XR_INDEX}: not in this root") and "are kept" in w for w in result.warnings)


def test_an_index_no_longer_listing_series_in_use_stops_the_reingest(
    xray_release: Path, tmp_path: Path, any_db: Database
) -> None:
    _preprocessed(any_db, xray_release, tmp_path)
    before = table_rows(any_db, (*DATA_TABLES, "volumes", "xray_rois"))
    root = _copy(xray_release, tmp_path, "fewer")
    _drop_last_series(root, 2)  # two radiographs no longer listed
    with pytest.raises(ShrinkingReleaseError) as err:
        ingest_release(any_db, root)
    message = " ".join(str(err.value).split())
    assert f"{XR_INDEX} no longer lists 2 image series that 4 preprocessed volumes were made from" in message
    assert "4 of them X-ray ROIs" in message and "--allow-shrink" in message
    assert table_rows(any_db, (*DATA_TABLES, "volumes", "xray_rois")) == before
    # --allow-shrink: the series go, and the volumes and ROIs made from them with them
    result = ingest_release(any_db, root, allow_shrink=True)
    assert result.removed["image_series"] == 2
    assert any("removed, with the 4 preprocessed volumes" in w for w in result.warnings)
    assert _count(any_db, "SELECT count(*) FROM volumes") == len(before["volumes"]) - 4
    assert _count(any_db, "SELECT count(*) FROM xray_rois") == len(before["xray_rois"]) - 4
    assert _count(any_db, ORPHANED) == 0


def test_cli_names_the_index_and_exits_1(xray_release: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_oai(db, "ingest", str(xray_release)).returncode == 0
    assert (
        run_oai(db, "preprocess", "--view", "xray", "--store", str(tmp_path / "s.zarr"), "--preset", "small").returncode
        == 0
    )
    root = _copy(xray_release, tmp_path, "fewer")
    _drop_last_series(root, 1)
    done = run_oai(db, "ingest", str(root))
    text_ = " ".join(done.stderr.split())
    assert done.returncode == 1 and f"{XR_INDEX} no longer lists 1 image series that 2 preprocessed volumes" in text_
    assert "Traceback" not in done.stderr and len(message_lines(done.stderr)) <= 4
    assert run_oai(db, "ingest", "--allow-shrink", str(root)).returncode == 0


def test_the_no_index_warning_says_what_happens(xray_release: Path, tmp_path: Path, any_db: Database) -> None:
    clinical = tmp_path / "clinical"
    shutil.copytree(xray_release / ASCII, clinical / ASCII)
    first = ingest_release(any_db, clinical)  # nothing indexed yet: every knee will lack its DESS
    assert any("oai label` will exclude every knee as no_baseline_dess" in w for w in first.warnings)
    ingest_release(any_db, xray_release)
    series = _count(any_db, "SELECT count(*) FROM image_series")
    no_dess = (derive_labels(any_db).labels["exclusion"] == "no_baseline_dess").sum()
    again = ingest_release(any_db, clinical)  # a root with no index at all
    assert not any("will exclude every knee" in w for w in again.warnings), again.warnings
    assert any(f"the {series:,} image series indexed by earlier ingests are kept" in w for w in again.warnings)
    assert _count(any_db, "SELECT count(*) FROM image_series") == series
    labels = derive_labels(any_db).labels
    assert (labels["exclusion"] == "no_baseline_dess").sum() == no_dess < len(labels)
