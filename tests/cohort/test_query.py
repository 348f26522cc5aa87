"""Cohort queries (``Cohort(db).knees`` / ``.trajectories``) and ``oai cohort``; the expected
knees of every filter are written by hand from the small cohort below."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import KNEE_COLUMNS, Cohort, QueryError
from oaicohort.cohort.splits import make_split
from oaicohort.db import Database, open_database
from oaicohort.db.schema import ClinicalValue, Knee, SplitAssignment, Subject
from oaicohort.db.staleness import StaleResultError, mark_stale
from oaicohort.errors import DatabaseStateError
from tests.helpers.cohort_rows import add_knee, add_subject
from tests.helpers.databases import BACKENDS, fresh_database_url

# subject -> (site, sex, age, BMI); knees -> label or exclusion (hand-derived, panfilov2022)
S1, S2, S3, S4, S5, S6 = 9000001, 9000002, 9000003, 9000004, 9000005, 9000006
EXPECTED = {
    (S1, "R"): ("none", None),  # KL0 stays 0
    (S1, "L"): ("fast", None),  # KL2 -> 3 at 24 months
    (S2, "R"): ("slow", None),  # KL1 -> 2 at 72 months
    (S3, "R"): ("none", None),  # KL3 stays 3
    (S3, "L"): ("fast", None),  # KL1 -> 2 at 12 months
    (S4, "R"): (None, "bmi_missing"),
    (S5, "R"): ("none", None),
    (S5, "L"): (None, "baseline_klg_4"),
    (S6, "L"): ("none", None),
}
INCLUDED = {k for k, (label, _) in EXPECTED.items() if label is not None}


def build_cohort(db: Database) -> None:
    with db.write() as s:
        add_subject(s, S1, site="A", sex="F", age=50.0, bmi=22.0)
        add_knee(s, S1, "R", {0: 0, 10: 0}, sequences=(("COR_IW_TSE", 0),))
        add_knee(s, S1, "L", {0: 2, 3: 3, 10: 3})
        add_subject(s, S2, site="B", sex="M", age=65.0, bmi=31.0)
        add_knee(s, S2, "R", {0: 1, 8: 2, 10: 2}, sequences=(("SAG_3D_DESS", 1),))
        add_subject(s, S3, site="D", sex="F", age=72.0, bmi=27.0)
        add_knee(s, S3, "R", {0: 3, 10: 3})
        add_knee(s, S3, "L", {0: 1, 1: 2, 10: 2})
        add_subject(s, S4, site="C", sex="M", age=58.0, bmi=None)
        add_knee(s, S4, "R", {0: 1, 10: 1})
        add_subject(s, S5, site="E", sex="F", age=45.0, bmi=35.0)
        add_knee(s, S5, "R", {0: 0, 10: 0})
        add_knee(s, S5, "L", {0: 4, 10: 4})
        add_subject(s, S6, site="A", sex="M", age=61.0, bmi=24.5)
        add_knee(s, S6, "L", {0: 1, 1: [(2, 900), (1, 800)], 10: 1})  # duplicate: row 800 (KL1) first
        for sid, num, text, code in (
            (S1, 2.0, "2", None),
            (S2, 5.0, "5", None),
            (S3, 0.0, "0", None),
            (S5, None, None, "."),
            (S6, 3.0, "3", None),
        ):
            s.add(
                ClinicalValue(
                    subject_id=sid,
                    variable="V00WOMKPR",
                    value_num=num,
                    value_text=text,
                    missing_code=code,
                    source_file="AllClinical00.txt",
                )
            )
        for sid, num, text in ((S1, 1.0, "1: Yes"), (S2, 0.0, "0: No"), (S3, 0.0, "0: No")):
            s.add(
                ClinicalValue(
                    subject_id=sid,
                    variable="P01INJR",
                    value_num=num,
                    value_text=text,
                    missing_code=None,
                    source_file="AllClinical00.txt",
                )
            )


@pytest.fixture(scope="module", params=BACKENDS)
def cohort_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """The hand-made cohort, labelled and split (test site D, 2 folds), on each back-end;
    read-only in the tests."""
    for url in fresh_database_url(request.param, tmp_path_factory.mktemp("query")):
        db = open_database(url)
        build_cohort(db)
        derive_labels(db)
        make_split(db, test_sites=("D",), folds=2, seed=0)
        yield db
        db.dispose()


def keys(frame: pd.DataFrame) -> set[tuple[int, str]]:
    return set(zip(frame["subject_id"].astype(int), frame["side"]))


def test_default_query_lists_included_knees_with_contract_columns(cohort_db: Database) -> None:
    df = Cohort(cohort_db).knees()
    assert list(df.columns) == list(KNEE_COLUMNS)
    assert keys(df) == INCLUDED
    row = df[(df["subject_id"] == S1) & (df["side"] == "L")].iloc[0]
    assert (row["site"], row["sex"], row["age"], row["bmi"]) == ("A", "F", 50.0, 22.0)
    assert (row["kl_baseline"], row["label"], row["progression_month"], row["kl_increase"]) == (2, "fast", 24, 1)
    assert pd.isna(row["exclusion"])
    assert df.attrs["definition"] == "panfilov2022" and df.attrs["split_id"] is not None
    test = df[df["role"] == "test"]
    assert keys(test) == {(S3, "R"), (S3, "L")} and test["fold"].isna().all()
    assert set(df.loc[df["role"] == "train", "fold"]) == {0, 1}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"site": "A"}, {(S1, "R"), (S1, "L"), (S6, "L")}),
        ({"site": ["b", "D"]}, {(S2, "R"), (S3, "R"), (S3, "L")}),
        ({"sex": "M"}, {(S2, "R"), (S6, "L")}),
        ({"sex": "female"}, {(S1, "R"), (S1, "L"), (S3, "R"), (S3, "L"), (S5, "R")}),
        ({"age": (60, 70)}, {(S2, "R"), (S6, "L")}),
        ({"age": (None, 50)}, {(S1, "R"), (S1, "L"), (S5, "R")}),
        ({"bmi": (30, None)}, {(S2, "R"), (S5, "R")}),
        ({"kl_baseline": [0, 3]}, {(S1, "R"), (S3, "R"), (S5, "R")}),
        ({"kl_baseline": 1}, {(S2, "R"), (S3, "L"), (S6, "L")}),
        ({"label": "fast"}, {(S1, "L"), (S3, "L")}),
        ({"label": ["fast", "slow"], "site": "A"}, {(S1, "L")}),
        ({"side": "R", "sex": "F"}, {(S1, "R"), (S3, "R"), (S5, "R")}),
        ({"role": "test"}, {(S3, "R"), (S3, "L")}),
        ({"subject_id": [S1, S2]}, {(S1, "R"), (S1, "L"), (S2, "R")}),
        ({"progression_month": (12, 36)}, {(S1, "L"), (S3, "L")}),
        ({"has_sequence": "SAG_3D_DESS"}, INCLUDED),
        ({"has_sequence": ("SAG_3D_DESS", 1)}, {(S2, "R")}),
        ({"has_sequence": ["COR_IW_TSE", ("SAG_3D_DESS", 1)]}, {(S1, "R"), (S2, "R")}),
        ({"V00WOMKPR": (2, 4)}, {(S1, "R"), (S1, "L"), (S6, "L")}),
        ({"variables": {"V00WOMKPR": [0, 5]}}, {(S2, "R"), (S3, "R"), (S3, "L")}),
        ({"V00WOMKPR": None}, {(S5, "R")}),  # missing code "."
        ({"P01INJR": "1: Yes"}, {(S1, "R"), (S1, "L")}),
        ({"P01INJR": 0, "site": "D"}, {(S3, "R"), (S3, "L")}),
        ({"P01INJR": None}, {(S5, "R"), (S6, "L")}),  # no value ingested for these subjects
        ({"site": []}, set()),
    ],
)
def test_filters(cohort_db: Database, filters: dict[str, Any], expected: set[tuple[int, str]]) -> None:
    assert keys(Cohort(cohort_db).knees(**filters)) == expected


def test_include_excluded_and_exclusion_filter(cohort_db: Database) -> None:
    cohort = Cohort(cohort_db)
    df = cohort.knees(include_excluded=True)
    assert keys(df) == set(EXPECTED)
    got = {
        (int(r.subject_id), r.side): (
            None if pd.isna(r.label) else r.label,
            None if pd.isna(r.exclusion) else r.exclusion,
        )
        for r in df.itertuples()
    }
    assert got == EXPECTED
    excluded = df[df["exclusion"].notna()]
    assert excluded["role"].isna().all() and excluded["fold"].isna().all()
    assert keys(cohort.knees(include_excluded=True, exclusion="bmi_missing")) == {(S4, "R")}
    assert keys(cohort.knees(include_excluded=True, bmi=None)) == {(S4, "R")}
    assert keys(cohort.knees(include_excluded=True, label=None)) == {(S4, "R"), (S5, "L")}


def test_fold_filter_matches_the_stored_assignment(cohort_db: Database) -> None:
    cohort = Cohort(cohort_db)
    df = cohort.knees()
    split_id = df.attrs["split_id"]
    with cohort_db.read() as s:
        stored = s.execute(
            select(Knee.subject_id, Knee.side, SplitAssignment.fold)
            .join(SplitAssignment, SplitAssignment.knee_id == Knee.id)
            .where(SplitAssignment.split_id == split_id, SplitAssignment.role == "train")
        ).all()
    for k in (0, 1):
        assert keys(cohort.knees(fold=k)) == {(sid, side) for sid, side, f in stored if f == k}
    assert keys(cohort.knees(fold=[0, 1])) == INCLUDED - {(S3, "R"), (S3, "L")}
    # both knees of a subject share a fold
    s1 = df[df["subject_id"] == S1]
    assert s1["fold"].nunique() == 1


def test_variables_become_columns(cohort_db: Database) -> None:
    df = Cohort(cohort_db).knees(variables=["V00WOMKPR", "P01INJR"], site="A")
    by = {(int(r.subject_id), r.side): r for r in df.itertuples()}
    assert by[(S1, "L")].V00WOMKPR == 2.0 and by[(S6, "L")].V00WOMKPR == 3.0
    assert by[(S1, "R")].P01INJR == 1.0 and pd.isna(by[(S6, "L")].P01INJR)


def test_split_none_and_explicit_split(cohort_db: Database) -> None:
    cohort = Cohort(cohort_db)
    df = cohort.knees(split=None)
    assert df["role"].isna().all() and df["fold"].isna().all() and df.attrs["split_id"] is None
    split_id = cohort.knees().attrs["split_id"]
    assert keys(cohort.knees(split=split_id, role="train")) == INCLUDED - {(S3, "R"), (S3, "L")}
    with pytest.raises(DatabaseStateError, match="no split 999"):
        cohort.knees(split=999)
    with pytest.raises(DatabaseStateError, match="oai split --definition panfilov2022"):
        cohort.knees(split=None, role="train")


def test_unknown_filter_lists_the_valid_ones(cohort_db: Database) -> None:
    with pytest.raises(QueryError) as info:
        Cohort(cohort_db).knees(klg=2)
    message = str(info.value)
    assert "unknown filter(s) ['klg']" in message
    for name in ("site", "sex", "age", "bmi", "kl_baseline", "label", "role", "fold", "has_sequence"):
        assert name in message
    assert "P01INJR, V00WOMKPR" in message  # the ingested variables are valid filters too
    with pytest.raises(QueryError, match=r"unknown filter\(s\) \['V99XXX'\]"):
        Cohort(cohort_db).knees(variables={"V99XXX": 1})


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"label": "fastest"}, "expected one of \\['none', 'fast', 'slow'\\]"),
        ({"sex": "X"}, "expected 'F' or 'M'"),
        ({"kl_baseline": 7}, "expected a KL grade 0-4"),
        ({"age": ("old", None)}, "expected a number"),
        ({"role": "validation"}, "expected one of \\['train', 'test'\\]"),
        ({"fold": "0"}, "expected an integer"),
        ({"has_sequence": ("SAG_3D_DESS", 4.5)}, "not an OAI visit code"),
        ({"V00WOMKPR": {"a": 1}}, "expected numbers, strings"),
    ],
)
def test_bad_filter_values(cohort_db: Database, filters: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        Cohort(cohort_db).knees(**filters)


def test_sql_injection_attempts_return_nothing_and_leave_tables_intact(cohort_db: Database) -> None:
    cohort = Cohort(cohort_db)
    attacks = ["A' OR '1'='1", "A'; DROP TABLE knees; --", '" OR 1=1 --']
    for attack in attacks:
        assert cohort.knees(exclusion=attack, include_excluded=True).empty
        # values checked against what the database holds are refused, never run
        for query in ({"site": attack}, {"P01INJR": attack}, {"has_sequence": (attack, 0)}):
            with pytest.raises(QueryError, match="no subject has this site|expected a number|no indexed image"):
                cohort.knees(**query)
        with pytest.raises(QueryError):
            cohort.knees(variables={attack: 1})
    with cohort_db.read() as s:
        assert s.execute(select(func.count()).select_from(Knee)).scalar() == len(EXPECTED)
        assert s.execute(select(func.count()).select_from(Subject)).scalar() == 6
    assert keys(cohort.knees()) == INCLUDED


def test_trajectories_long_and_wide(cohort_db: Database) -> None:
    cohort = Cohort(cohort_db)
    long = cohort.trajectories(subject_id=S6)
    assert list(long["month"]) == [0, 12, 96]
    assert list(long["klg"]) == [1, 1, 1]  # the duplicate at 12 months: first row in file order
    every = cohort.trajectories(subject_id=S6, duplicates="all")
    assert sorted(every.loc[every["month"] == 12, "klg"]) == [1, 2]
    wide = cohort.trajectories(wide=True, label="fast")
    assert keys(wide) == {(S1, "L"), (S3, "L")}
    s1 = wide[wide["subject_id"] == S1].iloc[0]
    assert (s1["klg_00m"], s1["klg_24m"], s1["klg_96m"]) == (2, 3, 3)
    assert pd.isna(s1["klg_12m"])
    with pytest.raises(QueryError, match="wide trajectories"):
        cohort.trajectories(wide=True, duplicates="all")


def test_state_errors(tmp_path: Path) -> None:
    db = open_database(tmp_path / "empty.sqlite")
    with pytest.raises(DatabaseStateError, match="oai ingest"):
        Cohort(db).knees()
    build_cohort(db)
    with pytest.raises(DatabaseStateError, match="oai label --definition panfilov2022"):
        Cohort(db).knees()
    derive_labels(db)
    assert keys(Cohort(db).knees()) == INCLUDED  # no split yet: role/fold empty
    db.dispose()


# --------------------------------------------------------------------------- CLI


def test_cli_exports_round_trip(cohort_db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    api = Cohort(cohort_db).knees(include_excluded=True)
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / f"cohort.{fmt}"
        res = runner.invoke(app, ["--db", cohort_db.url, "cohort", "--include-excluded", "--out", str(out)])
        assert res.exit_code == 0, res.output
        back = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](out)
        assert list(back.columns) == list(KNEE_COLUMNS)
        assert len(back) == len(api) == len(EXPECTED)
        for col in ("knee_id", "subject_id", "kl_baseline", "progression_month", "fold"):
            assert [None if pd.isna(v) else int(v) for v in back[col]] == [
                None if pd.isna(v) else int(v) for v in api[col]
            ], (fmt, col)
        for col in ("side", "site", "sex", "label", "exclusion", "role"):
            assert [None if pd.isna(v) else v for v in back[col]] == [None if pd.isna(v) else v for v in api[col]], (
                fmt,
                col,
            )
        assert back["bmi"].tolist()[:3] == pytest.approx(api["bmi"].tolist()[:3], nan_ok=True)


def test_cli_filters_and_json_stdout(cohort_db: Database) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "--db",
            cohort_db.url,
            "cohort",
            "--json",
            "--site",
            "A",
            "--site",
            "B",
            "--age-min",
            "55",
            "--var",
            "V00WOMKPR=3:5",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {(r["subject_id"], r["side"]) for r in rows} == {(S2, "R"), (S6, "L")}
    assert {r["V00WOMKPR"] for r in rows} == {5.0, 3.0}
    res = runner.invoke(
        app,
        [
            "--db",
            cohort_db.url,
            "cohort",
            "--format",
            "csv",
            "--label",
            "fast",
            "--has-sequence",
            "SAG_3D_DESS:0",
            "--kl",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("knee_id,subject_id,side,site,sex,age,bmi,kl_baseline,label,exclusion,")
    assert len(lines) == 2 and f",{S3}," in lines[1]
    res = runner.invoke(app, ["--db", cohort_db.url, "cohort", "--role", "test"])
    assert res.exit_code == 0, res.output
    assert "2 knees" in res.stdout and "definition panfilov2022" in res.stdout
    res = runner.invoke(app, ["--db", cohort_db.url, "cohort", "--trajectories", "--wide", "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert "klg_00m" in res.stdout.splitlines()[0]


def test_cli_errors(cohort_db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--db", cohort_db.url, "cohort", "--format", "parquet"])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["--db", cohort_db.url, "cohort", "--var", "NOPE=1"])
    assert res.exit_code == 2 and "unknown filter(s) ['NOPE']" in res.stderr
    res = runner.invoke(app, ["--db", cohort_db.url, "cohort", "--var", "V00WOMKPR=a:b"])
    assert res.exit_code == 2 and "range ends must be numbers" in res.output
    res = runner.invoke(app, ["--db", str(tmp_path / "new.sqlite"), "cohort"])
    assert res.exit_code == 1 and "oai ingest" in res.stderr


def test_label_split_query_on_each_backend(any_db: Database) -> None:
    build_cohort(any_db)
    derive_labels(any_db)
    split = make_split(any_db, test_sites=("D",), folds=2, seed=0)
    again = make_split(any_db, test_sites=("D",), folds=2, seed=0)
    assert again.split_id == split.split_id and not again.created
    cohort = Cohort(any_db)
    assert keys(cohort.knees()) == INCLUDED
    assert keys(cohort.knees(role="test")) == {(S3, "R"), (S3, "L")}
    assert keys(cohort.knees(V00WOMKPR=(2, 4), sex="f")) == {(S1, "R"), (S1, "L")}
    with pytest.raises(QueryError, match="no subject has this site"):
        cohort.knees(site="A'; DROP TABLE knees; --")
    assert len(cohort.knees(include_excluded=True)) == len(EXPECTED)


def test_a_query_by_role_or_fold_refuses_a_stale_split(any_db: Database) -> None:
    build_cohort(any_db)
    derive_labels(any_db)
    split = make_split(any_db, test_sites=("D",), folds=2, seed=0)
    with any_db.write() as s:  # what a re-ingest records when S1 moves to the held-out site
        assert mark_stale(s, pd.DataFrame({"subject_id": [S1], "site": ["D"], "sex": ["F"]})) == 1
    cohort = Cohort(any_db)
    for filters in ({"role": "train"}, {"fold": 0}, {"role": ["train", "test"], "split": split.split_id}):
        with pytest.raises(
            StaleResultError, match=rf"split {split.split_id} predates changes of subject\(s\) {S1} \(site A -> D\)"
        ):
            cohort.knees(**filters)
    with pytest.raises(StaleResultError, match="Re-run `oai label` and then `oai split`"):
        cohort.trajectories(role="test")
    # nothing depends on the split without a role or fold filter; what was used is explicit
    selection = cohort.select()
    assert keys(selection.frame) == INCLUDED
    assert (selection.provenance.definition, selection.provenance.split_id) == ("panfilov2022", split.split_id)
    assert selection.volumes is None


def test_trajectories_first_graded_skips_a_missing_first_reading(tmp_path: Path) -> None:
    db = open_database(tmp_path / "graded.sqlite")
    with db.write() as s:
        add_subject(s, S1, site="A", sex="F", age=55.0, bmi=25.0)
        # at 24 months the first row in file order is a technical failure, the second a KL2
        add_knee(s, S1, "R", {0: 1, 3: [(".T", 500), (2, 600)], 10: 2})
    derive_labels(db)
    cohort = Cohort(db)
    first = cohort.trajectories(wide=True, include_excluded=True).iloc[0]
    graded = cohort.trajectories(wide=True, include_excluded=True, duplicates="first_graded").iloc[0]
    assert pd.isna(first["klg_24m"])
    assert graded["klg_24m"] == 2
    assert (first["klg_00m"], first["klg_96m"]) == (graded["klg_00m"], graded["klg_96m"]) == (1, 2)
    db.dispose()
