"""Units of the distribution readers: release codes, the NDA variable map, archive members, image03."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from oaicohort.errors import InputFileError
from oaicohort.release.discovery import discover
from oaicohort.release.image_index import read_image03, series_side, split_series_description
from oaicohort.release.nda_map import NdaColumn, NdaMap, guess_column, parse_nda_variable
from oaicohort.release.text import hash_source, load_source
from oaicohort.release.visit_paths import RELEASE_CODES, release_visit


def test_every_release_code_of_the_distributions_document_has_its_visit() -> None:
    # OAI_FORMATS.md and OAI_DISTRIBUTIONS.md section 3
    expected = {"0.C.1": 0, "0.C.2": 0, "0.E.1": 0, "0.E.2": 0, "1.C.2": 1, "1.E.1": 1, "2.D.2": 2}
    expected |= {"3.C.2": 3, "3.E.1": 3, "4.G.1": 4, "5.C.1": 5, "5.E.1": 5, "6.C.1": 6, "6.E.1": 6}
    expected |= {"8.C.1": 8, "8.E.1": 8, "10.C.1": 10, "10.E.1": 10}
    assert {code: release_visit(code) for code in expected} == expected == RELEASE_CODES
    assert release_visit("0E1") == 0 and release_visit("10e1") == 10 and release_visit("2D2") == 2
    assert release_visit("7.X.9") is None and release_visit("OAI") is None


def test_series_side_has_one_rule() -> None:
    assert split_series_description(" sag_3d_dess_right  ") == ("SAG_3D_DESS", "R")
    assert split_series_description("COR_MPR_LEFT") == ("COR_MPR", "L")
    assert split_series_description("AX_T1_THIGH") == ("AX_T1_THIGH", "")
    assert split_series_description("Bilateral PA Fixed Flexion Knee") == ("BILATERAL PA FIXED FLEXION KNEE", "")
    assert [series_side(d) for d in ("SAG_3D_DESS_LEFT", "MP_LOCATOR_THIGH")] == ["L", None]


def test_nda_map_patterns_rules_and_direct_names() -> None:
    mapping = NdaMap.default()
    assert mapping.locate("V03XRKL") == NdaColumn("oai_kxrsemiquant01", "XRKL", "V03")
    assert mapping.locate("v99elkrpsn") == NdaColumn("oai_outcome01", "LKRPSN", "V99")
    sex = mapping.locate("P02SEX")
    assert sex is not None and sex.structure == "oai_enrollee01" and sex.visit is None
    assert mapping.categories("P02SEX")["f"].code == "2"
    assert mapping.locate("V00WOMKPR") == NdaColumn("oai_koos_womac01", "WOMAC_PAIN_RIGHT", "V00")
    assert mapping.locate("V00EDCV") is None  # found by rule, not by the map
    assert guess_column("V00WOMKPR") == ("WOMKPR", "V00")
    assert guess_column("P01FAMKR") == ("P01FAMKR", "V00")
    assert parse_nda_variable("oai_koos_womac01.womkpr@v00") == NdaColumn("oai_koos_womac01", "WOMKPR", "V00")
    assert parse_nda_variable("V00WOMKPR") is None


def test_a_package_map_file_overrides_the_shipped_rows(tmp_path: Path) -> None:
    (tmp_path / "oai_nda_map.csv").write_text(
        "# mine\nascii,structure,column,visit\nV{vv}AGE,oai_other01,age_y,V{vv}\n"
    )
    mapping = NdaMap.for_package([tmp_path])
    assert mapping.locate("V05AGE") == NdaColumn("oai_other01", "AGE_Y", "V05")
    (tmp_path / "oai_nda_map.csv").write_text("ascii,column\nX,y\n")
    with pytest.raises(InputFileError, match="needs the columns ascii, column, structure"):
        NdaMap.for_package([tmp_path])


def test_archive_members_are_read_in_place_and_named_in_errors(tmp_path: Path) -> None:
    archive = tmp_path / "OAICompleteData_ASCII.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("OAICompleteData_ASCII/Enrollees.txt", "ID|V00SITE\n9000001|A\n")
        z.writestr("OAICompleteData_ASCII/notes.doc", "x")
        z.writestr("__MACOSX/OAICompleteData_ASCII/._Enrollees.txt", "junk")
    found = discover(tmp_path)
    assert [(s.kind, s.relative_path) for s in found.sources] == [
        ("archive", "OAICompleteData_ASCII.zip"),
        ("enrollees", "OAICompleteData_ASCII.zip!OAICompleteData_ASCII/Enrollees.txt"),
    ]
    member = found.sources[1]
    raw = load_source(member)
    assert raw.data == b"ID|V00SITE\n9000001|A\n" and hash_source(member) == raw.sha256
    with pytest.raises(InputFileError, match=r"\.zip!OAICompleteData_ASCII/Enrollees\.txt, line 1, column 'P02SEX'"):
        raw.table(["ID"], required=["ID", "P02SEX"])


def test_image03_malformed_line_is_named(tmp_path: Path) -> None:
    package = tmp_path / "Package_1"
    package.mkdir()
    header = "src_subject_id\tvisit\timage_file\timage_description\tinterview_date\taccession_number"
    rows = [
        "9000001\tV00\ts3://b/x/1.tar.gz\tSAG_3D_DESS_RIGHT\t03/15/2004\t0166",
        '9000001\tV00\t"s3://b/x/2.tar.gz\tSAG_3D_DESS_LEFT\t03/15/2004',
    ]
    (package / "image03.txt").write_text("\n".join([header, "\t".join(["d"] * 6), *rows]) + "\n")
    source = discover(tmp_path).sources[0]
    with pytest.raises(InputFileError, match=r"image03\.txt, line 4: row has"):
        read_image03(load_source(source))
    (package / "image03.txt").write_text(
        "\n".join([header, "\t".join(["d"] * 6), rows[0], "9000002\t\ts3://b/x/3.tar.gz\tAX_MPR_LEFT\t\t1"]) + "\n"
    )
    warnings: list[str] = []
    frame = read_image03(load_source(discover(tmp_path).sources[0]), warnings)
    assert frame[["subject_id", "visit", "side", "sequence", "folder"]].values.tolist() == [
        [9000001, 0, "R", "SAG_3D_DESS", "x/1.tar.gz"]
    ]
    assert len(warnings) == 1 and "1 series row(s) not read" in warnings[0] and "line 4" in warnings[0]
