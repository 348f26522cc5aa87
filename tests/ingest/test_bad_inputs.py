"""A corpus of generated bad inputs: clinical tables, image indexes (contents.csv) and DICOM
series, each applied to a copy of a good synthetic release.

Clinical tables and indexes: `oai ingest` fails with a message naming the file (and the line and
column where there is one) and the database is unchanged. DICOM series: `oai preprocess` records
a per-series failure naming the file and writes nothing of that series to the store; the other
series are done. Nothing outside the release is ever read: `..` in an index, or a link that
leaves the visit folder, is refused.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database, open_database
from oaicohort.db.schema import ClinicalValue, ImageSeries, IngestRun, Volume
from oaicohort.errors import InputFileError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.store.index import verify_store
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaicohort.ingest.run import ingest_release
from tests.helpers.releases import ingested
from tests.helpers.reliability import DATA_TABLES, table_rows

ASCII = "OAICompleteData_ASCII"
ANY = object()  # line or column not checked (e.g. where random bytes decide it)


@dataclass(frozen=True)
class Expect:
    file: str  # name of the file (or folder) the message must name
    line: int | object | None
    column: str | object | None
    fragment: str


# --------------------------------------------------------------------------- editing helpers


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def set_cell(path: Path, line: int, column: str, value: str, sep: str = "|") -> None:
    """Set the cell of ``column`` (by header name) on 1-based ``line``."""
    lines = _lines(path)
    header = [c.upper() for c in lines[0].split(sep)]
    cells = lines[line - 1].split(sep)
    cells[header.index(column)] = value
    lines[line - 1] = sep.join(cells)
    _write_lines(path, lines)


def rename_column(path: Path, old: str, new: str, sep: str = "|") -> None:
    lines = _lines(path)
    lines[0] = sep.join(new if c == old else c for c in lines[0].split(sep))
    _write_lines(path, lines)


def drop_column(path: Path, column: str, sep: str = ",") -> None:
    lines = _lines(path)
    i = lines[0].split(sep).index(column)
    _write_lines(path, [sep.join(c for j, c in enumerate(ln.split(sep)) if j != i) for ln in lines])


def edit_lines(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    _write_lines(path, change(_lines(path)))


# --------------------------------------------------------------------------- clinical tables and indexes


def _t(root: Path, name: str) -> Path:
    return root / ASCII / name


def _contents(root: Path) -> Path:
    return root / "00m" / "contents.csv"


def _garbage(n: int) -> bytes:
    return random.Random(1).randbytes(n)


def _duplicate_subject_elsewhere(path: Path) -> None:
    """Enrollees lists the first participant again, at another site."""
    lines = _lines(path)
    cells = lines[1].split("|")
    cells[2] = "E" if cells[2] != "E" else "A"
    _write_lines(path, [*lines, "|".join(cells)])


def _table_twice(root: Path) -> None:
    (root / "copy").mkdir()
    shutil.copy(_t(root, "Enrollees.txt"), root / "copy" / "Enrollees.txt")


def _empty_release(root: Path) -> None:
    shutil.rmtree(root)
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "README.txt").write_text("nothing to see")


def _self_link(path: Path) -> None:
    path.unlink()
    path.symlink_to(path)


# case -> (how a good release is damaged, what the error must say)
CLINICAL: dict[str, tuple[Callable[[Path], object], Expect]] = {
    "wrong delimiter": (
        lambda r: _t(r, "Enrollees.txt").write_text(_t(r, "Enrollees.txt").read_text().replace("|", ",")),
        Expect("Enrollees.txt", 1, None, "looks comma-separated"),
    ),
    "header only": (
        lambda r: edit_lines(_t(r, "Enrollees.txt"), lambda ls: ls[:1]),
        Expect("Enrollees.txt", 2, None, "no data rows below the header"),
    ),
    "empty file": (
        lambda r: _t(r, "AllClinical01.txt").write_bytes(b""),
        Expect("AllClinical01.txt", 1, None, "empty file"),
    ),
    "missing ID column": (
        lambda r: rename_column(_t(r, "AllClinical00.txt"), "ID", "PID"),
        Expect("AllClinical00.txt", 1, "ID", "missing required column ID"),
    ),
    "missing SIDE column": (
        lambda r: rename_column(_t(r, "kXR_SQ_BU00.txt"), "SIDE", "KNEE"),
        Expect("kXR_SQ_BU00.txt", 1, "SIDE", "missing required column SIDE"),
    ),
    "missing KL column": (
        lambda r: rename_column(_t(r, "kXR_SQ_BU00.txt"), "V00XRKL", "V00XRKLG"),
        Expect("kXR_SQ_BU00.txt", 1, "V00XRKL", "missing required column V00XRKL"),
    ),
    "non-numeric ID": (
        lambda r: set_cell(_t(r, "AllClinical00.txt"), 4, "ID", "90O3152"),
        Expect("AllClinical00.txt", 4, "ID", "participant id must be a whole number, got '90O3152'"),
    ),
    "ID too long for the database": (
        lambda r: set_cell(_t(r, "kXR_SQ_BU00.txt"), 3, "ID", "99999999999"),
        Expect("kXR_SQ_BU00.txt", 3, "ID", "participant id has 11 digits"),
    ),
    "conflicting duplicate subject": (
        lambda r: _duplicate_subject_elsewhere(_t(r, "Enrollees.txt")),
        Expect("Enrollees.txt", 32, "ID", "is listed twice"),
    ),
    "unknown site letter": (
        lambda r: set_cell(_t(r, "Enrollees.txt"), 3, "V00SITE", "Z"),
        Expect("Enrollees.txt", 3, "V00SITE", "site must be one of the OAI clinical centres A, B, C, D, E, got 'Z'"),
    ),
    "binary garbage": (
        lambda r: _t(r, "Outcomes99.txt").write_bytes(_garbage(4096)),
        Expect("Outcomes99.txt", ANY, None, "binary data"),
    ),
    "NUL byte in a row": (
        lambda r: set_cell(_t(r, "AllClinical02.txt"), 5, "VERSION", "2.\x004"),
        Expect("AllClinical02.txt", 5, None, "binary data (byte 0x00"),
    ),
    "UTF-16 text": (
        lambda r: _t(r, "SubjectChar00.txt").write_bytes(_t(r, "SubjectChar00.txt").read_text().encode("utf-16")),
        Expect("SubjectChar00.txt", 1, None, "UTF-16 text"),
    ),
    "10 MB single line": (
        lambda r: _t(r, "kXR_SQ_BU01.txt").write_bytes(
            _t(r, "kXR_SQ_BU01.txt").read_bytes() + b"9" * 10_000_000 + b"\n"
        ),
        Expect("kXR_SQ_BU01.txt", ANY, None, "row has 1 fields but the header has"),
    ),
    "10 MB cell": (
        lambda r: set_cell(_t(r, "AllClinical00.txt"), 2, "V00AGE", "6" * 10_000_000),
        Expect("AllClinical00.txt", 2, "V00AGE", "number out of range"),
    ),
    "ragged row": (
        lambda r: edit_lines(_t(r, "Outcomes99.txt"), lambda ls: [*ls[:2], ls[2].rsplit("|", 1)[0], *ls[3:]]),
        Expect("Outcomes99.txt", 3, None, "fields but the header has"),
    ),
    "KL grade out of range": (
        lambda r: set_cell(_t(r, "kXR_SQ_BU00.txt"), 2, "V00XRKL", "7: 7"),
        Expect("kXR_SQ_BU00.txt", 2, "V00XRKL", "KL grade must be 0-4"),
    ),
    "unknown knee side": (
        lambda r: set_cell(_t(r, "kXR_SQ_BU00.txt"), 2, "SIDE", "3: Both"),
        Expect("kXR_SQ_BU00.txt", 2, "SIDE", "knee side must be 1 (right) or 2 (left)"),
    ),
    "bad date": (
        lambda r: set_cell(_t(r, "AllClinical00.txt"), 3, "V00EVDATE", "2004-02-12"),
        Expect("AllClinical00.txt", 3, "V00EVDATE", "expected a date mm/dd/yyyy"),
    ),
    "whole number beyond 32 bits": (
        lambda r: set_cell(_t(r, "Outcomes99.txt"), 2, "V99ERKDAYS", "99999999999"),
        Expect("Outcomes99.txt", 2, "V99ERKDAYS", "whole number out of range"),
    ),
    "a table twice": (_table_twice, Expect("Enrollees.txt", None, None, "the release holds this table twice")),
    "empty release": (_empty_release, Expect("release", None, None, "no OAI tables found below this folder")),
    "symlink loop named as a table": (
        lambda r: _self_link(_t(r, "SubjectChar00.txt")),
        Expect("SubjectChar00.txt", None, None, "cannot read file"),
    ),
    "contents.csv missing column": (
        lambda r: drop_column(_contents(r), "SeriesDescription"),
        Expect("contents.csv", 1, "SERIESDESCRIPTION", "missing required column"),
    ),
    "contents.csv Folder outside the release": (
        lambda r: set_cell(_contents(r), 3, "FOLDER", "../../../etc", sep=","),
        Expect("contents.csv", 3, "FOLDER", "Folder leaves the image package"),
    ),
    "contents.csv Folder climbing out in the middle": (
        lambda r: set_cell(_contents(r), 4, "FOLDER", "0.C.2/9003138/../../../../..", sep=","),
        Expect("contents.csv", 4, "FOLDER", "Folder leaves the image package"),
    ),
    "contents.csv empty Folder": (
        lambda r: set_cell(_contents(r), 2, "FOLDER", "", sep=","),
        Expect("contents.csv", 2, "FOLDER", "empty Folder"),
    ),
    "contents.csv over-long SeriesDescription": (
        lambda r: set_cell(_contents(r), 5, "SERIESDESCRIPTION", "SAG_" + "X" * 200 + "_RIGHT", sep=","),
        Expect("contents.csv", 5, "SERIESDESCRIPTION", "more than the 128 the database holds"),
    ),
    "contents.csv non-numeric ParticipantID": (
        lambda r: set_cell(_contents(r), 2, "PARTICIPANTID", "P-9003138", sep=","),
        Expect("contents.csv", 2, "PARTICIPANTID", "participant id must be a whole number"),
    ),
    "contents.csv unterminated quote": (
        lambda r: edit_lines(_contents(r), lambda ls: [*ls[:3], '"' + ls[3], *ls[4:]]),
        Expect("contents.csv", 4, None, "fields but the header has"),
    ),
    "contents.csv binary garbage": (
        lambda r: _contents(r).write_bytes(_contents(r).read_bytes()[:200] + _garbage(1000)),
        Expect("contents.csv", ANY, None, "binary data"),
    ),
}


@pytest.fixture(scope="module")
def clinical(pristine_release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A good release of 30 participants (read-only: cases damage copies) and a database with it
    ingested."""
    return pristine_release, ingested(pristine_release, tmp_path_factory.mktemp("bad_inputs") / "good.sqlite")


def _copy_db(template: Path, target: Path) -> Database:
    shutil.copy(template, target)  # the WAL was checkpointed when the last connection closed
    return open_database(target)


def test_corpus_is_large_enough() -> None:
    # the README (Reliability) says "over 40": 31 damaged tables and indexes, 12 damaged DICOM series
    assert (len(CLINICAL), len(DICOM)) == (31, 12)


@pytest.mark.parametrize("case", sorted(CLINICAL))
def test_bad_table_or_index_is_refused_naming_file_line_column(
    case: str, clinical: tuple[Path, Path], tmp_path: Path
) -> None:
    good, template = clinical
    root = tmp_path / "release"
    shutil.copytree(good, root)
    damage, expect = CLINICAL[case]
    damage(root)
    db = _copy_db(template, tmp_path / "db.sqlite")
    before = table_rows(db, DATA_TABLES)
    with pytest.raises(InputFileError) as err:
        ingest_release(db, root)
    message = str(err.value)
    assert err.value.path.name == expect.file, message
    if expect.line is not ANY:
        assert err.value.line == expect.line, message
    if expect.column is not ANY:
        assert err.value.column == expect.column, message
    assert expect.fragment in message
    assert len(message) < 600  # a 10 MB line is not echoed back
    assert table_rows(db, DATA_TABLES) == before  # no partial write
    with db.read() as s:
        last = s.scalars(select(IngestRun).order_by(IngestRun.id.desc())).first()
    assert last is not None and last.status == "failed" and expect.file in (last.error or "")
    db.dispose()


@pytest.mark.parametrize(
    "case",
    [
        "ID too long for the database",
        "contents.csv over-long SeriesDescription",
        "NUL byte in a row",
        "whole number beyond 32 bits",
    ],
)
def test_what_postgresql_would_refuse_is_refused_on_both_backends_before_writing(
    case: str, any_db: Database, clinical: tuple[Path, Path], tmp_path: Path
) -> None:
    """Column sizes, 32-bit integers and NUL characters: PostgreSQL enforces them where SQLite
    stores anything, so they are checked while parsing, with the same message on both."""
    good, _ = clinical
    ingest_release(any_db, good)
    before = table_rows(any_db, DATA_TABLES)
    root = tmp_path / "release"
    shutil.copytree(good, root)
    damage, expect = CLINICAL[case]
    damage(root)
    with pytest.raises(InputFileError, match=re.escape(expect.fragment)) as err:
        ingest_release(any_db, root)
    assert err.value.path.name == expect.file and err.value.line == expect.line
    assert table_rows(any_db, DATA_TABLES) == before


def test_bad_input_exits_non_zero_from_the_cli(clinical: tuple[Path, Path], tmp_path: Path) -> None:
    good, _ = clinical
    root = tmp_path / "release"
    shutil.copytree(good, root)
    CLINICAL["unknown site letter"][0](root)
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "db.sqlite"), "ingest", str(root)])
    assert result.exit_code == 1
    output = "".join(result.output.split())  # Rich wraps long lines
    assert "Enrollees.txt,line3,column'V00SITE':sitemustbe" in output


def test_latin1_text_is_read_and_a_linked_loop_in_the_release_is_ignored(
    clinical: tuple[Path, Path], tmp_path: Path
) -> None:
    good, _ = clinical
    root = tmp_path / "release"
    shutil.copytree(good, root)
    path = _t(root, "AllClinical00.txt")
    set_cell(path, 2, "V00WKBKTYP", "9: Montréal, größer")
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))  # SAS on Windows
    (root / "00m" / "loop").symlink_to(root / "00m")  # walking it would never end
    db = open_database(tmp_path / "db.sqlite")
    ingest_release(db, root, variables=["V00WKBKTYP"])
    with db.read() as s:
        values = set(s.execute(select(ClinicalValue.value_text)).scalars())
    assert "9: Montréal, größer" in values
    db.dispose()


def test_release_without_contents_csv_ingests_clinical_data_and_preprocess_says_why(
    clinical: tuple[Path, Path], tmp_path: Path
) -> None:
    """Decision: image indexes are optional; without one no series are indexed, and preprocess
    names what is missing."""
    good, _ = clinical
    root = tmp_path / "release"
    shutil.copytree(good, root)
    _contents(root).unlink()
    db = open_database(tmp_path / "db.sqlite")
    result = ingest_release(db, root)
    assert result.rows["subjects"] == 30 and result.rows["image_series"] == 0
    runner = CliRunner()
    out = runner.invoke(app, ["--db", str(tmp_path / "db.sqlite"), "preprocess", "--store", str(tmp_path / "s.zarr")])
    assert out.exit_code == 1
    assert "no SAG_3D_DESS series of visit 0" in " ".join(out.output.split())
    assert "contents.csv" in out.output
    assert not (tmp_path / "s.zarr").exists()
    db.dispose()


# --------------------------------------------------------------------------- DICOM series


def _slices(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _truncate(folder: Path) -> Expect:
    f = _slices(folder)[2]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return Expect(f.name, None, None, "truncated")


def _not_dicom(folder: Path) -> Expect:
    f = _slices(folder)[0]
    f.write_text("this is not an image\n")
    return Expect(f.name, None, None, "not a DICOM file")


def _no_pixels(folder: Path) -> Expect:
    f = _slices(folder)[1]
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    return Expect(f.name, None, None, "no pixel data")


def _mixed_sizes(folder: Path) -> Expect:
    f = _slices(folder)[3]
    ds = pydicom.dcmread(f)
    pixels = ds.pixel_array[:-2]
    ds.Rows = pixels.shape[0]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(f)
    return Expect(f.name, None, None, "(rows x columns)")


def _duplicate_position(folder: Path) -> Expect:
    f = _slices(folder)[4]
    shutil.copy(f, folder / (f.name + "b"))
    return Expect(f.name + "b", None, None, "duplicate slice position")


def _missing_slice(folder: Path) -> Expect:
    files = _slices(folder)
    files[len(files) // 2].unlink()
    return Expect(files[len(files) // 2 + 1].name, None, None, "missing slice(s)")


def _one_slice(folder: Path) -> Expect:
    for f in _slices(folder)[1:]:
        f.unlink()
    return Expect("001", None, None, "single slice")


def _empty_folder(folder: Path) -> Expect:
    for f in _slices(folder):
        f.unlink()
    return Expect(folder.name, None, None, "no slice files")


def _missing_folder(folder: Path) -> Expect:
    shutil.rmtree(folder)
    return Expect(folder.name, None, None, "does not exist")


def _folder_symlink_loop(folder: Path) -> Expect:
    shutil.rmtree(folder)
    folder.symlink_to(folder)
    return Expect(folder.name, None, None, "ymlink loop")


def _outside_copy(folder: Path) -> Path:
    """A good copy of the series outside the release (which the reader must never open)."""
    outside = folder.parents[5] / "outside" / folder.name
    shutil.copytree(folder, outside)
    return outside


def _folder_links_outside(folder: Path) -> Expect:
    outside = _outside_copy(folder)
    shutil.rmtree(folder)
    folder.symlink_to(outside)
    return Expect(folder.name, None, None, "outside its visit folder")


def _slice_links_outside(folder: Path) -> Expect:
    outside = _outside_copy(folder)
    f = _slices(folder)[2]
    f.unlink()
    f.symlink_to(outside / f.name)
    return Expect(f.name, None, None, "outside the visit folder")


DICOM: dict[str, Callable[[Path], Expect]] = {
    "truncated DICOM": _truncate,
    "non-DICOM file named 001": _not_dicom,
    "DICOM without pixel data": _no_pixels,
    "mixed slice sizes": _mixed_sizes,
    "duplicated slice positions": _duplicate_position,
    "a missing slice": _missing_slice,
    "series of one slice": _one_slice,
    "empty series folder": _empty_folder,
    "missing series folder": _missing_folder,
    "series folder is a symlink loop": _folder_symlink_loop,
    "series folder links outside the release": _folder_links_outside,
    "slice file links outside the release": _slice_links_outside,
}

SMALL = PreprocessParams.preset_named("small")


@pytest.fixture
def victim(imaging_release: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[Database, ImageSeries, Path]]:
    """A fresh copy of the database and the DESS series folder a case damages (restored after)."""
    _, template = imaging_release
    db = _copy_db(template, tmp_path / "db.sqlite")
    with db.read() as s:
        series = s.scalars(
            select(ImageSeries)
            .where(ImageSeries.sequence == "SAG_3D_DESS", ImageSeries.visit == 0)
            .order_by(ImageSeries.subject_id, ImageSeries.side)
        ).first()
    assert series is not None
    folder = Path(series.visit_dir) / series.folder
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    try:
        yield db, series, folder
    finally:
        if folder.is_symlink():
            folder.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(backup, folder)
        shutil.rmtree(folder.parents[5] / "outside", ignore_errors=True)
        db.dispose()


def _check_failed_alone(db: Database, series: ImageSeries, store: Path, summary, expect: Expect) -> None:  # type: ignore[no-untyped-def]
    assert summary.failed == 1 and summary.done == summary.selected - 1
    (failure,) = summary.failures
    assert failure["subject_id"] == series.subject_id and failure["side"] == series.side
    assert expect.file in failure["reason"] and expect.fragment in failure["reason"], failure["reason"]
    with db.read() as s:
        rows = s.execute(select(Volume.status, Volume.reason).where(Volume.series_id == series.id)).all()
    assert [r.status for r in rows] == ["failed"]  # the per-series failure is recorded
    keys = VolumeStore.open(store).knee_keys("sag")
    assert knee_key(series.subject_id, series.side) not in keys  # nothing of it in the store
    report = verify_store(db, store)
    assert report["mismatches"] == [] and report["ok"] == summary.done and report["failed_rows"] == 1


@pytest.mark.parametrize("case", sorted(DICOM))
def test_bad_dicom_series_is_a_recorded_failure_naming_the_file(
    case: str, victim: tuple[Database, ImageSeries, Path], tmp_path: Path
) -> None:
    db, series, folder = victim
    expect = DICOM[case](folder)
    store = tmp_path / "vol.zarr"
    summary = run_preprocess(db, store, SMALL, views=("sag",), workers=1)
    _check_failed_alone(db, series, store, summary, expect)


@pytest.mark.parametrize("folder_entry", ["../../outside/{name}", "0.C.2/../../../outside/{name}"])
def test_series_folder_climbing_out_in_the_database_is_refused(
    victim: tuple[Database, ImageSeries, Path], tmp_path: Path, folder_entry: str
) -> None:
    """An index row written by an older toolkit (or edited) cannot make preprocess read outside."""
    db, series, folder = victim
    outside = _outside_copy(folder)
    entry = folder_entry.format(name=outside.name)
    assert (Path(series.visit_dir) / entry).resolve() == outside.resolve()
    with db.write() as s:
        s.execute(update(ImageSeries).where(ImageSeries.id == series.id).values(folder=entry))
    store = tmp_path / "vol.zarr"
    summary = run_preprocess(db, store, SMALL, views=("sag",), workers=1)
    _check_failed_alone(db, series, store, summary, Expect(outside.name, None, None, "outside its visit folder"))
