"""Every form users hold the OAI in (OAI_DISTRIBUTIONS.md) ingests into the same database.

The same synthetic release is written as classic ASCII (flat and 2018 per-category layouts), zip,
SAS and an NDA data package; each is ingested and compared. What a form cannot carry is
normalised before comparing: value labels (so ``value_text`` is not compared), ``.`` versus an
empty cell (both "missing, no special reason"), and where the files are (paths, line numbers,
``study_description``, which image03 lacks).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.definitions import LabelDefinitionParams
from oaicohort.cohort.labels import derive_labels
from oaicohort.db import Database, open_database
from oaicohort.errors import InputFileError, OAIError
from oaicohort.imaging.series.source import series_folder, unpack_series
from oaicohort.ingest.provenance import image_index_note
from oaicohort.ingest.reading import NO_IMAGE_INDEX
from oaicohort.ingest.run import ingest_release
from oaicohort.release.discovery import SourceFile
from oaicohort.release.sas import read_sas_table
from oaicohort.release.text import load_source
from oaicohort.synth import write_release
from oaicohort.synth.distributions import DISTRIBUTIONS, PACKAGE, convert_release
from oaicohort.synth.sas_writer import write_sas7bdat
from tests.helpers.distributions import COMPARED, dump
from tests.helpers.releases import copy_release

SUBJECTS = 30  # in the shared ascii_release (tests/conftest.py, seed 5)
VARIABLES = ["V00WOMKPR", "P01BMI", "V03WOMKPL", "P02RACE", "V00EDCV", "P01SVDATE"]


@pytest.fixture(scope="module")
def forms(ascii_release: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same synthetic release in every distribution (the NDA package with the names of the
    first synthetic packages: the real names are tested in test_nda_packages.py)."""
    base = tmp_path_factory.mktemp("forms")
    out = {}
    for distribution in DISTRIBUTIONS:
        root = copy_release(ascii_release, base / distribution)
        convert_release(root, distribution, legacy_names=distribution == "nda")
        out[distribution] = root
    return out


@pytest.fixture(scope="module")
def reference(forms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = open_database(tmp_path_factory.mktemp("ref") / "ascii.sqlite")
    result = ingest_release(db, forms["ascii"], variables=VARIABLES)
    out = {"dump": dump(db), "labels": _labels(db), "result": result}
    db.dispose()
    return out


def _labels(db: Database) -> pd.DataFrame:
    labels = derive_labels(db).labels
    keep = [c for c in labels.columns if c not in ("knee_id", "definition_id", "id")]
    return labels[keep].sort_values(["subject_id", "side"]).reset_index(drop=True)


def test_the_reference_release_holds_every_table(reference: dict[str, Any]) -> None:
    rows = reference["result"].rows
    assert rows["subjects"] == SUBJECTS and rows["knees"] == 2 * SUBJECTS
    assert all(rows[t] > 0 for t in rows), rows
    assert reference["result"].forms == ["ascii"] and reference["result"].warnings == []


@pytest.mark.parametrize("distribution", [d for d in DISTRIBUTIONS if d != "ascii"])
def test_each_form_gives_the_database_and_labels_of_the_ascii_release(
    distribution: str, forms: dict[str, Path], reference: dict[str, Any], db: Database
) -> None:
    result = ingest_release(db, forms[distribution], variables=VARIABLES)

    expected_form = {"ascii-categories": ["ascii"], "zip": ["ascii", "zip"], "sas": ["sas"], "nda": ["nda"]}
    assert result.status == "succeeded" and result.forms == expected_form[distribution]
    assert result.warnings == [] and result.image_indexes == 1
    assert result.rows == reference["result"].rows
    got = dump(db)
    for table, rows in reference["dump"].items():
        assert got[table] == rows, table
    pd.testing.assert_frame_equal(_labels(db), reference["labels"])


def test_all_forms_agree_with_each_other(forms: dict[str, Path], tmp_path: Path) -> None:
    dumps, labels = {}, {}
    for distribution, root in forms.items():
        db = open_database(tmp_path / f"{distribution}.sqlite")
        ingest_release(db, root, variables=VARIABLES)
        dumps[distribution], labels[distribution] = dump(db), _labels(db)
        db.dispose()
    first = next(iter(dumps))
    for distribution in dumps:
        assert dumps[distribution] == dumps[first], distribution
        pd.testing.assert_frame_equal(labels[distribution], labels[first])
    # and the comparison sees the data: every compared table holds rows
    assert all(dumps[first][t] for t in COMPARED)


def test_a_zip_given_as_root_records_archive_and_member_hashes(forms: dict[str, Path], db: Database) -> None:
    archive = forms["zip"] / "OAICompleteData_ASCII.zip"
    result = ingest_release(db, archive)

    files = {f.relative_path: f for f in result.files}
    assert files["OAICompleteData_ASCII.zip"].kind == "archive"
    assert files["OAICompleteData_ASCII.zip"].sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    member = "OAICompleteData_ASCII.zip!OAICompleteData_ASCII/Enrollees.txt"
    with zipfile.ZipFile(archive) as z:
        assert files[member].sha256 == hashlib.sha256(z.read("OAICompleteData_ASCII/Enrollees.txt")).hexdigest()
    assert files[member].n_rows == SUBJECTS
    # the clinical tables only: says there is no image index
    assert NO_IMAGE_INDEX in result.warnings and result.image_indexes == 0


def test_no_image_index_is_said_by_ingest_and_explained_by_label(forms: dict[str, Path], db: Database) -> None:
    result = ingest_release(db, forms["zip"] / "OAICompleteData_ASCII.zip")
    assert result.warnings == [NO_IMAGE_INDEX]
    summary = derive_labels(db)
    assert summary.counts()["excluded"]["no_baseline_dess"] > 0
    note = image_index_note(db)
    assert note is not None and "no_baseline_dess" in note and "no image index" in note


def test_sas_special_missing_values_stay_distinct(tmp_path: Path) -> None:
    path = tmp_path / "kxr_sq_bu00.sas7bdat"
    write_sas7bdat(
        path,
        {
            "ID": ["9000001", "9000002", "9000003", "9000004"],
            "SIDE": ["1: Right", "2: Left", "1", "2"],
            "READPRJ": ["15", "37", "42", "63F"],
            "V00XRKL": ["2: 2", ".P: Prosthesis", ".T", ""],
            "V00EVDATE": ["03/15/2004", ".: Missing Form/Incomplete Workbook", "12/31/2010", ""],
        },
    )
    source = SourceFile(path, path.name, "kxr_sq_bu", 0, form="sas")
    table = read_sas_table(load_source(source), ["ID", "SIDE", "READPRJ", "V00XRKL", "V00EVDATE"])
    assert table.frame["V00XRKL"].tolist() == ["2", ".P", ".T", "."]
    assert table.frame["READPRJ"].tolist() == ["15", "37", "42", "63F"]
    assert table.frame["V00EVDATE"].tolist() == ["03/15/2004", ".", "12/31/2010", "."]
    assert table.lines.tolist() == [2, 3, 4, 5]
    # a real SAS7BDAT file: pandas reads it too (where the special missing letters are lost)
    assert pd.read_sas(path, encoding="utf-8")["ID"].tolist()[0] == "9000001"


def test_ascii_and_sas_copies_of_a_table_read_the_ascii_one(forms: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "both"
    write_release(root, subjects=8, seed=2)
    write_sas7bdat(root / "OAICompleteData_SAS" / "enrollees.sas7bdat", {"ID": ["1"], "V00SITE": ["Z"]})
    db = open_database(tmp_path / "both.sqlite")
    result = ingest_release(db, root)
    assert result.rows["subjects"] == 8
    assert any("enrollees.sas7bdat: same table as OAICompleteData_ASCII/Enrollees.txt" in w for w in result.warnings)
    db.dispose()


def test_nda_variables_by_map_by_rule_and_by_name(forms: dict[str, Path], db: Database) -> None:
    root = forms["nda"]
    result = ingest_release(db, root, variables=["V00WOMKPR", "oai_koos_womac01.womkpr@V00"])
    assert result.rows["clinical_values"] == 2 * SUBJECTS
    with db.read() as s:
        values = s.execute(text("SELECT variable, subject_id, value_num FROM clinical_values")).all()
    by = {}
    for variable, subject, value in values:
        by.setdefault(variable, {})[subject] = value
    assert by["V00WOMKPR"] == by["OAI_KOOS_WOMAC01.WOMKPR@V00"] and len(by["V00WOMKPR"]) == SUBJECTS


def test_nda_unknown_variable_says_how_to_name_it(forms: dict[str, Path], db: Database) -> None:
    with pytest.raises(OAIError, match=r"V00NOSUCH: not found in any structure.*structure\.column@visit"):
        ingest_release(db, forms["nda"], variables=["V00NOSUCH"])
    with pytest.raises(OAIError, match=r"oai_nosuch01"):
        ingest_release(db, forms["nda"], variables=["oai_nosuch01.x@V00"])


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _damage(path: Path, old: str, new: str, count: int = 1) -> None:
    text_ = path.read_text(encoding="utf-8")
    assert old in text_
    path.write_text(text_.replace(old, new, count), encoding="utf-8")


def _state(db: Database) -> dict[str, Any]:
    return dump(db)


def test_nda_errors_name_file_line_and_nda_column_and_change_nothing(
    forms: dict[str, Path], tmp_path: Path, db: Database
) -> None:
    ingest_release(db, forms["ascii"])
    before = _state(db)
    root = _copy(forms["nda"], tmp_path / "nda")
    kxr = root / PACKAGE / "oai_kxrsemiquant01.txt"
    lines = kxr.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    row = lines[4].split("\t")
    row[header.index("xrkl")] = "7"
    lines[4] = "\t".join(row)
    kxr.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"oai_kxrsemiquant01\.txt, line 5, column 'xrkl': KL grade must be 0-4"):
        ingest_release(db, root)
    assert _state(db) == before


def test_nda_user_map_moves_a_variable(forms: dict[str, Path], tmp_path: Path, db: Database) -> None:
    root = _copy(forms["nda"], tmp_path / "nda")
    risk = root / PACKAGE / "oai_oarisk01.txt"
    _damage(risk, "\tp01bmi\t", "\tp01bmi_kgm2\t")
    with pytest.raises(
        InputFileError, match=r"oai_oarisk01\.txt, line 1, column 'bmi': missing required.*p01bmi.*oai_nda_map"
    ):
        ingest_release(db, root)
    (root / PACKAGE / "oai_nda_map.csv").write_text(
        "ascii,structure,column,visit,values\nP01BMI,oai_oarisk01,p01bmi_kgm2,V00,\n", encoding="utf-8"
    )
    assert ingest_release(db, root).rows["subject_visits"] == 12 * SUBJECTS


def test_zip_member_errors_name_archive_and_member(forms: dict[str, Path], tmp_path: Path, db: Database) -> None:
    archive = tmp_path / "OAICompleteData_ASCII.zip"
    with zipfile.ZipFile(forms["zip"] / "OAICompleteData_ASCII.zip") as src, zipfile.ZipFile(archive, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("Enrollees.txt"):
                data = data.replace(b"\n", b"\nnot-an-id|x|A|1|1|1|1|1\n", 1)
            dst.writestr(name, data)
    with pytest.raises(
        InputFileError, match=r"OAICompleteData_ASCII\.zip!OAICompleteData_ASCII/Enrollees\.txt, line 2"
    ):
        ingest_release(db, archive)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputFileError, match=r"broken\.zip: cannot read zip archive"):
        ingest_release(db, tmp_path / "broken.zip")
    assert dump(db) == {t: [] for t in COMPARED}  # nothing written


def test_damaged_sas_file_is_named(forms: dict[str, Path], tmp_path: Path, db: Database) -> None:
    root = _copy(forms["sas"], tmp_path / "sas")
    path = root / "OAICompleteData_SAS" / "enrollees.sas7bdat"
    path.write_bytes(path.read_bytes()[:700])
    ingest_release(db, forms["ascii"])
    before = dump(db)
    with pytest.raises(InputFileError, match=r"enrollees\.sas7bdat: cannot read SAS file"):
        ingest_release(db, root)
    assert dump(db) == before


CONTENTS_HEADER = "Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription\n"


def test_image_index_variants_and_unknown_codes(forms: dict[str, Path], tmp_path: Path, db: Database) -> None:
    root = _copy(forms["zip"], tmp_path / "variants")
    (root / "contents").mkdir()
    (root / "contents" / "contents.0E1.csv").write_text(
        CONTENTS_HEADER + "0.E.1/9999995/20050101/1,9999995,20050101,1,OAI^MR^ENROLLMENT^RIGHT,SAG_3D_DESS_RIGHT \n"
    )
    (root / "contents.4G1.csv").write_text(
        CONTENTS_HEADER + "4.G.1/9999995/20070101/2,9999995,20070101,2,x,SAG_3D_DESS_LEFT\n"
    )
    (root / "OAI_18m").mkdir()
    (root / "OAI_18m" / "contents.csv").write_text(
        CONTENTS_HEADER + "2.D.2/9999995/20060101/3,9999995,20060101,3,x,COR_IW_TSE_LEFT\n"
        "7.X.9/9999995/20060101/4,9999995,20060101,4,x,AX_MPR_LEFT\n"
    )
    (root / "misc").mkdir()
    (root / "misc" / "contents.csv").write_text(
        CONTENTS_HEADER + "7.X.9/9999995/20060101/5,9999995,20060101,5,x,AX_MPR_RIGHT\n"
    )
    result = ingest_release(db, root)

    assert result.status == "succeeded" and result.image_indexes == 5  # the four above and 00m/contents.csv
    with db.read() as s:
        series = s.execute(
            text(
                "SELECT visit, side, sequence, folder FROM image_series WHERE subject_id = 9999995 "
                "ORDER BY visit, side, sequence"
            )
        ).all()
    assert [tuple(r) for r in series] == [
        (0, "R", "SAG_3D_DESS", "0.E.1/9999995/20050101/1"),
        (2, "L", "AX_MPR", "7.X.9/9999995/20060101/4"),  # unknown code, but the folder names the visit
        (2, "L", "COR_IW_TSE", "2.D.2/9999995/20060101/3"),
        (4, "L", "SAG_3D_DESS", "4.G.1/9999995/20070101/2"),
    ]
    # the index whose rows tell no visit: a recorded, counted warning
    assert [w for w in result.warnings if "misc/contents.csv: 1 series row(s) not read" in w]
    with db.read() as s:
        summary = s.execute(text("SELECT summary FROM ingest_runs WHERE status = 'succeeded'")).scalar_one()
    warnings = (json.loads(summary) if isinstance(summary, str) else summary)["warnings"]
    assert any("misc/contents.csv" in w for w in warnings)


def test_dos_end_of_file_mark_and_blank_kl_cells(forms: dict[str, Path], tmp_path: Path, db: Database) -> None:
    root = tmp_path / "dos"
    write_release(root, subjects=6, seed=1)
    folder = root / "OAICompleteData_ASCII"
    enrollees = folder / "Enrollees.txt"
    enrollees.write_bytes(enrollees.read_bytes() + b"\x1a")
    kxr = next(folder.glob("*[kK][xX][rR]_[sS][qQ]_[bB][uU]00.txt"))
    lines = kxr.read_text().splitlines()
    header = lines[0].split("|")
    col = next(i for i, h in enumerate(header) if h.upper() == "V00XRKL")
    cells = lines[1].split("|")
    cells[col] = ""
    lines[1] = "|".join(cells)
    kxr.write_text("\n".join(lines) + "\n\x1a\r\n")
    result = ingest_release(db, root)
    assert result.rows["subjects"] == 6
    with db.read() as s:
        blank = s.execute(text("SELECT klg, klg_missing_code FROM xray_readings WHERE source_row = 2 AND visit = 0"))
        assert [tuple(r) for r in blank] == [(None, "")]


def test_reading_project_42_counts_as_37(forms: dict[str, Path], db: Database) -> None:
    ingest_release(db, forms["ascii"])
    with db.write() as s:
        s.execute(text("UPDATE xray_readings SET read_project = 42 WHERE read_project = 37"))
    every = derive_labels(db).labelled
    assert every["knees"] > 0
    as_37 = derive_labels(db, LabelDefinitionParams(name="p37", read_projects=(15, 37))).labelled
    only_37 = derive_labels(
        db, LabelDefinitionParams(name="p37strict", read_projects=(15, 37), project_42_as_37=False)
    ).labelled
    assert as_37 == every  # 42 stands in for 37: nothing lost
    assert only_37["knees"] < every["knees"]


# --------------------------------------------------------------------------- series archives


def _tar(path: Path, members: list[tuple[str, bytes]], links: list[tuple[str, str]] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_series_archive_is_unpacked_to_a_temporary_folder_then_removed(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "s.tar.gz", [("12345678/001", b"a"), ("12345678/002", b"b")])
    with series_folder(archive) as folder:
        assert sorted(p.name for p in folder.iterdir()) == ["001", "002"]
        kept = folder
    assert not kept.exists()
    assert series_folder  # a plain folder is used as it is
    with series_folder(tmp_path) as same:
        assert same == tmp_path


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ([("../evil", b"x")], [], "outside the folder"),
        ([("/etc/evil", b"x")], [], "outside the folder"),
        ([("a/001", b"x")], [("a/002", "/etc/passwd")], "is a link"),
        ([("a/001", b"x"), ("b/001", b"y")], [], "2 folders"),
    ],
)
def test_series_archive_refuses_members_leaving_it(
    tmp_path: Path, members: list[tuple[str, bytes]], links: list[tuple[str, str]], message: str
) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", members, links)
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(InputFileError, match=message):
        unpack_series(archive, into)
    assert not (tmp_path / "evil").exists()


def test_nda_preprocess_gives_the_store_of_the_ascii_form(tmp_path: Path) -> None:
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.runs.mri import run_preprocess
    from oaicohort.synth.images import write_images

    checksums = {}
    for distribution in ("ascii", "nda"):
        root = tmp_path / distribution
        write_release(root, subjects=5, seed=11)
        assert write_images(root, size="small", seed=11) > 0
        convert_release(root, distribution)
        db = open_database(tmp_path / f"{distribution}.sqlite")
        ingest_release(db, root)
        summary = run_preprocess(db, tmp_path / f"{distribution}.zarr", PreprocessParams.small(), strict=True)
        assert summary.to_dict()["failed"] == 0
        with db.read() as s:
            rows = s.execute(
                text(
                    "SELECT k.subject_id, k.side, v.view, v.checksum FROM volumes v JOIN knees k ON k.id = v.knee_id "
                    "WHERE v.status = 'ok'"
                )
            ).all()
        checksums[distribution] = sorted(tuple(r) for r in rows)
        db.dispose()
    assert checksums["ascii"] and checksums["nda"] == checksums["ascii"]
    assert not (tmp_path / "nda" / "00m").exists()  # the NDA form's series are only in their archives


# --------------------------------------------------------------------------- command line


def test_cli_synth_distribution_and_cohort_to_stdout(tmp_path: Path) -> None:
    runner = CliRunner()
    db = tmp_path / "cli.sqlite"
    res = runner.invoke(app, ["synth", str(tmp_path / "r"), "-n", "12", "--distribution", "nda", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["distribution"] == "nda"
    res = runner.invoke(app, ["--db", str(db), "ingest", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["forms"] == ["nda"]
    assert runner.invoke(app, ["--db", str(db), "label"]).exit_code == 0
    res = runner.invoke(app, ["--db", str(db), "cohort", "--out", "-"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("knee_id") or "," in res.stdout.splitlines()[0]
    assert not (Path.cwd() / "-").exists()


def test_per_category_sas_folders_read_like_the_flat_one(
    forms: dict[str, Path], reference: dict[str, Any], tmp_path: Path, db: Database
) -> None:
    root = _copy(forms["sas"], tmp_path / "sas")
    flat = root / "OAICompleteData_SAS"
    for path in sorted(flat.iterdir()):
        name = path.name.lower()
        folder = (
            "AllClinical_SAS"
            if name.startswith("allclinical")
            else "X-Ray Image Assessments_SAS/Semi-Quant Scoring_SAS"
            if name.startswith("kxr")
            else "General_SAS"
        )
        (root / folder).mkdir(parents=True, exist_ok=True)
        path.replace(root / folder / path.name)
    flat.rmdir()
    result = ingest_release(db, root, variables=VARIABLES)
    assert result.forms == ["sas"] and result.rows == reference["result"].rows
    assert dump(db) == reference["dump"]
