"""`oai ingest`: one transaction per release, idempotent re-ingest, updates, provenance, errors.

The small releases are written here, in the real OAI formats, in both folder layouts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

import oaicohort.ingest.run as ingest_module
import oaicohort.ingest.writer as ingest_writer
from oaicli.main import app
from oaicohort.db import Database
from oaicohort.db.schema import (
    ClinicalValue,
    ImageSeries,
    IngestFile,
    IngestRun,
    Knee,
    KneeReplacement,
    Subject,
    SubjectVisit,
    XrayReading,
)
from oaicohort.errors import InputFileError, OAIError
from oaicohort.ingest.run import ingest_release
from oaicohort.ingest.variables import parse_variables, read_variables_file

DATA_TABLES = (
    "subjects",
    "subject_visits",
    "knees",
    "xray_readings",
    "knee_replacements",
    "image_series",
    "clinical_values",
)

ENROLLEES = """ID|VERSION|V00SITE|P02SEX|P02RACE|V00COHORT
9000001|2.2.1|C|1: Male|1: White or Caucasian|1: Progression
9000002|2.2.1|D|2: Female|2: Black or African American|2: Incidence
9000003|2.2.1|A|2|1|3
"""
ALLCLINICAL00 = """ID|VERSION|V00AGE|P01BMI|V00EVDATE|V00WOMKPR|P01INJR|V00COMMENT
9000001|2.2.1|61|28.5|03/15/2004|3: 3|1: Yes|fell off a ladder
9000002|2.2.1|55|.: Missing Form/Incomplete Workbook|04/01/2004|.A: Not Expected|0: No|
9000003|2.2.1|70|31.2|.: Missing Form/Incomplete Workbook|0: 0|0: No|
"""
ALLCLINICAL01 = """ID|VERSION|V01AGE|V01BMI|V01FVDATE
9000001|2.2.1|62|28.1|03/20/2005
9000002|2.2.1|.|.|.: Missing Form/Incomplete Workbook
"""
SUBJECTCHAR00 = """ID|VERSION|V00EDCV
9000001|2.2.1|3: College graduate
9000003|2.2.1|.: Missing Form/Incomplete Workbook
"""
KXR00 = """ID|SIDE|READPRJ|VERSION|V00XRKL|V00XRJSM|V00XRJSL|V00XROSFM|V00XROSFL|V00XROSTM|V00XROSTL
9000001|1: Right|15|1.6|2: 2|1: 1|0: 0|1|0|1|0
9000001|2: Left|15|1.6|1: 1|0.5|0|0|0|0|0
9000002|1: Right|37|1.6|0: 0|0|0|0|0|0|0
9000002|1: Right|42|1.6|1: 1|0|0|0|0|0|0
9000002|2: Left|37|1.6|3: 3|2|1|2|1|2|1
9000003|1: Right|15|1.6|4: 4|3|1|3|2|3|2
9000003|2: Left|15|1.6|.P: Prosthesis|.|.|.|.|.|.
"""
KXR01 = """id|side|readprj|v01xrkl|v01xrjsm
9000001|1|15|3|2
9000001|2|15|1|0.5
9000002|2|37|.T: Technical Problems|.
"""
KXR03 = """ID|SIDE|readprj|V03XRKL
9000001|1|15|3
9000002|2|37|4
"""
OUTCOMES = """id|V99ERKRPSN|V99ELKRPSN|V99ERKBLRP|V99ELKBLRP|V99ERKDAYS|V99ELKDAYS|V99ELKVSAF
9000001|0: No replacement seen on any FU xray|0: No replacement seen on any FU xray|0|0|.A: Not Expected|.A: Not Expected|.A
9000002|0: No replacement seen on any FU xray|1: Yes, replacement seen on FU xray|0|0|.A: Not Expected|1100|3: 24-month
9000003|2: No FU xrays of this knee|1: Yes, replacement seen on FU xray|0|1|.A|.A|0: Baseline
"""
CONTENTS00 = """Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription
0.C.2/9000001/20040315/10203004,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^RIGHT,SAG_3D_DESS_RIGHT   
0.C.2/9000001/20040315/10203006,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^RIGHT,COR_MPR_RIGHT
0.C.2/9000001/20040315/10203008,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^LEFT,SAG_3D_DESS_LEFT
0.C.2/9000001/20040315/10203010,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^THIGH,AX_T1_THIGH
0.C.2/9000002/20040401/10203104,9000002,20040401,016610203104,OAI^MR^ENROLLMENT^RIGHT,SAG_3D_DESS_RIGHT
0.C.2/9000002/20040401/10203199,9000002,20040401,016610203104,OAI^MR^ENROLLMENT^RIGHT,SAG_3D_DESS_RIGHT
"""
CONTENTS12 = """Folder,ParticipantID,StudyDate,AccessionNumber,StudyDescription,SeriesDescription
1.C.2/9000001/20050320/11203004,9000001,20050320,16611203004,OAI^MR^12 MONTH^RIGHT,SAG_3D_DESS_RIGHT
"""

FLAT = {
    "Enrollees.txt": ENROLLEES,
    "AllClinical00.txt": ALLCLINICAL00,
    "AllClinical01.txt": ALLCLINICAL01,
    "SubjectChar00.txt": SUBJECTCHAR00,
    "kXR_SQ_BU00.txt": KXR00,
    "kxr_sq_bu01.txt": KXR01,
    "KXR_SQ_BU03.txt": KXR03,
    "Outcomes99.txt": OUTCOMES,
}
CATEGORY = {
    "Enrollees.txt": "General_ASCII",
    "Outcomes99.txt": "General_ASCII",
    "SubjectChar00.txt": "General_ASCII",
    "AllClinical00.txt": "AllClinical_ASCII",
    "AllClinical01.txt": "AllClinical_ASCII",
}
XRAY_DIR = "X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII"


def write_release(root: Path, layout: str = "flat", overrides: dict[str, str] | None = None) -> Path:
    """A small release in the real formats: ``flat`` (OAICompleteData_ASCII), ``spaces``
    (OAI Complete Data_ASCII) or ``categories`` (the older per-category folders)."""
    files = {**FLAT, **(overrides or {})}
    for name, content in files.items():
        if layout == "categories":
            folder = CATEGORY.get(name, XRAY_DIR)
        else:
            folder = "OAICompleteData_ASCII" if layout == "flat" else "OAI Complete Data_ASCII"
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    for visit_dir, content in (("00m", CONTENTS00), ("12m", CONTENTS12)):
        path = root / "Package_1215" / "results" / visit_dir / "contents.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((overrides or {}).get(f"{visit_dir}/contents.csv", content), encoding="utf-8")
    return root


def dump(db: Database, *, portable: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Every data table as sorted rows; ``portable`` drops ids and paths that depend on layout."""
    out = {}
    with db.read() as s:
        for table in DATA_TABLES:
            rows = [dict(r) for r in s.execute(text(f"SELECT * FROM {table}")).mappings()]
            if portable:
                for r in rows:
                    for k in ("id", "knee_id", "source_file", "visit_dir"):
                        r.pop(k, None)
            out[table] = sorted(tuple(sorted((k, str(v)) for k, v in r.items())) for r in rows)
    return out


def runs(db: Database) -> list[IngestRun]:
    with db.read() as s:
        return list(s.scalars(select(IngestRun).order_by(IngestRun.id)))


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path / "release")


# --------------------------------------------------------------------------- happy paths


def test_ingest_reads_every_table(any_db: Database, release: Path) -> None:
    result = ingest_release(any_db, release, variables=["V00WOMKPR", "p01injr", "V00EDCV", "V00COMMENT"])
    assert result.status == "succeeded"
    assert result.rows == {
        "subjects": 3,
        "subject_visits": 5,
        "knees": 6,
        "xray_readings": 12,
        "knee_replacements": 6,
        "image_series": 6,
        "clinical_values": 11,
    }
    with any_db.read() as s:
        subjects = {r.id: r for r in s.scalars(select(Subject))}
        assert [
            (subjects[i].site, subjects[i].sex, subjects[i].race, subjects[i].cohort) for i in sorted(subjects)
        ] == [("C", "M", 1, 1), ("D", "F", 2, 2), ("A", "F", 1, 3)]
        visits = {(v.subject_id, v.visit): v for v in s.scalars(select(SubjectVisit))}
        base = visits[(9000001, 0)]
        assert (base.month, base.age, base.bmi, str(base.visit_date)) == (0, 61, 28.5, "2004-03-15")
        assert visits[(9000002, 0)].bmi is None and visits[(9000003, 0)].visit_date is None
        assert (visits[(9000001, 1)].month, visits[(9000001, 1)].bmi) == (12, 28.1)
        knee = {(k.subject_id, k.side): k.id for k in s.scalars(select(Knee))}
        readings = s.scalars(select(XrayReading).order_by(XrayReading.visit, XrayReading.source_row)).all()
        dup = [
            (r.read_project, r.klg, r.source_row)
            for r in readings
            if r.knee_id == knee[(9000002, "R")] and r.visit == 0
        ]
        assert dup == [(37, 0, 4), (42, 1, 5)]  # both reading projects kept, in file order
        prosthesis = next(r for r in readings if r.knee_id == knee[(9000003, "L")])
        assert (prosthesis.klg, prosthesis.klg_missing_code, prosthesis.jsn_medial) == (None, ".P", None)
        first = readings[0]
        assert (first.klg, first.jsn_medial, first.osteophyte_fm, first.month) == (2, 1.0, 1.0, 0)
        assert first.source_file == "OAICompleteData_ASCII/kXR_SQ_BU00.txt"
        technical = next(r for r in readings if r.visit == 1 and r.knee_id == knee[(9000002, "L")])
        assert (technical.klg, technical.klg_missing_code, technical.month) == (None, ".T", 12)
        assert [r.jsn_medial for r in readings if r.visit == 1][:2] == [2.0, 0.5]
        tkr = {r.knee_id: r for r in s.scalars(select(KneeReplacement))}
        left2 = tkr[knee[(9000002, "L")]]
        assert (left2.status, left2.days_from_enrolment, left2.visit_after, left2.at_baseline) == (1, 1100, 3, False)
        assert tkr[knee[(9000003, "L")]].at_baseline is True
        assert tkr[knee[(9000003, "R")]].status == 2
        series = {(r.subject_id, r.visit, r.side, r.sequence): r for r in s.scalars(select(ImageSeries))}
        assert set(series) == {
            (9000001, 0, "R", "SAG_3D_DESS"),
            (9000001, 0, "R", "COR_MPR"),
            (9000001, 0, "L", "SAG_3D_DESS"),
            (9000001, 0, "", "AX_T1_THIGH"),
            (9000002, 0, "R", "SAG_3D_DESS"),
            (9000001, 1, "R", "SAG_3D_DESS"),
        }
        rescan = series[(9000002, 0, "R", "SAG_3D_DESS")]
        assert rescan.folder.endswith("10203199") and rescan.source_row == 7
        dess = series[(9000001, 0, "R", "SAG_3D_DESS")]
        assert dess.visit_dir == str((release / "Package_1215" / "results" / "00m").resolve())
        assert (dess.series_description, dess.barcode, str(dess.study_date)) == (
            "SAG_3D_DESS_RIGHT",
            "016610203004",
            "2004-03-15",
        )
        assert series[(9000001, 1, "R", "SAG_3D_DESS")].barcode == "16611203004"
        values = {(v.subject_id, v.variable): v for v in s.scalars(select(ClinicalValue))}
        assert values[(9000001, "V00WOMKPR")].value_num == 3.0
        assert values[(9000002, "V00WOMKPR")].missing_code == ".A"
        assert values[(9000001, "P01INJR")].value_text == "1: Yes"
        assert values[(9000001, "V00EDCV")].source_file.endswith("SubjectChar00.txt")
        assert values[(9000001, "V00COMMENT")].value_text == "fell off a ladder"
        files = s.scalars(select(IngestFile).where(IngestFile.run_id == result.run_id)).all()
    assert len(files) == 10 == len(result.files)
    kxr0 = next(f for f in files if f.relative_path.endswith("kXR_SQ_BU00.txt"))
    assert (kxr0.table_kind, kxr0.visit, kxr0.n_rows, len(kxr0.sha256)) == ("kxr_sq_bu", 0, 7, 64)
    assert kxr0.size_bytes == len(KXR00.encode())
    (run,) = runs(any_db)
    assert run.status == "succeeded" and run.finished_at is not None
    assert run.summary["rows"]["xray_readings"] == 12
    assert run.summary["variables"] == ["V00WOMKPR", "P01INJR", "V00EDCV", "V00COMMENT"]


@pytest.mark.parametrize("layout", ["spaces", "categories"])
def test_both_folder_layouts_give_the_same_database(tmp_path: Path, layout: str) -> None:
    from oaicohort.db import open_database

    flat = open_database(tmp_path / "flat.sqlite")
    other = open_database(tmp_path / "other.sqlite")
    ingest_release(flat, write_release(tmp_path / "a"))
    ingest_release(other, write_release(tmp_path / "b", layout))
    assert dump(flat, portable=True) == dump(other, portable=True)
    with other.read() as s:
        paths = set(s.scalars(select(XrayReading.source_file)))
    expected_dir = XRAY_DIR if layout == "categories" else "OAI Complete Data_ASCII"
    assert all(p.startswith(expected_dir) for p in paths)


def test_reingest_of_the_same_release_changes_nothing(any_db: Database, release: Path) -> None:
    first = ingest_release(any_db, release, variables=["V00WOMKPR"])
    before = dump(any_db)
    second = ingest_release(any_db, release)  # fewer variables: still nothing to do
    assert (first.status, second.status) == ("succeeded", "unchanged")
    assert all(n == 0 for n in second.rows.values())
    assert dump(any_db) == before
    third = ingest_release(any_db, release, variables=["V00WOMKPR"])
    assert third.status == "unchanged"
    assert [r.status for r in runs(any_db)] == ["succeeded", "unchanged", "unchanged"]
    with any_db.read() as s:  # provenance of the unchanged runs too
        n_files = s.scalar(select(func.count()).select_from(IngestFile).where(IngestFile.run_id == second.run_id))
    assert n_files == 10


def test_unchanged_release_is_not_parsed_again(db: Database, release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ingest_release(db, release)

    def no_parsing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("parsed an unchanged release")

    monkeypatch.setattr(ingest_module, "read_release", no_parsing)
    second = ingest_release(db, release)
    assert second.status == "unchanged"
    assert [(f.relative_path, f.sha256, f.n_rows) for f in second.files] == [
        (f.relative_path, f.sha256, f.n_rows) for f in first.files
    ]


def test_api_read_then_write_is_idempotent_too(db: Database, release: Path) -> None:
    parsed = ingest_module.read_release(release)
    assert ingest_module.write_release(db, parsed).status == "succeeded"
    assert ingest_module.write_release(db, ingest_module.read_release(release)).status == "unchanged"


def test_a_file_changed_during_the_ingest_is_refused(
    db: Database, release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest_module.fingerprint

    def stale(*args: Any, **kwargs: Any) -> dict[str, str]:
        files = real(*args, **kwargs)
        return {path: ("0" * 64 if path.endswith("Outcomes99.txt") else sha) for path, sha in files.items()}

    monkeypatch.setattr(ingest_module, "fingerprint", stale)
    with pytest.raises(InputFileError, match="Outcomes99.txt: the file changed while being ingested"):
        ingest_release(db, release)
    assert dump(db) == {t: [] for t in DATA_TABLES}


def test_asking_for_a_new_variable_is_a_change(db: Database, release: Path) -> None:
    ingest_release(db, release)
    result = ingest_release(db, release, variables=["V00WOMKPR"])
    assert result.status == "succeeded" and result.rows["clinical_values"] == 3
    assert result.inserted["subjects"] == 0 and result.inserted["knees"] == 0


def test_newer_release_updates_rows_and_keeps_ids(any_db: Database, tmp_path: Path) -> None:
    old = write_release(tmp_path / "old")
    ingest_release(any_db, old)
    with any_db.read() as s:
        knee_ids = {(k.subject_id, k.side): k.id for k in s.scalars(select(Knee))}
        series_ids = {(r.subject_id, r.visit, r.side, r.sequence): r.id for r in s.scalars(select(ImageSeries))}
    new = write_release(
        tmp_path / "new",
        overrides={
            # site corrected, a new participant enrolled
            "Enrollees.txt": ENROLLEES.replace("9000003|2.2.1|A", "9000003|2.2.1|B") + "9000004|2.2.1|E|1|1|1\n",
            # a KL grade re-read, one reading dropped, the new participant read
            "kXR_SQ_BU00.txt": KXR00.replace("9000001|1: Right|15|1.6|2: 2", "9000001|1: Right|15|1.6|3: 3").replace(
                "9000002|1: Right|42|1.6|1: 1|0|0|0|0|0|0\n", ""
            )
            + "9000004|2|15|1.6|0|0|0|0|0|0|0\n",
            # participant 9000001's COR_MPR no longer listed
            "00m/contents.csv": "\n".join(line for line in CONTENTS00.splitlines() if "COR_MPR" not in line) + "\n",
        },
    )
    result = ingest_release(any_db, new)
    assert result.status == "succeeded"
    assert result.inserted["subjects"] == 1 and result.inserted["knees"] == 1
    # a kXR file is the whole truth for its visit: all old readings of visits 00, 01, 03 replaced
    assert result.removed["image_series"] == 1 and result.removed["xray_readings"] == 12
    with any_db.read() as s:
        assert s.get(Subject, 9000003).site == "B"
        assert s.get(Subject, 9000004).site == "E"
        new_knees = {(k.subject_id, k.side): k.id for k in s.scalars(select(Knee))}
        assert {k: v for k, v in new_knees.items() if k in knee_ids} == knee_ids
        r = s.scalars(
            select(XrayReading).where(XrayReading.knee_id == knee_ids[(9000001, "R")], XrayReading.visit == 0)
        ).one()
        assert r.klg == 3
        n_visit0 = s.scalar(select(func.count()).select_from(XrayReading).where(XrayReading.visit == 0))
        assert n_visit0 == 7  # 7 old - 1 dropped + 1 new
        n_visit1 = s.scalar(select(func.count()).select_from(XrayReading).where(XrayReading.visit == 1))
        assert n_visit1 == 3
        series = {(r.subject_id, r.visit, r.side, r.sequence): r.id for r in s.scalars(select(ImageSeries))}
        assert (9000001, 0, "R", "COR_MPR") not in series
        assert {k: v for k, v in series_ids.items() if k in series} == series
        assert s.scalar(select(func.count()).select_from(SubjectVisit)) == 5
    assert [r.status for r in runs(any_db)] == ["succeeded", "succeeded"]
    assert runs(any_db)[1].source_root == str(new.resolve())


# --------------------------------------------------------------------------- failures roll back


def test_a_failing_file_changes_nothing_and_is_recorded(any_db: Database, tmp_path: Path) -> None:
    ingest_release(any_db, write_release(tmp_path / "good"))
    before = dump(any_db)
    bad = write_release(
        tmp_path / "bad",
        overrides={
            "Enrollees.txt": ENROLLEES + "9000005|2.2.1|E|1|1|1\n",
            "KXR_SQ_BU03.txt": KXR03 + "90000x6|1|15|2\n",
        },
    )
    with pytest.raises(InputFileError) as err:
        ingest_release(any_db, bad)
    assert err.value.path.name == "KXR_SQ_BU03.txt"
    assert (err.value.line, err.value.column) == (4, "ID")
    assert dump(any_db) == before
    last = runs(any_db)[-1]
    assert last.status == "failed" and "KXR_SQ_BU03.txt, line 4, column 'ID'" in last.error
    assert last.finished_at is not None


def test_a_failure_while_writing_rolls_everything_back(
    any_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_release(any_db, write_release(tmp_path / "good"))
    before = dump(any_db)
    newer = write_release(tmp_path / "newer", overrides={"Enrollees.txt": ENROLLEES.replace("|C|", "|E|")})

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    # subjects, knees, visits and readings are written before the series: all must roll back
    monkeypatch.setattr(ingest_writer, "_write_series", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_release(any_db, newer)
    assert dump(any_db) == before
    assert runs(any_db)[-1].status == "failed" and runs(any_db)[-1].error == "RuntimeError: disk full"


def test_interrupted_ingest_is_recorded(db: Database, release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest_writer, "_write_readings", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ingest_release(db, release)
    assert dump(db) == {t: [] for t in DATA_TABLES}
    assert [r.status for r in runs(db)] == ["interrupted"]


def test_wrong_root_and_empty_release(db: Database, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such directory"):
        ingest_release(db, tmp_path / "nowhere")
    (tmp_path / "empty" / "docs").mkdir(parents=True)
    (tmp_path / "empty" / "docs" / "README.txt").write_text("hello")
    with pytest.raises(InputFileError, match="no OAI tables found below this folder"):
        ingest_release(db, tmp_path / "empty")
    assert [r.status for r in runs(db)] == ["failed", "failed"]
    assert dump(db) == {t: [] for t in DATA_TABLES}


@pytest.mark.parametrize(
    ("name", "content", "line", "column", "message"),
    [
        ("kXR_SQ_BU00.txt", KXR00.replace("|", ","), 1, None, "looks comma-separated"),
        ("kXR_SQ_BU00.txt", KXR00.replace("V00XRKL", "V00XRKLX"), 1, "V00XRKL", "missing required column"),
        ("kxr_sq_bu01.txt", KXR01.replace("side", "knee"), 1, "SIDE", "missing required column"),
        ("Enrollees.txt", ENROLLEES.replace("V00SITE", "SITE"), 1, "V00SITE", "missing required column"),
        ("Outcomes99.txt", OUTCOMES.replace("id|", "pid|"), 1, "ID", "missing required column"),
        ("AllClinical00.txt", ALLCLINICAL00.replace("9000002|", "9000002a|"), 3, "ID", "participant id"),
        ("kXR_SQ_BU00.txt", KXR00 + "9000003|2\n", 9, None, "row has 2 fields"),
    ],
)
def test_bad_input_names_file_line_and_column(
    db: Database, tmp_path: Path, name: str, content: str, line: int, column: str | None, message: str
) -> None:
    root = write_release(tmp_path / "r", overrides={name: content})
    with pytest.raises(InputFileError) as err:
        ingest_release(db, root)
    assert err.value.path.name == name
    assert (err.value.line, err.value.column) == (line, column)
    assert message in str(err.value)
    assert dump(db) == {t: [] for t in DATA_TABLES}


def test_broken_link_is_skipped_with_a_warning(db: Database, release: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = release / "OAICompleteData_ASCII" / "Outcomes99.txt"
    target.unlink()
    target.symlink_to(release / "missing.txt")  # listed in the folder, but cannot be read
    result = ingest_release(db, release)
    assert "Outcomes99.txt: a broken link (its target does not exist); skipped" in caplog.text
    assert "OAICompleteData_ASCII/Outcomes99.txt" not in [f.relative_path for f in result.files]


def test_subjects_missing_from_enrollees_get_a_bare_row(
    db: Database, release: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (release / "OAICompleteData_ASCII" / "KXR_SQ_BU03.txt").write_text(KXR03 + "9000777|1|15|2\n")
    ingest_release(db, release)
    with db.read() as s:
        stray = s.get(Subject, 9000777)
        assert stray is not None and stray.site is None
    assert "not in Enrollees" in caplog.text


# --------------------------------------------------------------------------- variables


def test_unknown_variable_is_an_error_naming_it(db: Database, release: Path) -> None:
    with pytest.raises(OAIError, match="V00NOSUCH not found in any Enrollees, SubjectChar or AllClinical file"):
        ingest_release(db, release, variables=["V00WOMKPR", "V00NOSUCH"])
    assert dump(db) == {t: [] for t in DATA_TABLES}


def test_variable_lists(tmp_path: Path) -> None:
    assert parse_variables(" v00womkpr, P01INJR  V00WOMKPR;x_1 ") == ["V00WOMKPR", "P01INJR", "X_1"]
    with pytest.raises(OAIError, match="'V00-X' is not an OAI variable name"):
        parse_variables("V00-X")
    f = tmp_path / "vars.txt"
    f.write_text("# WOMAC pain\nV00WOMKPR, V00WOMKPL\n\nP01INJR  # injury\n")
    assert read_variables_file(f) == ["V00WOMKPR", "V00WOMKPL", "P01INJR"]
    f.write_text("V00WOMKPR\nV00 WOM?\n")
    with pytest.raises(InputFileError, match=r"vars.txt, line 2: 'WOM\?' is not an OAI variable name"):
        read_variables_file(f)


# --------------------------------------------------------------------------- CLI


def test_cli_json_summary(tmp_path: Path, release: Path) -> None:
    db_path = tmp_path / "cli.sqlite"
    vars_file = tmp_path / "vars.txt"
    vars_file.write_text("V00EDCV\n")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "--db",
            str(db_path),
            "ingest",
            str(release),
            "--variables",
            "V00WOMKPR",
            "--variables-file",
            str(vars_file),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "succeeded" and summary["run_id"] == 1
    assert summary["rows"]["xray_readings"] == 12 and summary["rows"]["clinical_values"] == 5
    assert summary["tables"] == list(DATA_TABLES)
    assert summary["n_files"] == 10 and len(summary["files"]) == 10
    assert {"relative_path", "sha256", "n_rows"} <= set(summary["files"][0])
    assert summary["variables"] == ["V00WOMKPR", "V00EDCV"]
    assert summary["seconds"] > 0
    again = runner.invoke(app, ["--db", str(db_path), "ingest", str(release), "--json"])
    assert json.loads(again.stdout)["status"] == "unchanged"


def test_cli_table_and_errors(tmp_path: Path, release: Path) -> None:
    db_path = tmp_path / "cli.sqlite"
    runner = CliRunner()
    res = runner.invoke(app, ["--db", str(db_path), "ingest", str(release)])
    assert res.exit_code == 0, res.output
    assert "ingest run 1: succeeded" in res.stdout
    assert "xray_readings" in res.stdout and "10 files from" in res.stdout
    bad = write_release(tmp_path / "bad", overrides={"kXR_SQ_BU00.txt": KXR00.replace("|", "\t")})
    res = runner.invoke(app, ["--db", str(db_path), "ingest", str(bad)])
    assert res.exit_code == 1
    assert "kXR_SQ_BU00.txt, line 1: unknown delimiter" in " ".join(res.output.split())
    res = runner.invoke(app, ["--db", str(db_path), "ingest", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "no such directory" in " ".join(res.output.split())


def test_progress_is_reported(db: Database, release: Path) -> None:
    seen: list[tuple[str, float, float | None]] = []
    ingest_release(db, release, progress=lambda task, done, total: seen.append((task, done, total)))
    reading = [s for s in seen if s[0] == "reading files"]
    writing = [s for s in seen if s[0] == "writing database"]
    assert reading[0] == ("reading files", 0, 10) and reading[-1] == ("reading files", 10, 10)
    assert [d for _, d, _ in reading] == list(range(11))
    assert writing[-1][1] == writing[-1][2] == 7
