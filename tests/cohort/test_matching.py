"""Matched case-control cohorts (issue 23): the exact, caliper, ratio and no-replacement rules on
every pair, determinism, balance, unmatched reasons, saving and re-checking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.balance import smd_categorical, smd_continuous
from oaicohort.cohort.matching import MatchSpec, match
from oaicohort.cohort.query import Cohort, QueryError
from oaicohort.cohort.saved import save_cohort
from oaicohort.cohort.saved_check import check_saved
from oaicohort.db import Database

FNIH = MatchSpec.parse("label=fast|slow", "kl_baseline,sex,bmi:2.5,age:5", ratio=2, seed=0)


def _check_rules(knees: pd.DataFrame, result: object, spec: MatchSpec) -> None:
    """Every pair obeys every rule; no control twice; ratio; the cases and only them are cases."""
    by_id = knees.set_index("knee_id")
    pairs = result.pairs  # type: ignore[attr-defined]
    cohort = result.cohort  # type: ignore[attr-defined]
    assert pairs["control_knee_id"].is_unique  # without replacement
    assert set(pairs["control_knee_id"]).isdisjoint(pairs["case_knee_id"])
    for r in pairs.itertuples(index=False):
        case, control = by_id.loc[r.case_knee_id], by_id.loc[r.control_knee_id]
        assert case["label"] in spec.values and control["label"] not in spec.values
        assert case["subject_id"] != control["subject_id"]
        for v in spec.on:
            if v.caliper is None:
                assert case[v.name] == control[v.name], (r, v.name)
            else:
                assert abs(float(case[v.name]) - float(control[v.name])) <= v.caliper, (r, v.name)
    per_case = pairs.groupby("case_knee_id").size()
    assert per_case.max() <= spec.ratio
    short = set(result.unmatched["knee_id"])  # type: ignore[attr-defined]
    assert set(per_case[per_case < spec.ratio].index) <= short  # every short case is listed
    assert set(cohort.loc[cohort["match_role"] == "case", "knee_id"]) == set(per_case.index)
    assert set(cohort.loc[cohort["match_role"] == "control", "knee_id"]) == set(pairs["control_knee_id"])
    sets = cohort.groupby("matched_set")["match_role"].agg(lambda r: (r == "case").sum())
    assert (sets == 1).all()  # one case per matched set


def test_fnih_style_matching_on_the_synthetic_release(synthetic_db: Database) -> None:
    knees = Cohort(synthetic_db).knees()
    result = match(knees, FNIH)
    _check_rules(knees, result, FNIH)
    counts = result.counts
    assert counts["cases"] == int(knees["label"].isin(["fast", "slow"]).sum())
    assert counts["cases_matched"] + counts["cases_unmatched"] == counts["cases"]
    assert counts["cases_matched"] > 0.85 * counts["cases"]
    balance = result.balance.set_index("variable")
    for name in ("kl_baseline", "sex", "bmi", "age"):
        assert abs(balance.loc[name, "smd_after"]) < 0.1, balance
    assert balance.loc["kl_baseline", "smd_before"] > 0.3  # progressors have higher baseline KLG
    assert balance.loc["kl_baseline", "smd_after"] == balance.loc["sex", "smd_after"] == 0.0  # exact
    assert balance.loc["site", "rule"] == "not matched"
    # the API and the query delegate agree; the same seed gives the same sets, another seed others
    again = Cohort(synthetic_db).match(FNIH)
    assert again.pairs.equals(result.pairs)
    other = match(knees, MatchSpec.parse("label=fast|slow", "kl_baseline,sex,bmi:2.5,age:5", ratio=2, seed=1))
    _check_rules(knees, other, other.spec)
    assert not other.pairs.equals(result.pairs)


def test_balance_numbers_by_hand(synthetic_db: Database) -> None:
    knees = Cohort(synthetic_db).knees()
    result = match(knees, FNIH)
    cases = knees[knees["label"].isin(["fast", "slow"])]
    controls = knees[knees["label"] == "none"]
    bmi = result.balance.set_index("variable").loc["bmi"]
    d = (cases["bmi"].mean() - controls["bmi"].mean()) / np.sqrt((cases["bmi"].var() + controls["bmi"].var()) / 2)
    assert bmi["smd_before"] == pytest.approx(d)
    # after: a control weighs 1/k in a set of k controls
    cohort = result.cohort
    k = cohort.groupby("matched_set")["match_role"].transform(lambda r: (r == "control").sum())
    w = np.where(cohort["match_role"] == "case", 1.0, 1.0 / k)
    ctrl = (cohort["match_role"] == "control").to_numpy()
    x, wc = cohort.loc[ctrl, "bmi"].to_numpy(), w[ctrl]
    mean_c = np.average(x, weights=wc)
    var_c = (wc * (x - mean_c) ** 2).sum() / (wc.sum() - (wc**2).sum() / wc.sum())
    xa = cohort.loc[~ctrl, "bmi"]
    assert bmi["smd_after"] == pytest.approx((xa.mean() - mean_c) / np.sqrt((xa.var() + var_c) / 2))
    # binary categories: |p1 - p0| / sqrt((p1 q1 + p0 q0) / 2)
    p1, p0 = (cases["sex"] == "M").mean(), (controls["sex"] == "M").mean()
    expected = abs(p1 - p0) / np.sqrt((p1 * (1 - p1) + p0 * (1 - p0)) / 2)
    assert result.balance.set_index("variable").loc["sex", "smd_before"] == pytest.approx(expected)
    assert smd_categorical(["a", "b"], ["a", "b"]) == 0.0
    assert np.isnan(smd_continuous(np.array([1.0]), np.array([1.0, 2.0])))


def test_unmatched_cases_and_their_reasons() -> None:
    knees = pd.DataFrame(
        {
            "knee_id": range(1, 9),
            "subject_id": [1, 1, 2, 3, 4, 5, 6, 7],
            "side": ["R", "L", "R", "R", "R", "R", "R", "R"],
            "label": ["fast", "none", "fast", "fast", "none", "none", "slow", "none"],
            "sex": ["F", "F", "M", "F", "F", "F", "M", "M"],
            "bmi": [25.0, 25.0, 30.0, 40.0, 26.0, 27.5, np.nan, 31.0],
        }
    )
    spec = MatchSpec.parse("label=fast|slow", "sex,bmi:2.5", ratio=2, seed=0)
    result = match(knees, spec)
    _check_rules(knees, result, spec)
    reasons = dict(zip(result.unmatched["knee_id"], zip(result.unmatched["controls"], result.unmatched["reason"])))
    assert reasons[7] == (0, "missing bmi")
    assert reasons[4] == (0, "no control within bmi ±2.5 among the 3 of the same sex")  # bmi 40
    # knee 1 (F, 25): its own subject's knee 2 is never its control; 26 and 27.5 are within 2.5
    assert set(result.pairs.loc[result.pairs["case_knee_id"] == 1, "control_knee_id"]) == {5, 6}
    assert reasons[3] == (1, "1 control(s) fit the rules")  # M, 30: only knee 8 (31)
    assert 1 not in reasons  # fully matched
    # a caliper exactly at its width is inside
    edge = match(
        knees.assign(bmi=[25.0, 25.0, 30.0, 40.0, 27.5, 99.0, 1.0, 1.0]), MatchSpec.parse("label=fast", "bmi:2.5")
    )
    assert edge.pairs[edge.pairs["case_knee_id"] == 1]["control_knee_id"].tolist() == [5]


@pytest.mark.parametrize(
    ("cases", "on", "ratio", "message"),
    [
        ("label", "sex", 1, "expected COLUMN=VALUE"),
        ("label=fast", "", 1, "empty variable name"),
        ("label=fast", "bmi:x", 1, "NAME:WIDTH with a number"),
        ("label=fast", "bmi:-1", 1, "positive number"),
        ("label=fast", "sex,sex", 1, "named twice"),
        ("label=fast", "label", 1, "the cases are chosen by it"),
        ("label=fast", "sex", 0, "--ratio 0"),
    ],
)
def test_bad_specs(cases: str, on: str, ratio: int, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        MatchSpec.parse(cases, on, ratio=ratio)


def test_bad_columns(synthetic_db: Database) -> None:
    knees = Cohort(synthetic_db).knees()
    with pytest.raises(QueryError, match="no column nope"):
        match(knees, MatchSpec.parse("label=fast", "nope"))
    with pytest.raises(QueryError, match="a caliper needs a numeric variable"):
        match(knees, MatchSpec.parse("label=fast", "sex:1"))
    with pytest.raises(QueryError, match="no knee of the cohort is a case"):
        match(knees, MatchSpec.parse("label=never", "sex"))


def test_saved_matched_cohort_rechecks_the_same(synthetic_db: Database) -> None:
    frame = save_cohort(synthetic_db, "fnih_like", match=FNIH, replace=True)
    check = check_saved(synthetic_db, "fnih_like")
    assert check.same and check.saved_knees == len(frame) == check.current_knees
    assert check.matching is not None and check.matching["balance"] == check.current_matching["balance"]
    assert check.matching["spec"] == FNIH.to_dict() and check.notes == []
    assert {"match_role", "matched_set"} <= set(frame.columns)


def test_cli_match_save_and_saved(synthetic_db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--db", synthetic_db.url, "cohort", "-d", "panfilov2022", "--match", "label=fast|slow"]
    args += ["--on", "kl_baseline,sex,bmi:2.5,age:5", "--ratio", "2", "--seed", "0"]
    res = runner.invoke(app, [*args, "--save", "fnih_cli", "--replace", "--json", "--flow", str(tmp_path / "m.dot")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    api = Cohort(synthetic_db).match(FNIH)
    assert out["match"]["balance"] == api.to_dict()["balance"] and out["match"]["counts"] == api.counts
    assert out["flow"]["matched"]["knees"] == len(api.cohort)
    assert out["flow"]["not_matched"]["knees"] == out["flow"]["included"]["knees"] - len(api.cohort)
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--saved", "fnih_cli"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "the same" in text and "Balance (standardised mean differences)" in text
    assert f"{api.counts['cases_unmatched']} case(s) unmatched" in text
    # the listing of a matched cohort, to a file
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    listed = pd.read_csv(tmp_path / "m.csv")
    assert listed[["knee_id", "match_role", "matched_set"]].equals(api.cohort[["knee_id", "match_role", "matched_set"]])
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--match", "label=fast"])
    assert res.exit_code == 2 and "--match needs --on" in res.stderr
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--ratio", "2"])
    assert res.exit_code == 2 and "give --match" in res.stderr


def test_saved_matched_cohort_on_each_backend(db: Database, tmp_path: Path) -> None:
    from oaicohort.cohort.labels import derive_labels
    from oaicohort.ingest.run import ingest_release
    from tests.helpers.study_release import S1, S2, S3, S4, S6, write_study_release

    ingest_release(db, write_study_release(tmp_path / "release"))
    derive_labels(db)
    spec = MatchSpec.parse("label=fast|slow", "sex", ratio=1, seed=3)
    frame = save_cohort(db, "small_matched", match=spec)
    knees = Cohort(db).knees()
    result = match(knees, spec)
    _check_rules(knees, result, spec)
    # women: S1L and S3L take each other's subject's right knee; one male control (S2L) for three
    # male cases, and S2R may not take its own subject's knee
    assert len(result.pairs) == 3 and {S1, S3} <= set(frame.loc[frame["match_role"] == "case", "subject_id"])
    reasons = dict(zip(result.unmatched["subject_id"], result.unmatched["reason"]))
    assert reasons[S2] == "no control with sex M" and len(reasons) == 2 and set(reasons) <= {S2, S4, S6}
    check = check_saved(db, "small_matched")
    assert check.same and check.matching == result.to_dict() == check.current_matching


def test_cli_matches_on_a_variable_given_with_var(tmp_path: Path) -> None:
    from oaicohort.cohort.labels import derive_labels
    from oaicohort.db import open_database
    from oaicohort.ingest.run import ingest_release
    from tests.helpers.study_release import VARIABLES, write_study_release

    db = open_database(tmp_path / "study.sqlite")
    ingest_release(db, write_study_release(tmp_path / "release"), variables=VARIABLES)
    derive_labels(db)
    args = ["--db", db.url, "cohort", "--var", "INJ@P01", "--match", "label=fast|slow", "--on", "INJ@P01,sex"]
    res = CliRunner().invoke(app, [*args, "--json", "--table1", str(tmp_path / "t.csv"), "--by", "match_role"])
    db.dispose()
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["match"]["spec"]["on"] == [{"name": "INJ@P01", "caliper": None}, {"name": "sex", "caliper": None}]
    assert out["match"]["balance"][0]["variable"] == "INJ@P01" and out["match"]["balance"][0]["smd_after"] == 0.0
    groups = [c for c in pd.read_csv(tmp_path / "t.csv").columns if c in ("case", "control")]
    assert groups == ["case", "control"]
