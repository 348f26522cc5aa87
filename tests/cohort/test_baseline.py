"""The baseline characteristics table (issue 23): every cell against a pandas computation,
missing values shown, labels from the data dictionary, the files, and the CLI."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.baseline import baseline_table
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort, QueryError
from oaicohort.db import Database
from oaicohort.ingest.run import ingest_release
from tests.helpers.study_release import VARIABLES, write_study_release

TITLES = {"age": "Age (years)", "bmi": "BMI (kg/m²)", "sex": "Sex", "site": "Site", "kl_baseline": "Baseline KLG"}


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _smd_numbers(a: pd.Series, b: pd.Series) -> float:
    a, b = a.dropna().astype(float), b.dropna().astype(float)
    return (b.mean() - a.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)


def _smd_levels(a: pd.Series, b: pd.Series, levels: list[str]) -> float:
    """Yang & Dalton, written out: T = p1 - p0 (first level dropped), S = (S1 + S0) / 2."""
    p = [np.array([(s.dropna() == lv).mean() for lv in levels])[1:] for s in (a, b)]
    cov = [np.diag(q) - np.outer(q, q) for q in p]
    t = p[1] - p[0]
    return float(np.sqrt(t @ np.linalg.inv((cov[0] + cov[1]) / 2) @ t))


def _expected(data: pd.DataFrame, by: str, groups: list[str], continuous: list[str], categorical: list[str]) -> dict:
    """(title, level) -> {column: text}, every cell of the table computed with pandas."""
    parts = {g: data[data[by] == g] for g in groups}
    out: dict[tuple[str, str], dict[str, str]] = {}
    out[("knees", "")] = {"Overall": str(len(data)), **{g: str(len(parts[g])) for g in groups}}
    out[("subjects", "")] = {
        "Overall": str(data["subject_id"].nunique()),
        **{g: str(parts[g]["subject_id"].nunique()) for g in groups},
    }
    for col in continuous:
        values = data[col].dropna()
        skewed = len(values) >= 20 and stats.normaltest(values).pvalue <= 0.001

        def summary(s: pd.Series, skewed: bool = skewed) -> str:
            s = s.dropna().astype(float)
            if skewed:
                q1, med, q3 = np.percentile(s, [25, 50, 75])
                return f"{_fmt(med)} [{_fmt(q1)}, {_fmt(q3)}]"
            return f"{_fmt(s.mean())} ± {_fmt(s.std(ddof=1))}"

        title = f"{TITLES.get(col, col)}, {'median [IQR]' if skewed else 'mean ± SD'}"
        row = {"Missing": str(int(data[col].isna().sum())), "Overall": summary(data[col])}
        row |= {g: summary(parts[g][col]) for g in groups}
        row |= {
            f"SMD ({a},{b})": f"{_smd_numbers(parts[a][col], parts[b][col]):.3f}"
            for a, b in itertools.combinations(groups, 2)
        }
        out[(title, "")] = row
    for col in categorical:
        levels = sorted(data[col].dropna().astype(str).unique())
        title = f"{TITLES.get(col, col)}, n (%)"
        for i, level in enumerate(levels):

            def cell(s: pd.Series, level: str = level) -> str:
                s = s.dropna().astype(str)
                return f"{int((s == level).sum())} ({100 * (s == level).mean():.1f})"

            row = {"Overall": cell(data[col]), **{g: cell(parts[g][col]) for g in groups}}
            if i == 0:
                row["Missing"] = str(int(data[col].isna().sum()))
                for a, b in itertools.combinations(groups, 2):
                    row[f"SMD ({a},{b})"] = (
                        f"{_smd_levels(parts[a][col].astype(object), parts[b][col].astype(object), levels):.3f}"
                    )
            out[(title, level)] = row
    return out


def _cells(table: pd.DataFrame) -> dict[tuple[str, str], dict[str, str]]:
    return {
        (r["variable"], r["level"]): {k: v for k, v in r.items() if k not in ("variable", "level") and v != ""}
        for r in table.to_dict("records")
    }


def test_every_cell_by_label_with_missing_values(synthetic_db: Database) -> None:
    knees = Cohort(synthetic_db).knees()
    rng = np.random.default_rng(1)
    knees.loc[rng.choice(knees.index, 30, replace=False), "age"] = np.nan
    knees.loc[rng.choice(knees.index, 12, replace=False), "sex"] = None
    knees.loc[rng.choice(knees.index, 7, replace=False), "site"] = None
    table = baseline_table(knees)
    assert table.groups == ["none", "fast", "slow"] and table.continuous == ["age", "bmi"]
    data = knees.assign(
        sex=knees["sex"].map({"F": "Female", "M": "Male"}), kl_baseline=knees["kl_baseline"].astype("string")
    )
    expected = _expected(data, "label", ["none", "fast", "slow"], ["age", "bmi"], ["sex", "site", "kl_baseline"])
    got = _cells(table.table)
    assert got == expected
    assert got[("Age (years), median [IQR]", "")]["Missing"] == "30"  # missing values shown
    assert got[("Sex, n (%)", "Female")]["Missing"] == "12" and got[("Site, n (%)", "A")]["Missing"] == "7"
    assert table.nonnormal == [c for c in ("age", "bmi") if stats.normaltest(knees[c].dropna()).pvalue <= 0.001]


def test_by_sex_with_p_values_and_forced_mean(synthetic_db: Database, tmp_path: Path) -> None:
    knees = Cohort(synthetic_db).knees(kl_baseline=[0, 1])
    table = baseline_table(knees, by="sex", pval=True, nonnormal=[])
    assert table.groups == ["Female", "Male"] and "Sex, n (%)" not in set(table.table["variable"])
    data = knees.assign(sex=knees["sex"].map({"F": "Female", "M": "Male"}))
    age = _cells(table.table)[("Age (years), mean ± SD", "")]
    female, male = (data[data["sex"] == s]["age"] for s in ("Female", "Male"))
    assert (
        age["Female"] == f"{female.mean():.1f} ± {female.std():.1f}"
        and age["Male"] == f"{male.mean():.1f} ± {male.std():.1f}"
    )
    welch = stats.ttest_ind(female, male, equal_var=False).pvalue
    assert age["P-Value"] == (f"{welch:.3f}" if welch >= 0.001 else "<0.001") and age["Test"] == "Welch’s T-test"
    labels = _cells(table.table)[("Label, n (%)", "fast")]
    assert (
        labels["Female"]
        == f"{(data[data['sex'] == 'Female']['label'] == 'fast').sum()} ({100 * (data[data['sex'] == 'Female']['label'] == 'fast').mean():.1f})"
    )
    for suffix in ("md", "csv", "html"):
        table.write(tmp_path / f"t.{suffix}")
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("|") and "| Age (years), mean ± SD" in md and "Computed with tableone" in md
    assert pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False).equals(table.table.astype(str))
    assert "<table" in (tmp_path / "t.html").read_text()


def test_dictionary_labels_and_variables_on_each_backend(db: Database, tmp_path: Path) -> None:
    ingest_release(db, write_study_release(tmp_path / "release"), variables=VARIABLES)
    derive_labels(db)
    table = Cohort(db).baseline_table(by="sex", variables=["INJ@P01", "WOMKP@V00"], include_excluded=True)
    cells = _cells(table.table)
    # INJ@P01 is coded (0: No / 1: Yes): its levels are the dictionary's labels, knee by knee
    knees = Cohort(db).knees(include_excluded=True, variables=["INJ@P01", "WOMKP@V00"])
    injured = knees.assign(sex=knees["sex"].map({"F": "Female", "M": "Male"}))
    for sex in ("Female", "Male"):
        part = injured[injured["sex"] == sex]["INJ@P01"].dropna()
        assert cells[("INJ@P01, n (%)", "Yes")][sex] == f"{int((part == 1).sum())} ({100 * (part == 1).mean():.1f})"
        assert cells[("INJ@P01, n (%)", "No")][sex] == f"{int((part == 0).sum())} ({100 * (part == 0).mean():.1f})"
    # WOMKP@V00 is missing on S4R (a missing-form code) and shown so
    pain = cells[("WOMKP@V00, mean ± SD", "")]
    assert pain["Missing"] == str(int(knees["WOMKP@V00"].isna().sum())) == "1"
    # a dictionary of OAI's missing codes only (".: Missing Form") does not make WOMKP categorical
    assert table.categorical == ["site", "kl_baseline", "label", "INJ@P01"]
    assert table.continuous == ["age", "bmi", "WOMKP@V00"]


def test_cli_table1_and_errors(synthetic_db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "baseline.md"
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--table1", str(out), "--pval"])
    assert res.exit_code == 0, res.output
    api = Cohort(synthetic_db).baseline_table(pval=True)
    assert out.read_text() == api.to_markdown()
    assert res.stdout == ""  # no knee listing unless --out/--format asks for one
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--table1", str(tmp_path / "t.csv"), "--by", "nope"])
    assert res.exit_code == 2 and "--by nope: not a column of the cohort" in res.stderr
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--table1", str(tmp_path / "t.xlsx")])
    assert res.exit_code == 2
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--by", "sex"])
    assert res.exit_code == 2 and "--by groups --table1 or --km" in res.stderr
    with pytest.raises(QueryError, match="no knees"):
        baseline_table(Cohort(synthetic_db).knees(kl_baseline=4, site="A", sex="F", age=(18, 19)))
