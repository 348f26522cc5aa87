"""Reading real OAI release files: layouts, name/header case, coded values, missing codes, errors.

Every format variant of shared/OAI_FORMATS.md is written here as a small file (no synth module).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oaicohort.errors import InputFileError
from oaicohort.release.discovery import SourceFile, classify, discover_release
from oaicohort.release.image_index import read_contents
from oaicohort.release.readers import (
    clinical_values,
    read_allclinical,
    read_enrollees,
    read_kxr,
    read_outcomes,
    read_subjectchar,
)
from oaicohort.release.text import FileBytes, load_source, read_table
from oaicohort.release.values import parse_coded, parse_value
from oaicohort.release.visit_paths import visit_of_dir


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def raw(path: Path, kind: str = "kxr_sq_bu", visit: int | None = 0) -> FileBytes:
    return load_source(SourceFile(path, path.name, kind, visit))


def kinds(files: list[SourceFile]) -> list[tuple[str, int | None]]:
    return [(f.kind, f.visit) for f in files]


# --------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("folder", ["OAICompleteData_ASCII", "OAI Complete Data_ASCII"])
def test_discover_flat_layout_with_name_case_variants(tmp_path: Path, folder: str) -> None:
    d = tmp_path / "download" / folder
    for name in [
        "Enrollees.txt",
        "AllClinical00.txt",
        "allclinical03.TXT",
        "kXR_SQ_BU00.txt",
        "kxr_sq_bu01.txt",
        "KXR_SQ_BU03.txt",
        "OUTCOMES99.txt",
        "SubjectChar00.txt",
        "Xray00.txt",
        "MRI00.txt",
        "kXR_SQ_RELI00.txt",
        "notes.pdf",
    ]:
        write(d / name, "ID|X\n")
    files = discover_release(tmp_path)
    assert sorted(kinds(files), key=str) == sorted(
        [
            ("enrollees", None),
            ("allclinical", 0),
            ("allclinical", 3),
            ("kxr_sq_bu", 0),
            ("kxr_sq_bu", 1),
            ("kxr_sq_bu", 3),
            ("outcomes", None),
            ("subjectchar", 0),
        ],
        key=str,
    )
    assert all(f.relative_path.startswith(f"download/{folder}/") for f in files)


def test_discover_older_per_category_layout_and_image_wrappers(tmp_path: Path) -> None:
    write(tmp_path / "AllClinical_ASCII" / "AllClinical00.txt", "ID\n")
    write(tmp_path / "General_ASCII" / "Enrollees.txt", "ID\n")
    write(tmp_path / "General_ASCII" / "Outcomes99.txt", "id\n")
    write(tmp_path / "X-Ray Image Assessments_ASCII" / "Semi-Quant Scoring_ASCII" / "kxr_sq_bu00.txt", "ID\n")
    write(tmp_path / "MRI MetaAnalysis_ASCII" / "MRI00.txt", "ID\n")
    write(tmp_path / "Package_1215" / "results" / "00m" / "contents.csv", "Folder\n")
    write(tmp_path / "Package_1216" / "results" / "00m" / "Contents.csv", "Folder\n")
    write(tmp_path / "images" / "96m" / "contents.csv", "Folder\n")
    write(tmp_path / "misc" / "contents.csv", "Folder\n")  # not a visit dir: visit from Folder
    write(tmp_path / "__MACOSX" / "General_ASCII" / "Enrollees.txt", "junk\n")
    write(tmp_path / ".hidden" / "Enrollees.txt", "junk\n")
    files = discover_release(tmp_path)
    assert kinds(files) == [
        ("allclinical", 0),
        ("enrollees", None),
        ("outcomes", None),
        ("contents", 0),
        ("contents", 0),
        ("kxr_sq_bu", 0),
        ("contents", 10),
        ("contents", None),
    ]
    assert files[3].relative_path == "Package_1215/results/00m/contents.csv"


def test_discover_refuses_a_table_found_twice(tmp_path: Path) -> None:
    write(tmp_path / "OAICompleteData_ASCII" / "kXR_SQ_BU00.txt", "ID\n")
    write(tmp_path / "old" / "kxr_sq_bu00.txt", "ID\n")
    with pytest.raises(InputFileError, match="twice .*OAICompleteData_ASCII/kXR_SQ_BU00.txt"):
        discover_release(tmp_path)


def test_discover_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such directory"):
        discover_release(tmp_path / "missing")
    f = write(tmp_path / "Enrollees.txt", "ID\n")
    with pytest.raises(InputFileError, match="not a directory or a zip archive"):
        discover_release(f)


def test_classify_and_visit_dirs() -> None:
    assert classify("KXR_SQ_BU10.TXT") == ("kxr_sq_bu", 10)
    assert classify("AllClinical11.txt") == ("allclinical", 11)
    assert classify("kXR_SQ_BU00.sas7bdat") == ("kxr_sq_bu", 0)  # the SAS copy of the same table
    assert classify("kXR_SQ_BU00.sas7bcat") is None
    assert classify("contents.0E1.csv") == ("contents", 0)
    assert classify("contents.2D2.csv") == ("contents", 2)
    assert classify("contents.4G1.csv") == ("contents", 4)
    assert classify("contents.7X1.csv") == ("contents", None)
    assert classify("oai_kxrsemiquant01.txt") == ("nda_structure", None)
    assert classify("image03.txt") == ("image03", None)
    assert [visit_of_dir(d) for d in ["OAI_00m", "OAI_18m", "OAIBaselineImages", "OAI96MonthImages"]] == [0, 2, 0, 10]
    assert [visit_of_dir(d) for d in ["00m", "12m", "18m", "48m", "96m", "108m", "13m", "x"]] == [
        0,
        1,
        2,
        6,
        10,
        11,
        None,
        None,
    ]


# --------------------------------------------------------------------------- delimited tables


def test_header_case_crlf_blank_lines_and_line_numbers(tmp_path: Path) -> None:
    p = write(tmp_path / "k.txt", "id|Side|readprj|v00xrkl|EXTRA\r\n9000001|1|15|2|a\r\n\r\n9000002|2|15|3|b\r\n\r\n")
    t = read_table(raw(p), ["ID", "SIDE", "READPRJ", "V00XRKL"], required=["ID", "SIDE"])
    assert list(t.frame.columns) == ["ID", "SIDE", "READPRJ", "V00XRKL"]
    assert t.frame["V00XRKL"].tolist() == ["2", "3"]
    assert t.lines.tolist() == [2, 4]


def test_unknown_columns_are_ignored_and_quotes_are_data(tmp_path: Path) -> None:
    p = write(tmp_path / "a.txt", 'ID|V00COMMENT|NEWCOL2025\n9000001|said "hello, it hurts|zzz\n')
    t = read_table(raw(p), ["ID", "V00COMMENT"])
    assert t.frame["V00COMMENT"].tolist() == ['said "hello, it hurts']


@pytest.mark.parametrize(
    ("text", "looks"),
    [
        ("ID,SIDE,V00XRKL\n9000001,1,2\n", "comma"),
        ("ID\tSIDE\tV00XRKL\n9000001\t1\t2\n", "tab"),
        ("IDSIDEV00XRKL\n", None),
    ],
)
def test_unknown_delimiter_names_file_and_line(tmp_path: Path, text: str, looks: str | None) -> None:
    p = write(tmp_path / "kXR_SQ_BU00.txt", text)
    with pytest.raises(InputFileError) as err:
        read_table(raw(p), ["ID"], required=["ID"])
    assert err.value.path == p and err.value.line == 1
    assert "unknown delimiter: expected pipe-separated" in str(err.value)
    if looks:
        assert f"looks {looks}-separated" in str(err.value)


def test_missing_required_column_names_it(tmp_path: Path) -> None:
    p = write(tmp_path / "kXR_SQ_BU00.txt", "ID|READPRJ|V00XRKL\n9000001|15|2\n")
    with pytest.raises(InputFileError) as err:
        read_kxr(raw(p))
    assert err.value.column == "SIDE" and err.value.line == 1
    assert "missing required column SIDE" in str(err.value)


def test_ragged_row_names_its_line(tmp_path: Path) -> None:
    p = write(tmp_path / "kXR_SQ_BU00.txt", "ID|SIDE|V00XRKL\n9000001|1|2\n9000001|2\n")
    with pytest.raises(InputFileError, match=r"line 3: row has 2 fields but the header has 3"):
        read_kxr(raw(p))


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path / "Enrollees.txt", "")
    with pytest.raises(InputFileError, match="empty file"):
        read_enrollees(raw(p, "enrollees", None))


def test_latin1_and_bom_are_decoded(tmp_path: Path) -> None:
    p = write(
        tmp_path / "AllClinical00.txt",
        "ID|V00AGE|P01BMI|V00COMMENT\n9000001|61|28.1|pt from Montréal, knee größer\n",
        "latin-1",
    )
    _frame, table = read_allclinical(raw(p, "allclinical", 0), ["V00COMMENT"])
    assert table.frame["V00COMMENT"].iloc[0] == "pt from Montréal, knee größer"
    q = write(tmp_path / "Enrollees.txt", "\ufeffID|V00SITE\n9000001|C\n")
    enrollees, _ = read_enrollees(raw(q, "enrollees", None))
    assert enrollees["site"].tolist() == ["C"]


def test_unreadable_file(tmp_path: Path) -> None:
    link = tmp_path / "Enrollees.txt"
    link.symlink_to(tmp_path / "gone.txt")
    with pytest.raises(InputFileError, match="cannot read file"):
        load_source(SourceFile(link, "Enrollees.txt", "enrollees", None))


def test_load_source_hashes_the_bytes_read(tmp_path: Path) -> None:
    import hashlib

    p = write(tmp_path / "x.txt", "ID|A\n1|2\n")
    fb = raw(p)
    assert fb.sha256 == hashlib.sha256(b"ID|A\n1|2\n").hexdigest() and fb.size_bytes == 9


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("cell", "number", "missing"),
    [
        ("1: Male", 1.0, None),
        ("2: Female", 2.0, None),
        ("2", 2.0, None),
        ("10: Pain as bad as you can imagine", 10.0, None),
        ("3: College graduate", 3.0, None),
        ("2: 2", 2.0, None),
        ("0.5", 0.5, None),
        ("-1.25", -1.25, None),
        (".: Missing Form/Incomplete Workbook", None, "."),
        (".", None, "."),
        (".A: Not Expected", None, ".A"),
        (".A", None, ".A"),
        (".T: Technical Problems", None, ".T"),
        (".P", None, ".P"),
        (".P: Prosthesis", None, ".P"),
        (".M", None, ".M"),
        (".D: Don't know", None, ".D"),
        ("", None, ""),
        (" ", None, ""),
        ("  1: Right  ", 1.0, None),
    ],
)
def test_parse_value_codes_labels_and_missing(cell: str, number: float | None, missing: str | None) -> None:
    v = parse_value(cell)
    assert v.number == number and v.missing_code == missing
    c = parse_coded(pd.Series([cell]))
    assert math.isnan(c.number[0]) if number is None else c.number[0] == number
    assert c.missing_code[0] == missing and not c.invalid[0]


def test_free_text_is_neither_number_nor_missing() -> None:
    v = parse_value("knee hurt: after fall")
    assert v.number is None and v.missing_code is None and v.text == "knee hurt: after fall"
    assert parse_coded(pd.Series(["knee hurt", "1a"])).invalid.tolist() == [True, True]


cells = st.one_of(
    st.text(alphabet=st.sampled_from(list("0123456789.-+:eEAPTMDabc ")), max_size=12),
    st.builds(lambda c, label: f"{c}: {label}", st.integers(-5, 20), st.text(max_size=8)),
    st.sampled_from([".", ".A", ".T: Technical Problems", "", " ", ".P"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(cells, min_size=1, max_size=20))
def test_vectorised_parse_matches_scalar(values: list[str]) -> None:
    coded = parse_coded(pd.Series(values, dtype=str))
    for i, cell in enumerate(values):
        v = parse_value(cell)
        if v.number is None:
            assert math.isnan(coded.number[i])
        else:
            assert coded.number[i] == pytest.approx(v.number)
        assert coded.missing_code[i] == v.missing_code
        assert coded.invalid[i] == (v.number is None and v.missing_code is None)


def test_non_numeric_in_numeric_column_names_line_and_column(tmp_path: Path) -> None:
    p = write(tmp_path / "kXR_SQ_BU00.txt", "ID|SIDE|V00XRKL|V00XRJSM\n9000001|1|2|0\n9000001|2|2|abc\n")
    with pytest.raises(InputFileError) as err:
        read_kxr(raw(p))
    assert (err.value.line, err.value.column) == (3, "V00XRJSM")
    assert "'abc'" in str(err.value)


def test_non_numeric_id_names_its_line(tmp_path: Path) -> None:
    p = write(tmp_path / "kXR_SQ_BU00.txt", "ID|SIDE|V00XRKL\n9000001|1|2\n\n90000O2|1|2\n")
    with pytest.raises(InputFileError) as err:
        read_kxr(raw(p))
    assert (err.value.path, err.value.line, err.value.column) == (p, 4, "ID")
    assert "participant id must be a whole number, got '90000O2'" in str(err.value)


def test_dates_mdy_with_missing_codes_and_errors(tmp_path: Path) -> None:
    p = write(
        tmp_path / "AllClinical01.txt",
        "ID|V01AGE|V01BMI|V01FVDATE\n9000001|62|27|02/29/2008\n9000002|.|.|.: Missing Form\n9000003|60|30|\n",
    )
    frame, _ = read_allclinical(raw(p, "allclinical", 1))
    assert frame["visit_date"].tolist() == [dt.date(2008, 2, 29), None, None]
    assert frame["age"].tolist()[0] == 62 and math.isnan(frame["bmi"].tolist()[1])
    q = write(tmp_path / "AllClinical03.txt", "ID|V03FVDATE\n9000001|2008-02-29\n")
    with pytest.raises(InputFileError, match=r"line 2, column 'V03FVDATE': expected a date mm/dd/yyyy"):
        read_allclinical(raw(q, "allclinical", 3))


def test_baseline_allclinical_requires_age_and_bmi(tmp_path: Path) -> None:
    p = write(tmp_path / "AllClinical00.txt", "ID|V00AGE|V00WOMKPR\n9000001|61|3\n")
    with pytest.raises(InputFileError, match="missing required column P01BMI"):
        read_allclinical(raw(p, "allclinical", 0))


def test_enrollees_coded_and_bare(tmp_path: Path) -> None:
    p = write(
        tmp_path / "Enrollees.txt",
        "ID|V00SITE|P02SEX|P02RACE|V00COHORT\n"
        "9000001|C|1: Male|1: White or Caucasian|1: Progression\n"
        "9000002| D |2|2|2\n"
        "9000003|.: Missing|.|.A: Not Expected|\n",
    )
    frame, _ = read_enrollees(raw(p, "enrollees", None))
    assert frame["subject_id"].tolist() == [9000001, 9000002, 9000003]
    assert frame["site"].tolist() == ["C", "D", None]
    assert frame["sex"].tolist() == ["M", "F", None]
    assert frame["race"].tolist() == [1, 2, pd.NA]
    assert frame["cohort"].tolist() == [1, 2, pd.NA]


def test_enrollees_errors(tmp_path: Path) -> None:
    p = write(tmp_path / "Enrollees.txt", "ID|V00SITE|P02SEX\n9000001|C|3: Other\n")
    with pytest.raises(InputFileError, match=r"line 2, column 'P02SEX': sex must be 1"):
        read_enrollees(raw(p, "enrollees", None))
    q = write(tmp_path / "E2.txt", "ID|P02SEX\n9000001|1\n")
    with pytest.raises(InputFileError, match="missing required column V00SITE"):
        read_enrollees(raw(q, "enrollees", None))
    r = write(tmp_path / "E3.txt", "ID|V00SITE\n9000001|C\n9000001|D\n")
    with pytest.raises(InputFileError, match=r"line 3, column 'ID': participant 9000001 is listed twice"):
        read_enrollees(raw(r, "enrollees", None))
    s = write(tmp_path / "SubjectChar00.txt", "ID|V00EDCV\n9000002|1\n9000001|2\n9000002|3\n")
    with pytest.raises(InputFileError, match=r"line 4, column 'ID': participant 9000002 is listed twice"):
        read_subjectchar(raw(s, "subjectchar", 0), ["V00EDCV"])


# --------------------------------------------------------------------------- kXR, Outcomes99, contents.csv


def test_kxr_coded_bare_fractional_missing_and_file_order(tmp_path: Path) -> None:
    p = write(
        tmp_path / "kXR_SQ_BU03.txt",
        "ID|SIDE|readprj|VERSION|V03XRKL|V03XRJSM|V03XRJSL|V03XROSFM|V03XROSTL|V03XRQCOMM\n"
        "9000001|1: Right|15|1.6|2: 2|1.5: 1.5|0|1: 1|0|\n"
        "9000001|2: Left|15|1.6|.P: Prosthesis|.|.|.|.|knee replaced\n"
        "9000002|1|37|1.6|3|2|1|3|2|\n"
        "9000002|1|42|1.6|4|3|1|3|2|\n"
        "9000003|2|15|1.6||||||\n",
    )
    frame = read_kxr(raw(p, visit=3))
    assert frame["side"].tolist() == ["R", "L", "R", "R", "L"]
    assert frame["read_project"].tolist() == [15, 15, 37, 42, 15]
    assert frame["klg"].tolist() == [2, pd.NA, 3, 4, pd.NA]
    assert frame["klg_missing_code"].tolist() == [None, ".P", None, None, ""]
    assert frame["jsn_medial"].tolist()[0] == 1.5
    assert math.isnan(frame["osteophyte_fl"].tolist()[0])  # column absent from this file
    assert frame["source_row"].tolist() == [2, 3, 4, 5, 6]
    assert set(frame["visit"]) == {3}


def test_kxr_requires_the_visits_own_kl_column(tmp_path: Path) -> None:
    p = write(tmp_path / "kXR_SQ_BU05.txt", "ID|SIDE|V03XRKL\n9000001|1|2\n")
    with pytest.raises(InputFileError, match="missing required column V05XRKL"):
        read_kxr(raw(p, visit=5))


@pytest.mark.parametrize(
    ("column", "cell", "message"),
    [
        ("SIDE", "3", "knee side must be 1 (right) or 2 (left)"),
        ("SIDE", ".", "knee side must be"),
        ("V00XRKL", "5", "KL grade must be 0-4"),
        ("V00XRKL", "1.5", "expected a whole number"),
    ],
)
def test_kxr_bad_values(tmp_path: Path, column: str, cell: str, message: str) -> None:
    row = {"ID": "9000001", "SIDE": "1", "V00XRKL": "2"}
    row[column] = cell
    p = write(tmp_path / "kXR_SQ_BU00.txt", "ID|SIDE|V00XRKL\n" + "|".join(row.values()) + "\n")
    with pytest.raises(InputFileError) as err:
        read_kxr(raw(p))
    assert (err.value.line, err.value.column) == (2, column) and message in str(err.value)


def test_side_words_are_accepted(tmp_path: Path) -> None:
    p = write(tmp_path / "kXR_SQ_BU00.txt", "ID|SIDE|V00XRKL\n9000001|Right|2\n9000001|LEFT|1\n")
    assert read_kxr(raw(p))["side"].tolist() == ["R", "L"]


def test_outcomes99_lower_case_id_and_coded_visits(tmp_path: Path) -> None:
    p = write(
        tmp_path / "Outcomes99.txt",
        "id|V99ERKRPSN|V99ELKRPSN|V99ERKBLRP|V99ERKDAYS|V99ERKVSPR|V99ERKVSAF|V99ERKXRAF|V99ERKTLPR|V99ELKDAYS\n"
        "9000001|1: Yes, replacement seen on FU xray|0: No replacement seen on any FU xray|0: No|1403|"
        "3: 24-month|5: 36-month|5: 36-month|1: Total|.A: Not Expected\n"
        "9000002|2: No FU xrays of this knee|0|.|.A: Not Expected|.|.|.|.|.A\n",
    )
    frame = read_outcomes(raw(p, "outcomes", None)).set_index(["subject_id", "side"])
    right = frame.loc[(9000001, "R")]
    assert right["status"] == 1 and right["at_baseline"] == False  # noqa: E712
    assert (right["days_from_enrolment"], right["visit_before"], right["visit_after"]) == (1403, 3, 5)
    assert (right["xray_visit_after"], right["total_or_partial"]) == (5, 1)
    assert frame.loc[(9000001, "L"), "status"] == 0
    assert pd.isna(frame.loc[(9000001, "L"), "days_from_enrolment"])
    assert frame.loc[(9000002, "R"), "status"] == 2
    assert len(frame) == 4


CONTENTS_HEADER = "Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription\n"


def test_contents_sides_sequences_padding_and_rescans(tmp_path: Path) -> None:
    p = write(
        tmp_path / "Package_1" / "results" / "00m" / "contents.csv",
        CONTENTS_HEADER
        + "0.C.2/9000001/20040315/10203004,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^RIGHT,SAG_3D_DESS_RIGHT   \n"
        "0.C.2/9000001/20040315/10203008,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^RIGHT,  COR_MPR_RIGHT\n"
        "0.C.2/9000001/20040315/10203010,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^LEFT,SAG_3D_DESS_LEFT\n"
        "0.C.2/9000001/20040315/10203012,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^THIGH,MP_LOCATOR_THIGH\n"
        "0.C.2/9000001/20040315/10203099,9000001,20040315,016610203004,OAI^MR^ENROLLMENT^RIGHT,SAG_3D_DESS_RIGHT\n",
    )
    frame = read_contents(raw(p, "contents", 0)).sort_values("folder")
    assert frame[["side", "sequence"]].values.tolist() == [
        ["R", "COR_MPR"],
        ["L", "SAG_3D_DESS"],
        ["", "MP_LOCATOR_THIGH"],
        ["R", "SAG_3D_DESS"],
    ]
    # the rescan (listed later) wins
    assert frame["folder"].iloc[-1] == "0.C.2/9000001/20040315/10203099"
    assert frame["source_row"].iloc[-1] == 6
    assert frame["series_description"].iloc[0] == "COR_MPR_RIGHT"
    assert set(frame["barcode"]) == {"016610203004"}
    assert set(frame["study_date"]) == {dt.date(2004, 3, 15)}
    assert set(frame["visit_dir"]) == {str(p.parent.resolve())}


def test_contents_accession_number_lost_zeros_and_visit_from_release_code(tmp_path: Path) -> None:
    p = write(
        tmp_path / "misc" / "contents.csv",
        "folder,participantid,studydate,AccessionNumber,StudyDescription,SeriesDescription\n"
        "1.E.1/9000002/20050401/11203004,9000002,20050401,16611203004,OAI^MR^12 MONTH^LEFT,SAG_3D_DESS_LEFT\n"
        "10.C.1/9000002/20120401/11203005,9000002,,16611203005,OAI^MR^96 MONTH^LEFT,SAG_3D_DESS_LEFT\n",
    )
    frame = read_contents(raw(p, "contents", None))
    assert frame["visit"].tolist() == [1, 10]
    assert frame["barcode"].tolist() == ["16611203004", "16611203005"]
    assert frame["study_date"].tolist() == [dt.date(2005, 4, 1), None]


def test_contents_errors(tmp_path: Path) -> None:
    p = write(
        tmp_path / "misc" / "contents.csv",
        CONTENTS_HEADER + "9000002/20050401/11203004,9000002,20050401,1,x,SAG_3D_DESS_LEFT\n",
    )
    # an index whose visit cannot be told is a recorded, counted warning, never an aborted ingest
    warnings: list[str] = []
    assert read_contents(raw(p, "contents", None), warnings).empty
    assert len(warnings) == 1 and "1 series row(s) not read: cannot tell the visit" in warnings[0]
    assert "'9000002'" in warnings[0] and "line 2" in warnings[0]
    q = write(
        tmp_path / "00m" / "contents.csv",
        CONTENTS_HEADER + "0.C.2/9000002/20050401/1,9000002,20050401,1,x,SAG_3D_DESS_LEFT\n"
        "0.C.2/X/20050401/1,ABC,20050401,1,x,SAG_3D_DESS_LEFT\n",
    )
    with pytest.raises(InputFileError, match=r"line 3, column 'PARTICIPANTID'"):
        read_contents(raw(q, "contents", 0))
    r = write(tmp_path / "12m" / "contents.csv", "Folder|ParticipantID|SeriesDescription\n")
    with pytest.raises(InputFileError, match="expected comma-separated"):
        read_contents(raw(r, "contents", 1))


def test_clinical_values_long_rows(tmp_path: Path) -> None:
    p = write(
        tmp_path / "AllClinical00.txt",
        "ID|V00AGE|P01BMI|V00WOMKPR|P01INJR|V00COMMENT\n"
        "9000001|61|28|3: 3|1: Yes|fell off a ladder\n"
        "9000002|55|.|.: Missing Form/Incomplete Workbook|0: No|\n",
    )
    frame, table = read_allclinical(raw(p, "allclinical", 0), ["V00WOMKPR", "V00COMMENT"])
    values = clinical_values(table, ["V00WOMKPR", "V00COMMENT", "P01INJR"])
    by = values.set_index(["subject_id", "variable"])
    assert by.loc[(9000001, "V00WOMKPR"), "value_num"] == 3.0
    assert by.loc[(9000002, "V00WOMKPR"), "missing_code"] == "."
    assert by.loc[(9000001, "V00COMMENT"), "value_text"] == "fell off a ladder"
    assert by.loc[(9000002, "V00COMMENT"), "value_text"] is None
    # P01INJR was not read into this table, so it yields nothing here
    assert set(values["variable"]) == {"V00WOMKPR", "V00COMMENT"}
    assert np.isnan(frame["bmi"].tolist()[1])


def test_contents_quoted_cells_ragged_rows_and_links(tmp_path: Path) -> None:
    p = write(
        tmp_path / "00m" / "contents.csv",
        '"Folder","ParticipantID","StudyDate","Barcode","StudyDescription","SeriesDescription"\n'
        '"0.C.2/9000001/20040315/1",9000001,20040315,1,"OAI^MR^ENROLLMENT, RIGHT",SAG_3D_DESS_RIGHT\n'
        "\n"
        '"0.C.2/9000002/20040315/2",9000002,20040315,2,"two\nlines",SAG_3D_DESS_LEFT\n'
        '"0.C.2/9000003/20040315/3",9000003,20040315,3,x,SAG_3D_DESS_LEFT\n',
    )
    frame = read_contents(raw(p, "contents", 0))
    assert frame["study_description"].tolist() == ["OAI^MR^ENROLLMENT, RIGHT", "two\nlines", "x"]
    assert frame["source_row"].tolist() == [2, 4, 6]
    q = write(
        tmp_path / "12m" / "contents.csv",
        CONTENTS_HEADER + "1.C.2/9000001/20050315/1,9000001,20050315,1,x,SAG_3D_DESS_RIGHT\n"
        "1.C.2/9000001/20050315/2,9000001,20050315,1,x,SAG_3D_DESS_RIGHT,extra\n",
    )
    with pytest.raises(InputFileError, match=r"line 3: row has 7 fields but the header has 6"):
        read_contents(raw(q, "contents", 1))
    # image packages linked in from elsewhere are found, a link loop is walked once
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "images").symlink_to(tmp_path / "12m", target_is_directory=True)
    (tmp_path / "root" / "loop").symlink_to(tmp_path / "root", target_is_directory=True)
    assert [f.relative_path for f in discover_release(tmp_path / "root")] == ["images/contents.csv"]
