"""New studies (issue 15): knee-side variables, any variable over time, definitions from TOML
files, saved cohorts. Every expected value is written by hand from tests/helpers/study_release.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.definition_files import load_definition_file
from oaicohort.cohort.definitions import preset
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort, QueryError
from oaicohort.cohort.saved import export_saved, save_cohort, saved_knees
from oaicohort.cohort.saved_check import check_saved
from oaicohort.cohort.variables import VariableError, apply_value_mode, load_dictionary
from oaicohort.db import Database, open_database
from oaicohort.db.schema import KneeVariablePair, Volume
from oaicohort.db.stores import store_id_at
from oaicohort.errors import InputFileError
from oaicohort.ingest.dictionary import detect_pairs
from oaicohort.ingest.run import ingest_release
from tests.helpers.study_release import READINGS, S1, S2, S3, S4, S5, S6, VARIABLES, write_study_release

PANFILOV = {  # (subject, side) -> (label, exclusion, month, increase)
    (S1, "R"): ("none", None, None, None),
    (S1, "L"): ("fast", None, 24, 1),
    (S2, "R"): ("slow", None, 72, 1),
    (S2, "L"): ("none", None, None, None),  # 0 -> 1 never counts
    (S3, "R"): ("none", None, None, None),
    (S3, "L"): ("fast", None, 24, 1),
    (S4, "R"): (None, "baseline_klg_4", None, None),
    (S4, "L"): ("fast", None, 12, 2),
    (S5, "R"): (None, "lost_to_follow_up", None, None),
    (S5, "L"): (None, "lost_to_follow_up", None, None),
    (S6, "R"): ("fast", None, 12, 3),  # missing 12-month KLG: the reference's replacement proxy, 5 - 2
}
JSN_MEDIAL = {
    (S1, "R"): ("none", None, None, None),
    (S1, "L"): ("fast", None, 48, 1),  # JSM 0 -> 1 at 48 months (48 is examined)
    (S2, "R"): ("slow", None, 96, 1),  # JSM 1 -> 2 at 96 months
    (S2, "L"): ("none", None, None, None),
    (S3, "R"): ("none", None, None, None),  # only the lateral compartment narrows
    (S3, "L"): ("fast", None, 24, 1),
    (S4, "R"): (None, "baseline_klg_4", None, None),
    (S4, "L"): ("none", None, None, None),  # KLG rises, JSM does not
    (S5, "R"): (None, "lost_to_follow_up", None, None),
    (S5, "L"): (None, "lost_to_follow_up", None, None),
    (S6, "R"): ("none", None, None, None),  # the missing 12-month reading is ignored
}
INCIDENT_KL2 = {
    (S1, "R"): ("none", None, None, None),
    (S1, "L"): ("fast", None, 24, 1),  # KL 1 -> 2 at 24 months
    (S2, "R"): (None, "baseline_not_below_incidence_grade", None, None),
    (S2, "L"): ("none", None, None, None),  # reaches KL 1 only
    (S3, "R"): ("none", None, None, None),
    (S3, "L"): (None, "baseline_not_below_incidence_grade", None, None),
    (S4, "R"): (None, "baseline_klg_4", None, None),
    (S4, "L"): ("fast", None, 12, 2),  # KL 0 -> 2 at 12 months
    (S5, "R"): (None, "lost_to_follow_up", None, None),
    (S5, "L"): (None, "lost_to_follow_up", None, None),
    (S6, "R"): (None, "baseline_not_below_incidence_grade", None, None),
}
JSN_TOML = """
name = "jsn_medial_progression"
graded_variable = "jsn_medial"
count_0_to_1 = true              # JSN 0 -> 1 is narrowing
followup_visits = [1, 3, 5, 6, 8, 10]
missing_klg = "ignore"
"""
INCIDENCE_TOML = """
[definition]
name = "incident_kl2"
outcome = "incidence"
incidence_grade = 2
missing_klg = "ignore"
"""
PANFILOV_TOML = """
name = "my_panfilov"
followup_visits = [1, 3, 5, 8, 10]
fast_before_month = 72
horizon_month = 96
count_0_to_1 = false
missing_klg = "progression_proxy"
non_progressor_requires = "subject_at_last_visit"
baseline_klg_allowed = [0, 1, 2, 3]
duplicates = "first"
exclusions = ["replaced_at_baseline", "bmi_missing", "no_baseline_dess"]
dess_sequence = "SAG_3D_DESS"
graded_variable = "klg"
min_increase = 1
outcome = "progression"
"""


def _labels(result: Any) -> dict[tuple[int, str], tuple[Any, ...]]:
    out = {}
    for r in result.labels.itertuples(index=False):
        vals = (r.label, r.exclusion, r.progression_month, r.kl_increase)
        out[(int(r.subject_id), r.side)] = tuple(None if pd.isna(v) else v for v in vals)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, Path]]:
    base = tmp_path_factory.mktemp("study")
    root = write_study_release(base / "release")
    db = open_database(base / "study.sqlite")
    ingest_release(db, root, variables=VARIABLES)
    derive_labels(db)
    yield db, base
    db.engine.dispose()


def _by_knee(frame: pd.DataFrame, column: str) -> dict[tuple[int, str], Any]:
    return {(int(s), side): v for s, side, v in zip(frame["subject_id"], frame["side"], frame[column])}


# --------------------------------------------------------------------------- knee-side variables


def test_pairs_are_detected_from_the_ingested_variables(study: tuple[Database, Path]) -> None:
    db, _ = study
    with db.read() as s:
        pairs = {
            (r.name, r.right_variable, r.left_variable, r.visit) for r in s.execute(select(KneeVariablePair)).scalars()
        }
    assert pairs == {
        ("INJ@P01", "P01INJR", "P01INJL", None),
        ("WOMKP@V00", "V00WOMKPR", "V00WOMKPL", 0),
        ("WOMKP@V01", "V01WOMKPR", "V01WOMKPL", 1),
        ("WOMKP@V03", "V03WOMKPR", "V03WOMKPL", 3),
    }  # V00KOOSFSR ends in R but has no twin: subject-level


def test_pair_rule_side_letter_inside_twins_in_one_file_and_other_joints() -> None:
    names = pd.DataFrame(
        {
            "variable": ["V00WPRKN1", "V00WPLKN1", "V00XR", "V01XL", "P01HIPR", "P01HIPL", "V00ABR", "V00ABL"],
            "source_file": ["a", "a", "a", "a", "a", "a", "a", "b"],
        }
    )
    pairs = detect_pairs(names)
    assert pairs[["name", "right_variable", "left_variable"]].values.tolist() == [
        ["WPKN1@V00", "V00WPRKN1", "V00WPLKN1"]
    ]  # V00XR/V01XL: other prefixes; HIP: another joint; ABR/ABL: different files


def test_discovery_lists_pairs_and_the_dictionary(study: tuple[Database, Path]) -> None:
    cohort = Cohort(study[0])
    assert cohort.knee_variables()["name"].tolist() == ["INJ@P01", "WOMKP@V00", "WOMKP@V01", "WOMKP@V03"]
    assert cohort.dictionary(["p01injr"])[["code", "label"]].values.tolist() == [["0", "No"], ["1", "Yes"]]


def test_a_pair_resolves_per_knee(study: tuple[Database, Path]) -> None:
    db, _ = study
    cohort = Cohort(db)
    frame = cohort.knees(variables=["WOMKP@V00", "V00WOMKPR", "V00KOOSFSR"])
    values = _by_knee(frame, "WOMKP@V00")
    assert values == {
        (S1, "R"): 2.0,
        (S1, "L"): 7.0,
        (S2, "R"): 5.0,
        (S2, "L"): 0.0,
        (S3, "R"): 10.0,
        (S3, "L"): 3.0,
        (S4, "L"): 6.0,
        (S6, "R"): 4.0,
    }
    # the raw right-knee variable stays subject-level: a left knee shows the right knee's value
    assert _by_knee(frame, "V00WOMKPR")[(S1, "L")] == 2.0
    assert set(_by_knee(frame, "V00KOOSFSR").values()) == {75.0}
    chosen = cohort.knees(variables={"WOMKP@V00": (5, None)})
    assert set(zip(chosen["subject_id"], chosen["side"])) == {(S1, "L"), (S2, "R"), (S3, "R"), (S4, "L")}
    # the same pair named by prefix and stem
    assert _by_knee(cohort.knees(variables={"V00WOMKP": (5, None)}), "V00WOMKP") == {
        (S1, "L"): 7.0,
        (S2, "R"): 5.0,
        (S3, "R"): 10.0,
        (S4, "L"): 6.0,
    }


def test_ambiguous_and_unknown_names(study: tuple[Database, Path]) -> None:
    cohort = Cohort(study[0])
    with pytest.raises(VariableError, match="ambiguous.*WOMKP@V00, WOMKP@V01, WOMKP@V03"):
        cohort.knees(variables=["WOMKP"])
    with pytest.raises(
        QueryError, match="no knee-side pair WOMKP@V06; pairs of WOMKP: WOMKP@V00, WOMKP@V01, WOMKP@V03"
    ):
        cohort.knees(variables=["WOMKP@V06"])
    with pytest.raises(QueryError, match=r"unknown filter\(s\) \['NOPE'\].*knee-side pairs: INJ@P01, WOMKP@V00"):
        cohort.knees(variables=["NOPE"])


def test_coded_values_keep_code_and_label(study: tuple[Database, Path]) -> None:
    db, _ = study
    frame = Cohort(db).knees(variables=["INJ@P01"])
    with db.read() as s:
        dictionary = load_dictionary(s, ["P01INJR", "P01INJL"])
    assert sorted(zip(dictionary["variable"], dictionary["code"], dictionary["label"])) == [
        ("P01INJL", "0", "No"),
        ("P01INJL", "1", "Yes"),
        ("P01INJR", "0", "No"),
        ("P01INJR", "1", "Yes"),
    ]
    both = apply_value_mode(frame, "both", dictionary)
    got = {
        k: (code, lab)
        for k, code, lab in zip(zip(both["subject_id"], both["side"]), both["INJ@P01"], both["INJ@P01_label"])
    }
    assert got[(S1, "R")] == (1.0, "Yes")
    assert got[(S1, "L")] == (0.0, "No")
    assert got[(S3, "R")] == (0.0, "No")  # a bare "0" cell gets its label from the dictionary
    labels = apply_value_mode(frame, "labels", dictionary)
    assert _by_knee(labels, "INJ@P01")[(S2, "L")] == "Yes"


# --------------------------------------------------------------------------- trajectories


def test_trajectory_of_a_knee_side_variable_is_right_per_visit(study: tuple[Database, Path]) -> None:
    cohort = Cohort(study[0])
    long = cohort.trajectories(variable="WOMKP", include_excluded=True)
    s1 = long[long["subject_id"] == S1]
    assert list(zip(s1["side"], s1["month"], s1["variable"], s1["value"])) == [
        ("L", 0, "V00WOMKPL", 7.0),
        ("L", 12, "V01WOMKPL", 8.0),
        ("L", 24, "V03WOMKPL", 9.0),
        ("R", 0, "V00WOMKPR", 2.0),
        ("R", 12, "V01WOMKPR", 3.0),
        ("R", 24, "V03WOMKPR", 4.0),
    ]
    s4r = long[(long["subject_id"] == S4) & (long["side"] == "R")]
    assert s4r["value"].isna().tolist() == [True, False, False]
    assert (
        s4r["missing_code"].tolist()[0] == "." and s4r["value_label"].tolist()[0] == "Missing Form/Incomplete Workbook"
    )
    wide = cohort.trajectories(variable="WOMKP@V00", wide=True)  # the visit part is ignored
    assert list(wide.columns[-3:]) == ["WOMKP_00m", "WOMKP_12m", "WOMKP_24m"]
    row = wide[(wide["subject_id"] == S3) & (wide["side"] == "L")].iloc[0]
    assert (row["WOMKP_00m"], row["WOMKP_12m"], row["WOMKP_24m"]) == (3.0, 4.0, 5.0)


def test_trajectory_of_jsn(study: tuple[Database, Path]) -> None:
    wide = Cohort(study[0]).trajectories(variable="XRJSM", wide=True)
    row = wide[(wide["subject_id"] == S1) & (wide["side"] == "L")].iloc[0]
    assert [row[f"XRJSM_{m:02d}m"] for m in (0, 12, 24, 36, 48, 72, 96)] == [0, 0, 0, 0, 1, 1, 1]


# --------------------------------------------------------------------------- definitions from files


def _toml(tmp_path: Path, text_: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text_, encoding="utf-8")
    return path


def test_toml_equal_to_panfilov_gives_identical_labels(study: tuple[Database, Path], tmp_path: Path) -> None:
    db, _ = study
    params = load_definition_file(_toml(tmp_path, PANFILOV_TOML))
    assert params.hash() == preset("panfilov2022").hash()
    mine, reference = derive_labels(db, params), derive_labels(db, "panfilov2022")
    assert _labels(mine) == _labels(reference) == PANFILOV


def test_jsn_progression_definition(study: tuple[Database, Path], tmp_path: Path) -> None:
    params = load_definition_file(_toml(tmp_path, JSN_TOML))
    assert _labels(derive_labels(study[0], params)) == JSN_MEDIAL


def test_kl2_incidence_definition(study: tuple[Database, Path], tmp_path: Path) -> None:
    params = load_definition_file(_toml(tmp_path, INCIDENCE_TOML))
    assert _labels(derive_labels(study[0], params)) == INCIDENT_KL2


def test_a_graded_variable_other_than_klg_warns_when_missing_klg_is_inherited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inherited = JSN_TOML.replace('missing_klg = "ignore"\n', "")
    with caplog.at_level("WARNING", logger="oaicohort.cohort.definition_files"):
        params = load_definition_file(_toml(tmp_path, inherited))
    assert params.missing_klg == "progression_proxy"
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "study.toml" in line
    assert "inherits missing_klg = 'progression_proxy' from panfilov2022" in line
    assert "without a jsn_medial reading (.T technical failures included) counts as progression" in line
    # the oai_tkr2024 base: the consequence of its own policy
    caplog.clear()
    with caplog.at_level("WARNING", logger="oaicohort.cohort.definition_files"):
        load_definition_file(_toml(tmp_path, 'base = "oai_tkr2024"\n' + inherited, "tkr.toml"))
    assert "only where Outcomes99 or a .P code says the knee was replaced" in caplog.records[0].getMessage()
    # said explicitly (any value, the inherited one too), or a KLG definition: no warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="oaicohort.cohort.definition_files"):
        load_definition_file(_toml(tmp_path, JSN_TOML))
        load_definition_file(_toml(tmp_path, inherited + 'missing_klg = "progression_proxy"\n', "same.toml"))
        load_definition_file(_toml(tmp_path, 'name = "klg_48"\nhorizon_month = 48\n', "klg.toml"))
    assert caplog.records == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "x"\nhorizn = 48\n', "unknown field 'horizn'"),
        ('name = "x"\nfollowup_visits = "1,3"\n', "field 'followup_visits' must be a list of integers"),
        ('name = "x"\ngraded_variable = "jsn"\n', "field 'graded_variable' must be one of"),
        ('name = "x"\nincidence_grade = 7\noutcome = "incidence"\n', "incidence_grade must be a grade 1-4"),
        ('name = "x"\nhorizon_month = 6\n', "no follow-up visit within horizon_month=6"),
        ('name = "x"\nimage_store = "/s"\n', "field 'image_store' is not part of a definition"),
        ("horizon_month = 48\n", "field 'name' is required"),
        ('name = "panfilov2022"\nhorizon_month = 48\n', "field 'name': 'panfilov2022' is a preset.*horizon_month"),
        ('name = "x"\nmin_increase = true\n', "field 'min_increase' must be a number"),
        ("name = [", "not valid TOML"),
    ],
)
def test_definition_file_errors_name_the_field(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InputFileError, match=message) as info:
        load_definition_file(_toml(tmp_path, body))
    assert "study.toml" in str(info.value)


def test_oai_label_definition_file_and_list(study: tuple[Database, Path], tmp_path: Path) -> None:
    db, _ = study
    runner = CliRunner()
    path = _toml(tmp_path, INCIDENCE_TOML)
    res = runner.invoke(app, ["--db", db.url, "label", "--definition-file", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["knees"] == 5  # S1R, S1L, S2L, S3R, S4L (INCIDENT_KL2)
    res = runner.invoke(app, ["--db", db.url, "label", "--list", "--json"])
    assert res.exit_code == 0, res.output
    listed = {d["name"]: d for d in json.loads(res.stdout)}
    assert listed["incident_kl2"]["knees"] == 5 and listed["incident_kl2"]["labelled"] == 11
    assert (
        listed["panfilov2022"]["knees"] == 8 and listed["panfilov2022"]["params_hash"] == preset("panfilov2022").hash()
    )
    assert listed["oai_tkr2024"]["derived"] is False
    res = runner.invoke(app, ["--db", db.url, "label", "--list"])
    assert "incident_kl2" in res.stdout and load_definition_file(path).hash()[:12] in res.stdout
    bad = _toml(tmp_path, 'name = "x"\nhorizn = 48\n', "bad.toml")
    res = runner.invoke(app, ["--db", db.url, "label", "--definition-file", str(bad)])
    assert res.exit_code == 1 and "bad.toml: unknown field 'horizn'" in res.stderr
    res = runner.invoke(app, ["--db", db.url, "label", "-d", "oai_tkr2024", "--definition-file", str(path)])
    assert res.exit_code == 2 and "Invalid value for --definition" in res.output


# --------------------------------------------------------------------------- saved cohorts


def test_saved_cohort_reports_the_knees_a_reingest_changed(any_db: Database, tmp_path: Path) -> None:
    root = write_study_release(tmp_path / "release")
    db = any_db
    ingest_release(db, root, variables=VARIABLES)
    derive_labels(db)
    saved = save_cohort(db, "non_progressors", label="none", variables=["WOMKP@V00"])
    assert set(zip(saved["subject_id"], saved["side"])) == {(S1, "R"), (S2, "L"), (S3, "R")}
    assert check_saved(db, "non_progressors").same

    # a newer release changes two readings: S2 L reaches KL 2 at 72 months, S4 L's 12-month KL 2 becomes 0
    readings = {k: dict(v) for k, v in READINGS.items()}
    readings[(S2, "L")][8] = (2, 0, 0)
    readings[(S4, "L")][1] = (0, 0, 0)
    write_study_release(root, readings)
    ingest_release(db, root, variables=VARIABLES)
    stale = check_saved(db, "non_progressors")
    assert stale.same and any("oai label" in n for n in stale.notes)  # labels not yet re-derived
    derive_labels(db)
    check = check_saved(db, "non_progressors")
    assert not check.same
    assert check.entered[["subject_id", "side", "label"]].values.tolist() == [[S4, "L", "none"]]
    assert check.left[["subject_id", "side", "label"]].values.tolist() == [[S2, "L", "none"]]
    assert check.entered["why"].iloc[0] == "label fast -> none; V01 KLG 2 -> 0"
    assert check.left["why"].iloc[0] == "label none -> slow; V08 KLG 1 -> 2"
    assert check.changed_files == ["OAICompleteData_ASCII/kXR_SQ_BU01.txt", "OAICompleteData_ASCII/kXR_SQ_BU08.txt"]
    assert (check.saved_run, check.current_run) == (1, 2)

    header, frame = export_saved(db, "non_progressors")  # the frozen list, not today's
    assert set(zip(frame["subject_id"], frame["side"])) == {(S1, "R"), (S2, "L"), (S3, "R")}
    # what `oai predict/explain --cohort non_progressors` score: the frozen list, in its order
    assert saved_knees(db, "non_progressors") == [(int(s), side) for s, side in zip(saved["subject_id"], saved["side"])]
    assert header[0].startswith("saved cohort: non_progressors (3 knees, content sha256 ")
    assert "oai toolkit 0.1.0" in header[1]
    assert header[2] == f"label definition: panfilov2022 (params sha256 {preset('panfilov2022').hash()})"
    files = [line for line in header if line.startswith("  file ")]
    assert len(files) == 12 and any("kXR_SQ_BU01.txt sha256 " in f for f in files)
    # knee-side values resolve per knee on this back-end too
    assert _by_knee(frame, "WOMKP@V00") == {(S1, "R"): 2.0, (S2, "L"): 0.0, (S3, "R"): 10.0}


def test_saved_cohort_cli(study: tuple[Database, Path], tmp_path: Path) -> None:
    db, _ = study
    runner = CliRunner()
    base = ["--db", db.url, "cohort", "--definition", "panfilov2022"]
    res = runner.invoke(app, [*base, "--var", "WOMKP@V00=5:", "--sex", "F", "--save", "pain_f"])
    assert res.exit_code == 0, res.output
    assert "saved cohort 'pain_f': 2 knees" in res.stderr  # S1 L (7) and S3 R (10)
    res = runner.invoke(app, [*base, "--var", "WOMKP@V00=5:", "--save", "pain_f"])
    assert res.exit_code == 1 and "already saved" in res.stderr
    res = runner.invoke(app, ["--db", db.url, "cohort", "--saved", "pain_f"])
    assert res.exit_code == 0, res.output
    assert "the same" in res.stdout and "2 knees saved, 2 now" in res.stdout
    out = tmp_path / "pain_f.csv"
    res = runner.invoke(app, ["--db", db.url, "cohort", "--saved", "pain_f", "--export", "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# saved cohort: pain_f (2 knees")
    frame = pd.read_csv(out, comment="#")
    assert set(zip(frame["subject_id"], frame["side"])) == {(S1, "L"), (S3, "R")}
    assert frame["WOMKP@V00"].tolist() == [7.0, 10.0]
    res = runner.invoke(app, ["--db", db.url, "cohort", "--saved", "pain_f", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["same"], report["entered"], report["left"], report["saved_knees"]) == (True, [], [], 2)
    res = runner.invoke(app, ["--db", db.url, "cohort", "--saved", "pain_f", "--sex", "M"])
    assert res.exit_code == 2 and "--saved" in res.output
    res = runner.invoke(app, ["--db", db.url, "cohort", "--saved", "nope"])
    assert res.exit_code == 1 and "no saved cohort 'nope'" in res.stderr


def test_cli_knee_side_var_trajectories_values_and_dictionary(study: tuple[Database, Path], tmp_path: Path) -> None:
    db, _ = study
    runner = CliRunner()
    res = runner.invoke(
        app, ["--db", db.url, "cohort", "--var", "WOMKP@V00=5:", "--var", "INJ@P01", "--values", "both", "-f", "csv"]
    )
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(pd.io.common.StringIO(res.stdout))
    assert list(frame.columns[-4:]) == ["WOMKP@V00", "WOMKP@V00_label", "INJ@P01", "INJ@P01_label"]
    assert _by_knee(frame, "INJ@P01_label") == {(S1, "L"): "No", (S2, "R"): "No", (S3, "R"): "No", (S4, "L"): "Yes"}
    out = tmp_path / "pain.csv"
    res = runner.invoke(
        app, ["--db", db.url, "cohort", "--trajectories", "--var", "WOMKP", "--wide", "--out", str(out), "--dictionary"]
    )
    assert res.exit_code == 0, res.output
    wide = pd.read_csv(out)
    assert _by_knee(wide, "WOMKP_12m")[(S2, "L")] == 1.0
    dictionary = pd.read_csv(tmp_path / "pain.dictionary.csv")
    assert set(dictionary["variable"]) == {"V00WOMKPR", "V01WOMKPR", "V01WOMKPL", "V03WOMKPR", "V03WOMKPL"}
    res = runner.invoke(app, ["--db", db.url, "cohort", "--var", "WOMKP"])
    assert res.exit_code == 2 and "ambiguous" in res.stderr


# --------------------------------------------------------------------------- volumes


def test_knees_with_a_volume_in_a_store(study: tuple[Database, Path], tmp_path: Path) -> None:
    db, _ = study
    store = (tmp_path / "v.zarr").resolve()
    with db.write() as s:
        ids = dict(((int(a), b), int(k)) for k, a, b in s.execute(text("SELECT id, subject_id, side FROM knees")))
        for (sid, side), position, status in (((S1, "R"), 0, "ok"), ((S1, "L"), 1, "failed"), ((S2, "R"), 2, "ok")):
            s.add(
                Volume(
                    knee_id=ids[(sid, side)],
                    visit=0,
                    view="sag",
                    store_id=store_id_at(s, store),
                    params_hash="p",
                    position=position,
                    status=status,
                )
            )
    frame = Cohort(db).knees(store=store)
    assert list(zip(frame["subject_id"], frame["side"], frame["position"])) == [(S1, "R", 0), (S2, "R", 2)]
    assert frame.attrs["volumes"]["labelled_knees"] == 8
    assert frame.attrs["volumes"]["knees_without_volume"] == 6
    with pytest.raises(Exception, match="no cor volumes of store"):
        Cohort(db).knees(store=store, view="cor")
