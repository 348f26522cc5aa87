"""NDA data packages as they are downloaded today (issue 20; OAI_DISTRIBUTIONS.md section 5).

The synthetic release is written as a package with the names real packages use, its rows
shuffled, and must give the database and labels of the classic ASCII form; then the messy cases
real packages have (NDA text categories, a user's map with the real places, image03 without a
visit column, quoted fields, ``.csv`` exports, CRLF and a BOM) each get a test.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.definitions import preset
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort
from oaicohort.db import Database, open_database
from oaicohort.errors import InputFileError
from oaicohort.ingest.run import ingest_release
from oaicohort.release.discovery import discover
from oaicohort.release.image_index import read_image03
from oaicohort.release.text import load_source
from oaicohort.synth import write_release
from oaicohort.synth.distributions import PACKAGE, convert_release
from tests.helpers.distributions import COMPARED, dump
from tests.helpers.releases import copy_release

SUBJECTS = 30  # in the shared ascii_release (tests/conftest.py, seed 5)
# the names of issue 20 (V00WOMKPR, P01KSURGR, V00KOOSKPR ...), and two that share a column with
# a mapped one in older packages (V00KSURGR: ksurgr there, v00ksurgr in a real-names package)
VARIABLES = [
    "V00WOMKPR",
    "V00WOMKPL",
    "P01KSURGR",
    "P01KSURGL",
    "V00KOOSKPR",
    "V00KOOSKPL",
    "V00KSURGR",
    "P01BMI",
    "V03WOMKPL",
    "P02RACE",
    "P02SEX",
    "P02HISP",
    "V00EDCV",
    "P01SVDATE",
    "V00KPNR12",
]
DATE_NOTE = f"{PACKAGE}/image03.txt: study dates taken from the image_file paths"


def shuffle_rows(package: Path, seed: int = 1) -> None:
    """Shuffle the data rows of every structure file and image03 (headers and descriptions stay)."""
    rng = random.Random(seed)
    for path in sorted(package.glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        rows = lines[2:]
        rng.shuffle(rows)
        path.write_text("".join(lines[:2] + rows), encoding="utf-8")


def _labels(db: Database, definition: Any = "panfilov2022") -> pd.DataFrame:
    labels = derive_labels(db, definition).labels
    keep = [c for c in labels.columns if c not in ("knee_id", "definition_id", "id")]
    return labels[keep].sort_values(["subject_id", "side"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def releases(ascii_release: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same synthetic release as classic ASCII, as a real-names package with shuffled rows,
    and as a package in the first synthetic form."""
    base = tmp_path_factory.mktemp("nda")
    out = {}
    for name, distribution, legacy in (("ascii", "ascii", False), ("real", "nda", False), ("legacy", "nda", True)):
        root = copy_release(ascii_release, base / name)
        convert_release(root, distribution, legacy_names=legacy)
        out[name] = root
    shuffle_rows(out["real"] / PACKAGE)
    return out


@pytest.fixture(scope="module")
def reference(releases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = open_database(tmp_path_factory.mktemp("ref") / "ascii.sqlite")
    result = ingest_release(db, releases["ascii"], variables=VARIABLES)
    out = {"dump": dump(db), "labels": _labels(db), "result": result}
    db.dispose()
    return out


def _assert_same_as_ascii(db: Database, reference: dict[str, Any]) -> None:
    got = dump(db)
    for table, rows in reference["dump"].items():
        assert got[table] == rows, table
    assert all(reference["dump"][t] for t in COMPARED)  # the comparison sees data in every table
    pd.testing.assert_frame_equal(_labels(db), reference["labels"])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- the package as written


def test_the_synthetic_package_has_the_real_names(releases: dict[str, Path]) -> None:
    package = releases["real"] / PACKAGE

    def header(name: str) -> list[str]:
        return (package / name).read_text(encoding="utf-8").splitlines()[0].split("\t")

    assert {"ageyears", "race", "ethnicity", "sex", "site", "e_cohort"} <= set(header("oai_enrollee01.txt"))
    assert {"bmi", "ksurgr", "ksurgl", "injr", "famkr", "height_av", "weight_met"} <= set(header("oai_oarisk01.txt"))
    assert "p01bmi" not in header("oai_oarisk01.txt") and "age" not in header("oai_oarisk01.txt")
    assert {"womac_pain_right", "womac_pain_left", "koos_rkpain", "koos_lkpain"} <= set(header("oai_koos_womac01.txt"))
    enrollees = pd.read_csv(package / "oai_enrollee01.txt", sep="\t", dtype=str, skiprows=[1], keep_default_na=False)
    assert set(enrollees["race"]) <= {"White", "Black or African American", "Asian", "Other Non-white", ""}
    assert set(enrollees["sex"]) == {"M", "F"}
    assert set(enrollees["ethnicity"]) <= {"Hispanic or Latino", "Not Hispanic or Latino", ""}
    image03 = (package / "image03.txt").read_text(encoding="utf-8").splitlines()
    assert image03[0].startswith('"subjectkey"\t"src_subject_id"') and '"visit"' not in image03[0]


def test_legacy_names_keep_the_first_form(releases: dict[str, Path]) -> None:
    package = releases["legacy"] / PACKAGE
    risk = (package / "oai_oarisk01.txt").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert {"age", "p01bmi", "p01ksurgr"} <= set(risk)
    assert "\tvisit\t" in (package / "image03.txt").read_text(encoding="utf-8").splitlines()[0]


# --------------------------------------------------------------------------- same database, any order


def test_a_real_names_package_with_shuffled_rows_gives_the_ascii_database_and_labels(
    releases: dict[str, Path], reference: dict[str, Any], db: Database
) -> None:
    result = ingest_release(db, releases["real"], variables=VARIABLES)

    assert result.status == "succeeded" and result.forms == ["nda"] and result.image_indexes == 1
    assert result.rows == reference["result"].rows
    # the one thing said: image03's interview_date is a day before the study date of the paths
    assert len(result.warnings) == 1 and result.warnings[0].startswith(DATE_NOTE)
    assert "one day earlier" in result.warnings[0]
    _assert_same_as_ascii(db, reference)


def test_the_legacy_names_package_still_ingests(
    releases: dict[str, Path], reference: dict[str, Any], db: Database
) -> None:
    result = ingest_release(db, releases["legacy"], variables=VARIABLES)
    assert result.status == "succeeded" and result.warnings == []
    _assert_same_as_ascii(db, reference)


def test_reversing_every_kxr_file_changes_no_label(tmp_path: Path) -> None:
    root = tmp_path / "release"
    write_release(root, subjects=150, seed=3)
    db = open_database(tmp_path / "in_order.sqlite")
    ingest_release(db, root)
    before = _labels(db)
    by_file = dataclasses.replace(preset("panfilov2022"), name="file_order", reading_order="file")
    file_before = _labels(db, by_file)
    db.dispose()
    for path in (root / "OAICompleteData_ASCII").iterdir():
        if path.name.lower().startswith("kxr_sq_bu"):
            lines = path.read_text(encoding="utf-8").splitlines()
            path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n", encoding="utf-8")
    db = open_database(tmp_path / "reversed.sqlite")
    ingest_release(db, root)
    pd.testing.assert_frame_equal(_labels(db), before)
    # the file order alone is what depended on the rows' order
    assert not _labels(db, by_file).equals(file_before)
    db.dispose()


# --------------------------------------------------------------------------- variables and knee pairs


def test_variables_by_their_ascii_and_nda_names_make_knee_pairs(
    releases: dict[str, Path], reference: dict[str, Any], db: Database
) -> None:
    names = [
        "oai_koos_womac01.womac_pain_right@V00",
        "oai_koos_womac01.womac_pain_left@V00",
        "oai_koos_womac01.womac_stiffness_right@V03",
        "oai_koos_womac01.womac_stiffness_left@V03",
        "V00KOOSKPR",
        "V00KOOSKPL",
        "P01KSURGR",
        "P01KSURGL",
    ]
    ingest_release(db, releases["real"], variables=names)
    with db.read() as s:
        pairs = dict(s.execute(text("SELECT name, left_variable FROM knee_variable_pairs")).all())
    assert pairs == {
        "WOMKP@V00": "OAI_KOOS_WOMAC01.WOMAC_PAIN_LEFT@V00",
        "WOMSTF@V03": "OAI_KOOS_WOMAC01.WOMAC_STIFFNESS_LEFT@V03",
        "KOOSKP@V00": "V00KOOSKPL",
        "KSURG@P01": "P01KSURGL",
    }
    derive_labels(db)
    knees = Cohort(db).knees(split=None, include_excluded=True, variables=["WOMKP@V00", "KOOSKP@V00"])
    ascii_values = {
        (int(subject), variable): value
        for subject, variable, value, _ in reference["dump"]["clinical_values"]
        if variable in ("V00WOMKPR", "V00WOMKPL", "V00KOOSKPR", "V00KOOSKPL")
        for value in [None if value == "None" else float(value)]
    }
    checked = 0
    for knee in knees.itertuples():
        side = "R" if knee.side == "R" else "L"
        for column, stem in (("WOMKP@V00", "V00WOMKP"), ("KOOSKP@V00", "V00KOOSKP")):
            expected = ascii_values[(int(knee.subject_id), stem + side)]
            got = knees.at[knee.Index, column]
            assert (pd.isna(got) and expected is None) or got == pytest.approx(expected), (knee, column)
            checked += 1
    assert checked == 4 * SUBJECTS


# --------------------------------------------------------------------------- messy real-world cases


def _edit_rows(path: Path, edit: Any, sep: str = "\t") -> None:
    """Apply ``edit(row dict) -> None`` to every data row of a structure file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(sep)
    out = lines[:2]
    for line in lines[2:]:
        row = dict(zip(header, line.split(sep)))
        edit(row)
        out.append(sep.join(row[h] for h in header))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def test_nda_categories_are_stored_and_an_unknown_one_is_a_counted_warning(
    releases: dict[str, Path], tmp_path: Path, db: Database
) -> None:
    root = _copy(releases["real"], tmp_path / "categories")
    enrollees = root / PACKAGE / "oai_enrollee01.txt"
    ids = [line.split("\t")[1] for line in enrollees.read_text(encoding="utf-8").splitlines()[2:7]]
    race = {ids[0]: "Unknown or not reported", ids[1]: "More than one race", ids[2]: "Martian", ids[3]: "martian"}
    sex = {ids[0]: "NR", ids[4]: "O"}

    def edit(row: dict[str, str]) -> None:
        row["race"] = race.get(row["src_subject_id"], row["race"])
        row["sex"] = sex.get(row["src_subject_id"], row["sex"])

    _edit_rows(enrollees, edit)
    martian_line = 5  # header, description, then the third data row
    result = ingest_release(db, root, variables=["P02RACE", "P02SEX"])

    assert result.status == "succeeded"
    with db.read() as s:
        subjects = {str(i): (sx, r) for i, sx, r in s.execute(text("SELECT id, sex, race FROM subjects")).all()}
        clinical = {
            (str(sid), v): (num, code)
            for sid, v, num, code in s.execute(
                text("SELECT subject_id, variable, value_num, missing_code FROM clinical_values")
            ).all()
        }
        dictionary = {
            (v, c): label for v, c, label in s.execute(text("SELECT variable, code, label FROM data_dictionary")).all()
        }
    assert subjects[ids[0]] == (None, None) and subjects[ids[1]][1] == 4
    assert subjects[ids[2]][1] is None and subjects[ids[3]][1] is None and subjects[ids[4]][0] is None
    assert clinical[(ids[0], "P02RACE")] == (None, ".N") and clinical[(ids[1], "P02RACE")] == (4, None)
    assert clinical[(ids[0], "P02SEX")] == (None, ".N") and clinical[(ids[4], "P02SEX")] == (None, ".O")
    assert clinical[(ids[2], "P02RACE")] == (None, "")  # unknown: stored as missing
    assert dictionary[("P02RACE", ".N")] == "Unknown or not reported (NDA category)"
    assert dictionary[("P02RACE", "4")] == "More than one race (NDA category)"
    assert dictionary[("P02SEX", ".O")].startswith("Other") and dictionary[("P02SEX", "2")] == "Female"
    unknown = [w for w in result.warnings if "not an NDA category" in w]
    assert unknown == [
        f"{PACKAGE}/oai_enrollee01.txt, line {martian_line}, column 'race': 2 cell(s) not an NDA category of "
        "P02RACE ('Martian', 'martian'); stored as missing"
    ]
    said = " ".join(result.warnings)
    assert "'unknown or not reported' stored as '.N: Unknown or not reported (NDA category)'" in said
    assert "column 'sex': 1 cell(s) of the NDA category 'o'" in said


def test_a_user_map_with_the_real_places_draws_one_table_from_several_structures(
    releases: dict[str, Path], reference: dict[str, Any], tmp_path: Path, db: Database
) -> None:
    root = _copy(releases["real"], tmp_path / "user_map")
    package = root / PACKAGE
    # this package calls them otherwise, and keeps the age in months
    _edit_rows(
        package / "oai_enrollee01.txt",
        lambda r: r.update(ageyears=str(int(r["ageyears"]) * 12) if r["ageyears"] else ""),
    )
    for name, old, new in (
        ("oai_enrollee01.txt", "\tageyears", "\tage_months"),
        ("oai_oarisk01.txt", "\tbmi\t", "\tbmi_v\t"),
    ):
        path = package / name
        path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")
    (package / "oai_nda_map.csv").write_text(
        "ascii,structure,column,visit,transform\n"
        "V00AGE,oai_enrollee01,age_months,,/12\n"
        "P01BMI,oai_oarisk01,bmi_v,V00,\n"
        "V{vv}BMI,oai_oarisk01,bmi_v,V{vv},\n",
        encoding="utf-8",
    )
    result = ingest_release(db, root, variables=VARIABLES)
    assert result.status == "succeeded"
    _assert_same_as_ascii(db, reference)


def test_a_user_map_naming_a_missing_column_names_what_was_looked_for(
    releases: dict[str, Path], tmp_path: Path, db: Database
) -> None:
    root = _copy(releases["real"], tmp_path / "user_map_bad")
    (root / PACKAGE / "oai_nda_map.csv").write_text(
        "ascii,structure,column,visit,transform\nP01BMI,oai_oarisk01,bmi_kg,V00,\nV00AGE,oai_enrollee01,ageyears,,x2\n",
        encoding="utf-8",
    )
    with pytest.raises(
        InputFileError, match=r"oai_nda_map\.csv, line 3, column 'transform': transform must be /N or \*N"
    ):
        ingest_release(db, root)
    (root / PACKAGE / "oai_nda_map.csv").write_text(
        "ascii,structure,column,visit\nP01BMI,oai_oarisk01,bmi_kg,V00\n", encoding="utf-8"
    )
    with pytest.raises(InputFileError, match=r"oai_oarisk01\.txt, line 1, column 'bmi_kg': missing required column"):
        ingest_release(db, root)


def test_csv_exports_of_the_structures_read_like_the_tab_files(
    releases: dict[str, Path], reference: dict[str, Any], tmp_path: Path
) -> None:
    root = _copy(releases["real"], tmp_path / "csv")
    for path in sorted((root / PACKAGE).glob("*.txt")):
        quoting = csv.QUOTE_MINIMAL if path.name == "image03.txt" else csv.QUOTE_NONE  # image03's are quoted
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t", quoting=quoting))
        with open(path.with_suffix(".csv"), "w", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerows(rows)  # quotes the cells holding a comma
        path.unlink()
    db = open_database(tmp_path / "csv.sqlite")
    result = ingest_release(db, root, variables=VARIABLES)
    assert result.status == "succeeded" and result.image_indexes == 1
    assert {f.relative_path for f in result.files} >= {f"{PACKAGE}/oai_enrollee01.csv", f"{PACKAGE}/image03.csv"}
    _assert_same_as_ascii(db, reference)
    db.dispose()


def test_crlf_and_a_bom_read_like_the_plain_files(
    releases: dict[str, Path], reference: dict[str, Any], tmp_path: Path
) -> None:
    root = _copy(releases["real"], tmp_path / "crlf")
    for path in sorted((root / PACKAGE).glob("*.txt")):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    db = open_database(tmp_path / "crlf.sqlite")
    assert ingest_release(db, root, variables=VARIABLES).status == "succeeded"
    _assert_same_as_ascii(db, reference)
    db.dispose()


IMAGE03_HEADER = ["src_subject_id", "interview_date", "image_file", "image_description", "accession_number"]


def _image03(tmp_path: Path, rows: list[list[str]], quoted: bool = True, header: list[str] = IMAGE03_HEADER) -> Path:
    package = tmp_path / "Package_1"
    package.mkdir(exist_ok=True)

    def line(fields: list[str]) -> str:
        return "\t".join(f'"{f}"' if quoted else f for f in fields)

    body = [line(header), line(["d"] * len(header)), *(line(r) for r in rows)]
    (package / "image03.txt").write_text("\r\n".join(body) + "\r\n", encoding="utf-8")
    return package / "image03.txt"


def test_image03_without_a_visit_column_takes_visit_and_date_from_the_path(tmp_path: Path) -> None:
    key = "s3://NDAR_Central_4/submission_1/{visit}/{code}/9000001/{date}/{n}.tar.gz"
    _image03(
        tmp_path,
        [
            [
                "9000001",
                "03/14/2004",
                key.format(visit="00m", code="0.C.2", date="20040315", n=1),
                "SAG_3D_DESS_RIGHT",
                "1",
            ],
            # a known release code alone also names the visit; a tab inside quotes is a cell's
            ["9000001", "03/01/2006", "s3://b/2.D.2/9000001/20060301/2.tar.gz", "COR_IW_TSE_LEFT", "2\tx"],
            [
                "9000001",
                "03/20/2005",
                key.format(visit="12m", code="1.C.2", date="20050321", n=3),
                "SAG_3D_DESS_LEFT",
                "3",
            ],
            ["9000001", "01/01/2005", "s3://b/elsewhere/4.tar.gz", "AX_MPR_LEFT", "4"],
        ],
    )
    warnings: list[str] = []
    frame = read_image03(load_source(discover(tmp_path).sources[0]), warnings)
    got = frame[["visit", "side", "sequence", "study_date", "barcode"]].astype(str).values.tolist()
    assert got == [
        ["0", "R", "SAG_3D_DESS", "2004-03-15", "1"],
        ["2", "L", "COR_IW_TSE", "2006-03-01", "2\tx"],
        ["1", "L", "SAG_3D_DESS", "2005-03-21", "3"],
    ]
    assert len(warnings) == 2
    assert "1 series row(s) not read: cannot tell the visit" in warnings[0] and "line 6" in warnings[0]
    assert warnings[1] == (
        "Package_1/image03.txt: study dates taken from the image_file paths; interview_date differs on 2 of 3 rows "
        "(2 of them one day earlier)"
    )


def test_image03_visit_column_wins_over_the_path_and_agreeing_dates_say_nothing(tmp_path: Path) -> None:
    _image03(
        tmp_path,
        [["9000001", "V01", "03/15/2004", "s3://b/00m/0.C.2/9000001/20040315/1.tar.gz", "SAG_3D_DESS_RIGHT", "1"]],
        quoted=False,
        header=[IMAGE03_HEADER[0], "visit", *IMAGE03_HEADER[1:]],
    )
    warnings: list[str] = []
    frame = read_image03(load_source(discover(tmp_path).sources[0]), warnings)
    assert frame["visit"].tolist() == [1] and warnings == []


# --------------------------------------------------------------------------- command line


def test_label_reports_knees_whose_reading_projects_disagree(releases: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "cli.sqlite")
    assert runner.invoke(app, ["--db", db, "ingest", str(releases["real"]), "--json"]).exit_code == 0
    res = runner.invoke(app, ["--db", db, "label", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["reading_order"] == "project" and out["disagreeing_knees"] > 0
    res = runner.invoke(app, ["--db", db, "label"])
    assert f"{out['disagreeing_knees']} knee(s) have readings by different reading projects that disagree" in (
        " ".join(res.stdout.split())
    )


def test_synth_legacy_names_needs_the_nda_distribution(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "r"), "-n", "5", "--legacy-names"])
    assert res.exit_code == 2 and "--legacy-names needs --distribution nda" in " ".join(res.output.split())
    assert not (tmp_path / "r").exists()
    res = CliRunner().invoke(
        app, ["synth", str(tmp_path / "r"), "-n", "5", "--distribution", "nda", "--legacy-names", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["legacy_names"] is True
    header = (tmp_path / "r" / PACKAGE / "oai_oarisk01.txt").read_text(encoding="utf-8").splitlines()[0]
    assert "\tp01bmi\t" in header and "\tbmi\t" not in header


def test_outcomes_without_their_status_column_are_said_not_read(releases: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(releases["real"], tmp_path / "no_rkrpsn")
    path = root / PACKAGE / "oai_outcome01.txt"
    path.write_text(path.read_text(encoding="utf-8").replace("\trkrpsn\t", "\trk_status\t", 1), encoding="utf-8")
    db = open_database(tmp_path / "no_rkrpsn.sqlite")
    result = ingest_release(db, root)
    assert result.status == "succeeded" and result.rows["knee_replacements"] == 0
    said = [w for w in result.warnings if "knee-replacement outcomes were not read" in w]
    assert len(said) == 1 and "oai_outcome01.rkrpsn@V99" in said[0] and "oai_nda_map.csv" in said[0]
    db.dispose()


def test_quoted_fields_and_literal_quotes_read_as_the_csv_module_reads_them(tmp_path: Path) -> None:
    from oaicohort.release.text import read_table

    rows = [
        ["9000001", 'reports "some" stiffness', "plain"],  # quotes inside a field: literal
        ["9000002", "a\ttab", 'say ""hi""'],  # quoted: a tab inside, doubled quotes
        ["9000003", "", "5' 3\""],
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerows([["src_subject_id", "note", "other"], ["d", "d", "d"]])
    for row in rows:
        quoted = [f'"{c.replace(chr(34), chr(34) * 2)}"' if ("\t" in c or c.startswith("say")) else c for c in row]
        buffer.write("\t".join(quoted) + "\n")
    path = tmp_path / "oai_notes01.txt"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    source = discover(tmp_path).sources[0]
    table = read_table(load_source(source), ["SRC_SUBJECT_ID", "NOTE", "OTHER"], sep="\t", description_row=True)
    expected = list(csv.reader(io.StringIO(buffer.getvalue()), delimiter="\t"))[2:]
    assert table.frame.values.tolist() == [[c.strip() for c in r] for r in expected]
    assert table.frame["NOTE"].tolist() == ['reports "some" stiffness', "a\ttab", ""]
    assert table.lines.tolist() == [3, 4, 5]
