"""Image downloads without contents.csv: the series are indexed from one DICOM header each.

One synthetic release with small images (a share of its baseline radiographs in the screening
package) is held three ways: indexed (visit folders with contents.csv), as extracted visit
packages without an index (``OAIBaselineImages/results/...``) and zipped per visit
(``00m/results/00m.zip``). Each must give the same ``image_series`` rows and the same labels;
only where the files are (``visit_dir``) and the provenance (``source_file``) differ.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.labels import derive_labels
from oaicohort.db import Database, open_database
from oaicohort.db.schema import ImageSeries, IngestFile
from oaicohort.errors import InputFileError
from oaicohort.ingest.guards import ShrinkingReleaseError
from oaicohort.ingest.run import ingest_release
from oaicohort.release.discovery import discover
from oaicohort.release.image_files import IMAGE_SCAN
from oaicohort.synth import write_release
from oaicohort.synth.distributions import PACKAGE, convert_release
from oaicohort.synth.images import write_images
from oaicohort.synth.radiograph_release import read_xray_truth, write_radiographs
from oaicohort.visits import SCREENING_VISIT

SUBJECTS, SEED, SCREENING_SHARE = 8, 6, 0.4
COMPARED = (
    "subject_id, visit, month, side, sequence, series_description, study_description, study_date, barcode, folder"
)
BILATERAL = "BILATERAL PA FIXED FLEXION KNEE"


def _series(db: Database) -> list[tuple[str, ...]]:
    with db.read() as s:
        rows = s.execute(text(f"SELECT {COMPARED} FROM image_series")).all()
    return sorted(tuple(str(v) for v in r) for r in rows)


def _labels(db: Database) -> pd.DataFrame:
    labels = derive_labels(db).labels
    keep = [c for c in labels.columns if c not in ("knee_id", "definition_id", "id")]
    return labels[keep].sort_values(["subject_id", "side"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same release with its images indexed, as extracted visit packages, and zipped."""
    base = tmp_path_factory.mktemp("downloads")
    indexed = base / "indexed"
    write_release(indexed, subjects=SUBJECTS, seed=SEED)
    write_images(indexed, size="small", seed=SEED)
    write_radiographs(indexed, size="small", seed=SEED, screening_share=SCREENING_SHARE)
    out = {"indexed": indexed}
    for layout in ("folders", "zip"):
        shutil.copytree(indexed, base / layout)
        convert_release(base / layout, "ascii", images=layout)
        out[layout] = base / layout
    return out


@pytest.fixture(scope="module")
def reference(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = open_database(tmp_path_factory.mktemp("ref") / "indexed.sqlite")
    result = ingest_release(db, layouts["indexed"])
    out = {"series": _series(db), "labels": _labels(db), "result": result}
    db.dispose()
    return out


def test_the_layouts_hold_no_index_and_the_packages_they_should(layouts: dict[str, Path]) -> None:
    for layout in ("folders", "zip"):
        assert not list(layouts[layout].rglob("contents*.csv")), layout
    assert (layouts["zip"] / "00m" / "results" / "00m.zip").is_file()
    assert (layouts["zip"] / "P001" / "results" / "P001.zip").is_file()
    assert (layouts["folders"] / "OAIBaselineImages" / "results").is_dir()
    assert (layouts["folders"] / "OAIScreeningImages" / "results").is_dir()


@pytest.mark.parametrize("layout", ["folders", "zip"])
def test_an_image_download_gives_the_rows_and_labels_of_the_indexed_release(
    layout: str, layouts: dict[str, Path], reference: dict[str, Any], db: Database
) -> None:
    result = ingest_release(db, layouts[layout])

    assert result.status == "succeeded" and result.warnings == [] and result.image_indexes == 0
    # every series folder was read: the listed ones plus the superseded rescans
    found = discover(layouts[layout]).image_series
    assert result.series_scanned == len(found) > reference["result"].rows["image_series"]
    assert result.rows == reference["result"].rows
    assert _series(db) == reference["series"]
    pd.testing.assert_frame_equal(_labels(db), reference["labels"])
    # provenance: scanned, not indexed
    with db.read() as s:
        packages = s.execute(select(IngestFile).where(IngestFile.table_kind == IMAGE_SCAN)).scalars().all()
        sources = s.execute(select(ImageSeries.source_file, ImageSeries.source_row)).all()
    expected = {
        "zip": {"00m/results/00m.zip": 0, "P001/results/P001.zip": SCREENING_VISIT},
        "folders": {"OAIBaselineImages/results": 0, "OAIScreeningImages/results": SCREENING_VISIT},
    }[layout]
    assert {p.relative_path: p.visit for p in packages} == expected
    assert sum(p.n_rows for p in packages) == len(found)
    assert {row for _, row in sources} == {0}
    assert all(source.endswith("/001") for source, _ in sources)
    if layout == "zip":
        assert all(".zip!" in source for source, _ in sources)


def test_screening_radiographs_are_the_screening_visit(layouts: dict[str, Path], tmp_path: Path) -> None:
    truth = read_xray_truth(layouts["indexed"])
    screened = {s for (s, _side), row in truth.items() if row["visit_dir"] == "XR/P001"}
    baseline = {s for (s, _side), row in truth.items() if row["visit_dir"] == "XR/00m"}
    assert screened and baseline and not screened & baseline
    for layout, root in layouts.items():
        db = open_database(tmp_path / f"{layout}.sqlite")
        ingest_release(db, root)
        with db.read() as s:
            rows = s.execute(
                select(
                    ImageSeries.subject_id, ImageSeries.visit, ImageSeries.month, ImageSeries.study_description
                ).where(ImageSeries.sequence == BILATERAL)
            ).all()
        db.dispose()
        assert {r.subject_id for r in rows if r.visit == SCREENING_VISIT} == screened, layout
        assert {r.subject_id for r in rows if r.visit == 0} == baseline, layout
        assert {r.month for r in rows} == {0}
        assert all("SCREENING" in r.study_description for r in rows if r.visit == SCREENING_VISIT)


def test_scan_images_checks_an_index_against_its_images(layouts: dict[str, Path], reference: dict[str, Any]) -> None:
    db = open_database(layouts["indexed"].parent / "scan-all.sqlite")
    result = ingest_release(db, layouts["indexed"], scan_images=True)
    assert result.status == "succeeded" and result.warnings == []
    assert result.series_scanned == len(discover(layouts["indexed"]).image_series)
    assert _series(db) == reference["series"]
    # the index rows are kept (they agree): line numbers of the contents.csv files
    with db.read() as s:
        assert min(s.scalars(select(ImageSeries.source_row))) >= 2
    # the same files again: unchanged, also for --scan-images; without it a re-ingest is unchanged too
    assert ingest_release(db, layouts["indexed"], scan_images=True).status == "unchanged"
    assert ingest_release(db, layouts["indexed"]).status == "unchanged"
    db.dispose()


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def _contents_row(root: Path, description: str) -> tuple[Path, int, list[str], list[str]]:
    """An indexed release's 00m/contents.csv, the line of a row of ``description``, its header and cells."""
    path = root / "00m" / "contents.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if cells[header.index("SeriesDescription")].strip() == description and (path.parent / cells[0]).is_dir():
            return path, number, header, cells
    raise AssertionError(f"no {description} row with files")


def _replace_line(path: Path, number: int, cells: list[str]) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_index_and_header_that_disagree_stop_the_ingest_naming_both(
    layouts: dict[str, Path], tmp_path: Path, db: Database
) -> None:
    root = _copy(layouts["indexed"], tmp_path)
    path, number, header, cells = _contents_row(root, "SAG_3D_DESS_LEFT")
    folder = cells[0]
    cells[header.index("StudyDate")] = "19990101"
    _replace_line(path, number, cells)
    ingest_release(db, layouts["indexed"])  # a database holding something
    before = _series(db)

    # without --scan-images the index is what is read
    assert ingest_release(db, root).status == "succeeded"
    with pytest.raises(InputFileError) as caught:
        ingest_release(db, root, scan_images=True)
    message = str(caught.value)
    assert f"{path}, line {number}: lists the series folder {folder}" in message
    assert str(root / "00m" / folder / "001") in message
    assert "StudyDate '" in message and "where the index has '1999-01-01'" in message
    ingest_release(db, layouts["indexed"])
    assert _series(db) == before


def test_a_header_of_another_participant_is_named(layouts: dict[str, Path], tmp_path: Path, db: Database) -> None:
    root = _copy(layouts["indexed"], tmp_path)
    _, number, _, cells = _contents_row(root, "SAG_3D_DESS_RIGHT")
    header_file = root / "00m" / cells[0] / "001"
    ds = pydicom.dcmread(header_file)
    ds.PatientID = "9999999"
    ds.save_as(header_file)
    with pytest.raises(
        InputFileError, match=rf"line {number}: .* says participant \(PatientID\) '9999999' where the index has"
    ):
        ingest_release(db, root, scan_images=True)
    with db.read() as s:
        assert s.scalar(select(ImageSeries.id).limit(1)) is None


def test_a_second_series_of_one_knee_that_no_index_lists_is_refused(
    layouts: dict[str, Path], tmp_path: Path, db: Database
) -> None:
    """An extra DESS folder beside an indexed one: scanned (no index lists it), and a conflict."""
    root = _copy(layouts["indexed"], tmp_path)
    _, number, _, cells = _contents_row(root, "SAG_3D_DESS_RIGHT")
    source = root / "00m" / cells[0]
    extra = source.parent / "99999999"
    shutil.copytree(source, extra)
    with pytest.raises(InputFileError) as caught:
        ingest_release(db, root)
    message = str(caught.value)
    assert f"contents.csv, line {number}: lists the series {cells[0]}" in message
    assert f"another series of that knee and sequence is {extra.relative_to(root / '00m').as_posix()}" in message


def test_unreadable_headers_are_counted_warnings_naming_the_files(
    layouts: dict[str, Path], reference: dict[str, Any], tmp_path: Path, db: Database
) -> None:
    root = _copy(layouts["folders"], tmp_path)
    stubs = sorted(p for p in (root / "OAIBaselineImages").rglob("001") if p.stat().st_size < 4096)
    garbage, truncated = stubs[0], stubs[1]
    garbage.write_bytes(b"not a dicom file at all" * 10)
    truncated.write_bytes(truncated.read_bytes()[:300])

    result = ingest_release(db, root)
    assert result.status == "succeeded"
    (warning,) = result.warnings
    assert warning.startswith("2 image series not indexed: unreadable DICOM header (")
    assert f"{garbage}: not a DICOM file" in warning
    assert f"{truncated}: the file ends inside its DICOM header" in warning
    assert result.rows["image_series"] == reference["result"].rows["image_series"] - 2


def test_a_damaged_zip_member_is_named(layouts: dict[str, Path], tmp_path: Path, db: Database) -> None:
    archive = tmp_path / "00m" / "results" / "00m.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(layouts["zip"] / "00m" / "results" / "00m.zip") as source:
        names = [n for n in source.namelist() if n.endswith("/001")][:3]
        with zipfile.ZipFile(archive, "w") as out:
            out.writestr(names[0], source.read(names[0]))
            out.writestr(names[1], b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    result = ingest_release(db, tmp_path)
    assert result.series_scanned == 1 and result.rows["image_series"] == 1
    (warning,) = result.warnings
    assert warning.startswith("1 image series not indexed: unreadable DICOM header (")
    assert f"{archive}!{names[1]}: no PatientID, StudyDate, SeriesDescription" in warning


@pytest.mark.parametrize("member", ["../evil/12345678/001", "/etc/evil/12345678/001", "a/../../evil/001"])
def test_zip_members_leaving_the_archive_are_refused_by_name(
    member: str, layouts: dict[str, Path], tmp_path: Path, db: Database
) -> None:
    archive = tmp_path / "P001" / "results" / "P001.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(layouts["zip"] / "P001" / "results" / "P001.zip") as source:
        good = next(n for n in source.namelist() if n.endswith("/001"))
        data = source.read(good)
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr(good, data)
        out.writestr(zipfile.ZipInfo(member), data)  # ZipInfo keeps the name as given
    with pytest.raises(InputFileError, match=rf"P001\.zip: member '{member}' points outside the archive"):
        ingest_release(db, tmp_path)
    with db.read() as s:
        assert s.scalar(select(ImageSeries.id).limit(1)) is None
    assert not (tmp_path / "evil").exists()


def test_a_changed_or_shrunk_package_is_noticed(layouts: dict[str, Path], tmp_path: Path, db: Database) -> None:
    root = _copy(layouts["folders"], tmp_path)
    assert ingest_release(db, root).status == "succeeded"
    assert ingest_release(db, root).status == "unchanged"
    stub = next(p for p in (root / "OAIBaselineImages").rglob("001") if p.stat().st_size < 4096)
    ds = pydicom.dcmread(stub)
    ds.AccessionNumber = "016699999999"
    ds.save_as(stub)
    assert ingest_release(db, root).status == "succeeded"
    with db.read() as s:
        assert "016699999999" in set(s.scalars(select(ImageSeries.barcode)))
    # most of the baseline package gone: a damaged copy, not a new release
    series = sorted({p.parent for p in (root / "OAIBaselineImages").rglob("001")})
    for folder in series[: int(len(series) * 0.7)]:
        shutil.rmtree(folder)
    with pytest.raises(ShrinkingReleaseError, match=r"OAIBaselineImages/results gives \d+ rows"):
        ingest_release(db, root)


def test_nda_image03_without_archives_and_the_zipped_download_agree(
    layouts: dict[str, Path], reference: dict[str, Any], tmp_path: Path, db: Database
) -> None:
    """image03.txt names each MR series' .tar.gz, absent; the download holds the series: the
    scanned rows are stored, after checking them against image03."""
    root = _copy(layouts["indexed"], tmp_path)
    convert_release(root, "nda", images="zip")
    assert not (root / PACKAGE / "image03").exists() and (root / PACKAGE / "image03.txt").is_file()
    result = ingest_release(db, root)
    assert result.status == "succeeded" and result.image_indexes == 1
    assert [r[:9] for r in _series(db)] == [r[:9] for r in reference["series"]]
    pd.testing.assert_frame_equal(_labels(db), reference["labels"])

    # an accession number that differs between image03 and the header stops it, naming both
    image03 = root / PACKAGE / "image03.txt"
    lines = image03.read_text().splitlines()
    header = [name.strip('"') for name in lines[0].split("\t")]  # real exports quote every field
    row = next(i for i, line in enumerate(lines[2:], start=2) if "SAG_3D_DESS" in line)
    cells = lines[row].split("\t")
    cells[header.index("accession_number")] = '"016600000001"'
    lines[row] = "\t".join(cells)
    image03.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=rf"image03\.txt, line {row + 1}: .*barcode \(AccessionNumber\)"):
        ingest_release(db, root)


def test_cli_images_only_and_scan_images(layouts: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "cli.sqlite")
    res = runner.invoke(app, ["--db", db, "ingest", str(layouts["zip"] / "P001"), "--scan-images", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["series_scanned"] == out["rows"]["image_series"] > 0 and out["image_indexes"] == 0
    res = runner.invoke(app, ["--db", db, "ingest", str(layouts["folders"])])
    assert res.exit_code == 0, res.output
    assert "series read from their DICOM headers:" in res.stdout


def test_cli_synth_nda_writes_a_zipped_download_with_screening_radiographs(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r"
    res = runner.invoke(
        app, ["synth", str(out), "-n", "6", "--images", "--image-size", "small", "--distribution", "nda", "--json"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["image_layout"] == "zip"
    assert {"00m/results/00m.zip", "P001/results/P001.zip"} <= set(summary["distribution_files"])
    assert not list(out.rglob("contents*.csv")) and not list(out.rglob("*.tar.gz"))
    res = runner.invoke(app, ["--db", str(tmp_path / "db.sqlite"), "ingest", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["series_scanned"] > 0
    res = runner.invoke(app, ["synth", str(tmp_path / "x"), "-n", "3", "--image-layout", "zip"])
    assert res.exit_code == 2 and "--image-layout needs --images" in res.output
