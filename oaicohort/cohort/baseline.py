"""The baseline characteristics table ("Table 1") of a cohort, by label or any other column.

Computed by the ``tableone`` package (Pollard et al., JAMIA Open 2018; the ``[study]`` extra):
``baseline_table(knees, by="label", variables=["WOMKP@V00"])`` summarises the built-in variables
(age, sex, BMI, site, baseline KLG) and the requested ones, one row per knee of ``knees`` (a
:meth:`~oaicohort.cohort.query.Cohort.knees` result: subject-level variables count once per knee).

- Continuous variables: mean ± SD, or median [IQR] where the distribution is far from normal:
  D'Agostino-Pearson's test (``scipy.stats.normaltest``, the test ``tableone``'s ``normal_test``
  runs) rejects normality at p <= 0.001 on the whole table's values (with 20 values or more;
  fewer cannot be tested and keep mean ± SD). ``nonnormal=`` overrides the choice.
- Categorical variables (sex, site, baseline KLG, coded variables, text): n (%) per level, levels
  named by the data dictionary's labels (``1: Yes`` -> ``Yes``).
- ``Missing``: knees without a value, for every variable; percentages are of knees with one.
- Standardised mean differences for every pair of groups (tableone's: Cohen's d with sample SDs
  for continuous variables, Yang & Dalton's for categorical ones); p-values optional (Welch's t /
  ANOVA, Kruskal-Wallis for median rows, chi-squared or Fisher's exact).
"""

from __future__ import annotations

import itertools
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from oaicohort.cohort import study_extra
from oaicohort.cohort.variables import QueryError, QueryStateError, apply_value_mode
from oaicohort.errors import OAIError
from oaicohort.vocabulary import CLASSES

log = logging.getLogger(__name__)

BUILT_IN = ("age", "sex", "bmi", "site", "kl_baseline")
CATEGORICAL_BUILT_IN = ("sex", "site", "kl_baseline", "label")
TITLES = {
    "age": "Age (years)",
    "sex": "Sex",
    "bmi": "BMI (kg/m²)",
    "site": "Site",
    "kl_baseline": "Baseline KLG",
    "label": "Label",
}
SEX_LABELS = {"F": "Female", "M": "Male"}
NORMALITY_P = 0.001  # tableone's threshold for its non-normality remark
MIN_NORMALITY_N = 20  # tableone tests normality from 20 values on
MISSING_GROUP = "missing"
FORMATS = ("md", "csv", "html")


@dataclass
class BaselineTable:
    """A Table 1: ``table`` has columns variable, level, Missing, Overall, one per group, one
    ``SMD (a,b)`` per pair of groups, and P-Value / Test when asked (cells are text, as printed)."""

    table: pd.DataFrame
    by: str
    groups: list[str]
    continuous: list[str]
    categorical: list[str]
    nonnormal: list[str]
    notes: list[str] = field(default_factory=list)

    def shown(self) -> pd.DataFrame:
        """The table as printed: a variable's title on its first row only."""
        shown = self.table.copy()
        shown.loc[shown["variable"].eq(shown["variable"].shift()), "variable"] = ""
        return shown

    def to_markdown(self) -> str:
        tabulate = study_extra.tabulate("the baseline table").tabulate
        head = ["" if c in ("variable", "level") else c for c in self.table.columns]
        text = tabulate(self.shown().to_numpy().tolist(), headers=head, tablefmt="github", disable_numparse=True)
        lines = [text, "", *self.footnotes()]
        return "\n".join(lines) + "\n"

    def footnotes(self) -> list[str]:
        method = (
            "Computed with tableone. Knee-level: a subject with two knees counts twice. "
            "Percentages are of knees with a value; Missing counts knees without one."
        )
        return [method, *self.notes]

    def write(self, path: str | Path) -> Path:
        """Write as Markdown (``.md``), CSV or HTML, by the file's suffix."""
        out = Path(path)
        fmt = out.suffix.lower().lstrip(".")
        if fmt == "md":
            out.write_text(self.to_markdown(), encoding="utf-8")
        elif fmt == "csv":
            out.write_text(self.table.to_csv(index=False), encoding="utf-8")
        elif fmt == "html":
            notes = "".join(f"<p>{n}</p>\n" for n in self.footnotes())
            out.write_text(self.shown().to_html(index=False, na_rep="") + "\n" + notes, encoding="utf-8")
        else:
            raise OAIError(f"{out}: a baseline table is written as {', '.join('.' + f for f in FORMATS)}")
        return out


def _variable_kinds(
    frame: pd.DataFrame, columns: Sequence[str], dictionary: pd.DataFrame | None
) -> tuple[list[str], list[str]]:
    coded = set()
    if dictionary is not None and len(dictionary):
        # a variable with codes of values (not only OAI's missing codes ".A", ".: Missing Form")
        valued = set(dictionary.loc[~dictionary["code"].astype(str).str.startswith("."), "variable"])
        for name, sources in frame.attrs.get("variables", {}).items():
            if set(sources.values()) & valued:
                coded.add(name)
    continuous, categorical = [], []
    for col in columns:
        values = frame[col]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if col in CATEGORICAL_BUILT_IN or col in coded or not numeric:
            categorical.append(col)
        else:
            continuous.append(col)
    return continuous, categorical


def _non_normal(frame: pd.DataFrame, continuous: Sequence[str]) -> list[str]:
    out = []
    for col in continuous:
        values = frame[col].dropna().astype(float)
        testable = len(values) >= MIN_NORMALITY_N and values.nunique() > 1
        if testable and stats.normaltest(values.to_numpy()).pvalue <= NORMALITY_P:
            out.append(col)
    return out


def _prepared(
    frame: pd.DataFrame, by: str, categorical: Sequence[str], dictionary: pd.DataFrame | None
) -> pd.DataFrame:
    data = frame.copy()
    if dictionary is not None and frame.attrs.get("variables"):
        data = apply_value_mode(frame, "labels", dictionary)
    if "sex" in data:
        data["sex"] = data["sex"].map(SEX_LABELS).where(data["sex"].notna(), None)
    for col in categorical:
        values = data[col]
        if pd.api.types.is_float_dtype(values) and values.dropna().apply(float.is_integer).all():
            values = values.astype("Int64")
        data[col] = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
    data[by] = data[by].astype(object).where(data[by].notna(), MISSING_GROUP).map(str)
    return data


def _label_order(data: pd.DataFrame) -> list[str]:
    present = set(data["label"].dropna())
    return [c for c in CLASSES if c in present] + sorted(present - set(CLASSES))


def _group_order(values: pd.Series, by: str) -> list[str]:
    present = list(dict.fromkeys(values))
    preferred = [*CLASSES, *SEX_LABELS.values()] if by in ("label", "sex") else []
    first = [g for g in preferred if g in present]
    return (
        first
        + sorted(g for g in present if g not in first and g != MISSING_GROUP)
        + ([MISSING_GROUP] if MISSING_GROUP in present else [])
    )


_MEAN_SD = re.compile(r"^(-?[\d.]+) \((-?[\d.]+)\)$")
_MEDIAN_IQR = re.compile(r"^(-?[\d.]+) \[(-?[\d.]+),(-?[\d.]+)\]$")
_NAN = re.compile(r"\bnan\b")


def _cell(value: Any, continuous: bool) -> str:
    """A tableone cell as printed here: a continuous row's ``m (sd)`` as ``m ± sd`` and
    ``med [q1,q3]`` as ``med [q1, q3]``; a statistic of no values as ``-``."""
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    if _NAN.search(text):
        return "-"
    if continuous and (m := _MEAN_SD.match(text)):
        return f"{m[1]} ± {m[2]}"
    if continuous and (m := _MEDIAN_IQR.match(text)):
        return f"{m[1]} [{m[2]}, {m[3]}]"
    return text


def baseline_table(
    knees: pd.DataFrame,
    *,
    by: str = "label",
    variables: Sequence[str] = (),
    dictionary: pd.DataFrame | None = None,
    nonnormal: Sequence[str] | None = None,
    pval: bool = False,
    decimals: int = 1,
) -> BaselineTable:
    """Table 1 of ``knees`` by ``by`` (see the module docstring); ``dictionary`` (the cohort's
    data dictionary) names the levels of coded variables."""
    tableone = study_extra.tableone("the baseline table")
    if by not in knees.columns:
        raise QueryError(f"--by {by}: not a column of the cohort; columns: {', '.join(map(str, knees.columns))}")
    # grouped by anything else, the label is a row of its own (the outcome by exposure)
    outcome = ["label"] if by != "label" and "label" in knees.columns else []
    columns = [c for c in dict.fromkeys([*BUILT_IN, *outcome, *variables]) if c != by]
    unknown = [c for c in columns if c not in knees.columns]
    if unknown:
        raise QueryError(f"baseline table: no column {', '.join(unknown)} in the cohort (ask for it with --var)")
    if knees.empty:
        raise QueryStateError("baseline table: the cohort has no knees")
    continuous, categorical = _variable_kinds(knees, columns, dictionary)
    data = _prepared(knees, by, categorical, dictionary)
    skewed = list(nonnormal) if nonnormal is not None else _non_normal(data, continuous)
    groups = _group_order(data[by], by)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tableone.TableOne(
            data,
            columns=columns,
            categorical=categorical,
            continuous=continuous,
            groupby=by,
            nonnormal=skewed,
            order={by: groups, **({"label": _label_order(data)} if "label" in columns else {})},
            smd=len(groups) > 1,
            pval=pval and len(groups) > 1,
            htest_name=pval and len(groups) > 1,
            missing=True,
            include_null=False,
            overall=True,
            decimals=decimals,
            label_suffix=False,
        )
    for warning in caught:
        # the library's deprecations and numpy's about an empty group (shown as "-") are not the
        # reader's business; tableone's own remarks (a test it could not run) are
        if issubclass(warning.category, DeprecationWarning | FutureWarning | RuntimeWarning):
            log.debug("tableone: %s", warning.message)
        elif (text := " ".join(str(warning.message).split())) not in notes:
            notes.append(text)
    table = result.tableone.copy()
    table.columns = [c[1] if isinstance(c, tuple) else c for c in table.columns]
    table = table.reset_index()
    table.columns = ["variable", "level", *table.columns[2:]]
    table["variable"] = table["variable"].replace({"n": "knees"})
    smd_columns = [f"SMD ({a},{b})" for a, b in itertools.combinations(groups, 2)]
    smd_columns = [c for c in smd_columns if c in table.columns]
    ordered = ["variable", "level", "Missing", "Overall", *groups, *smd_columns]
    ordered += [c for c in ("P-Value", "Test") if c in table.columns]
    table = table[ordered]
    key = table["variable"].replace("", np.nan).ffill()
    stat_columns = ["Overall", *groups]
    for col in table.columns:
        is_stat = col in stat_columns
        table[col] = [_cell(v, is_stat and k in continuous) for v, k in zip(table[col], key)]
    table.insert(0, "key", key)
    table = _with_subjects(table, knees, data, by, groups)
    kinds = set(categorical)
    table["variable"] = [_row_title(k, kinds, skewed) if v else "" for k, v in zip(table["key"], table["variable"])]
    log.info("baseline table by %s: %d groups, non-normal: %s", by, len(groups), skewed)
    return BaselineTable(table.drop(columns=["key"]), by, groups, continuous, categorical, skewed, notes)


def _row_title(key: str, categorical: set[str], skewed: Sequence[str]) -> str:
    if key in ("knees", "subjects"):
        return key
    title = TITLES.get(key, key)
    if key in categorical:
        return f"{title}, n (%)"
    return f"{title}, {'median [IQR]' if key in skewed else 'mean ± SD'}"


def _with_subjects(
    table: pd.DataFrame, knees: pd.DataFrame, data: pd.DataFrame, by: str, groups: list[str]
) -> pd.DataFrame:
    """A ``subjects`` row under ``knees``: distinct subjects overall and per group."""
    row = {c: "" for c in table.columns}
    row.update(key="subjects", variable="subjects", Overall=str(knees["subject_id"].nunique()))
    for g in groups:
        row[g] = str(knees.loc[(data[by] == g).to_numpy(), "subject_id"].nunique())
    at = int(np.flatnonzero(table["key"] == "knees")[0]) + 1
    return pd.concat([table.iloc[:at], pd.DataFrame([row]), table.iloc[at:]], ignore_index=True)


__all__ = ["BUILT_IN", "FORMATS", "BaselineTable", "baseline_table"]
