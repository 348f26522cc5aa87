"""Matched case-control cohorts: exact matching on categories, caliper matching on numbers.

``match(knees, MatchSpec.parse("label=fast|slow", "kl_baseline,sex,bmi:2.5,age:5", ratio=2))``
pairs every case knee (here: label fast or slow) with up to ``ratio`` control knees (every other
knee of ``knees`` with a value in the case column) under these rules:

- exact: a control has the case's value of every variable named without a width;
- caliper: ``|control - case| <= width`` for every variable named ``name:width``;
- without replacement: a control serves one case; never a knee of the case's own subject (its
  other knee would match sex, age and BMI trivially and is not independent of it);
- greedy nearest neighbour in rounds: cases in an order drawn with ``seed`` each take their
  nearest free control (distance: the caliper differences in widths, Euclidean; ties broken by a
  control order drawn with the same seed), then each takes a second, up to ``ratio``. The same
  knees, spec and seed give the same matched sets.

scikit-learn's ``NearestNeighbors`` (Chebyshev radius 1 on the differences in widths) finds the
controls inside every caliper; the rules themselves are checked on the raw values here.

Cases matched with fewer than ``ratio`` controls keep the ones they got; a case with none leaves
the cohort. Both are listed in ``unmatched`` with the reason. ``balance`` gives each variable's
standardised mean difference between cases and controls before matching (all of them) and after
(matched; a control weighted 1/k in a set of k controls, so sets count equally): Cohen's d with the
groups' own SDs for numbers, Yang & Dalton's for categories (tableone's definitions).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from oaicohort.cohort.balance import smd_categorical, smd_continuous, stratum_key
from oaicohort.cohort.baseline import CATEGORICAL_BUILT_IN
from oaicohort.cohort.export import json_safe
from oaicohort.cohort.variables import QueryError, QueryStateError

log = logging.getLogger(__name__)

CASE, CONTROL = "case", "control"
BALANCE_VARIABLES = ("age", "sex", "bmi", "site", "kl_baseline")
# a caliper value is compared on the raw numbers; this only widens the neighbour search so that a
# difference equal to the width, rounded up by the division, is still looked at
_SEARCH_SLACK = 1e-9


@dataclass(frozen=True)
class MatchVariable:
    """A variable matched exactly (``caliper`` None) or within ``caliper``."""

    name: str
    caliper: float | None = None

    @property
    def rule(self) -> str:
        return "exact" if self.caliper is None else f"±{self.caliper:g}"


@dataclass(frozen=True)
class MatchSpec:
    """Who the cases are (``column`` in ``values``), what they are matched on, how many controls."""

    column: str
    values: tuple[str, ...]
    on: tuple[MatchVariable, ...]
    ratio: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.column or not self.values or any(not v for v in self.values):
            raise QueryError(f"--match {self.column}={'|'.join(self.values)}: expected COLUMN=VALUE[|VALUE...]")
        if not self.on:
            raise QueryError("--on: name the variables to match on, e.g. kl_baseline,sex,bmi:2.5,age:5")
        names = [v.name for v in self.on]
        if len(set(names)) != len(names):
            raise QueryError(f"--on {','.join(names)}: a variable is named twice")
        if self.column in names:
            raise QueryError(f"--on {self.column}: the cases are chosen by it, so no control could match")
        for v in self.on:
            if v.caliper is not None and not (v.caliper > 0 and np.isfinite(v.caliper)):
                raise QueryError(f"--on {v.name}:{v.caliper:g}: a caliper width must be a positive number")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int) or self.ratio < 1:
            raise QueryError(f"--ratio {self.ratio}: expected a whole number of controls per case, 1 or more")

    @classmethod
    def parse(cls, cases: str, on: str, *, ratio: int = 1, seed: int = 0) -> MatchSpec:
        """From ``COLUMN=V1|V2`` and ``VAR,VAR:WIDTH,...`` (the CLI's ``--match`` and ``--on``)."""
        column, sep, values = cases.partition("=")
        if not sep:
            raise QueryError(f"--match {cases}: expected COLUMN=VALUE[|VALUE...], e.g. label=fast|slow")
        variables = []
        for item in (part.strip() for part in on.split(",")):
            if not item:
                raise QueryError(f"--on {on}: an empty variable name")
            name, sep, width = item.rpartition(":")
            if not sep:
                variables.append(MatchVariable(item))
                continue
            try:
                variables.append(MatchVariable(name.strip(), float(width)))
            except ValueError:
                raise QueryError(f"--on {item}: expected NAME or NAME:WIDTH with a number") from None
        return cls(column.strip(), tuple(v.strip() for v in values.split("|")), tuple(variables), ratio, seed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "values": list(self.values), "on": [asdict(v) for v in self.on]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MatchSpec:
        on = tuple(MatchVariable(v["name"], v["caliper"]) for v in data["on"])
        return cls(data["column"], tuple(data["values"]), on, int(data["ratio"]), int(data["seed"]))

    def describe(self) -> str:
        on = ", ".join(f"{v.name} {v.rule}" for v in self.on)
        return f"{self.column} {'/'.join(self.values)} 1:{self.ratio} on {on} (seed {self.seed})"


@dataclass
class MatchResult:
    """``cohort``: the matched knees (the input's columns + ``match_role``, ``matched_set``);
    ``pairs``: matched_set, case_knee_id, control_knee_id, distance; ``unmatched``: cases with
    fewer than ``ratio`` controls (subject_id, side, knee_id, controls, reason); ``balance``:
    variable, rule, smd_before, smd_after."""

    spec: MatchSpec
    cohort: pd.DataFrame
    pairs: pd.DataFrame
    unmatched: pd.DataFrame
    balance: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # strict JSON (the database's JSON column on PostgreSQL takes no NaN or Infinity)
        return json_safe(
            {
                "spec": self.spec.to_dict(),
                "counts": dict(self.counts),
                "balance": self.balance.to_dict("records"),
                "unmatched": self.unmatched.to_dict("records"),
            }
        )


# --------------------------------------------------------------------------- who is a case


def _is_case(column: pd.Series, values: tuple[str, ...]) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        try:
            wanted = [float(v) for v in values]
        except ValueError:
            raise QueryError(f"--match {column.name}: {'|'.join(values)} are not numbers") from None
        return column.astype(float).isin(wanted)
    return column.astype(object).map(lambda v: None if pd.isna(v) else str(v)).isin(values)


# --------------------------------------------------------------------------- the search


def _candidates(
    case_x: np.ndarray, control_x: np.ndarray, case_raw: np.ndarray, control_raw: np.ndarray, widths: np.ndarray
) -> list[list[tuple[float, int]]]:
    """Per case: (distance, control index) of the controls inside every caliper."""
    if widths.size == 0:
        return [[(0.0, j) for j in range(len(control_x))] for _ in range(len(case_x))]
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(radius=1.0 + _SEARCH_SLACK, metric="chebyshev").fit(control_x)
    _, found = search.radius_neighbors(case_x, return_distance=True)
    out = []
    for i, idx in enumerate(found):
        inside = np.all(np.abs(control_raw[idx] - case_raw[i]) <= widths, axis=1)  # the rule, on raw values
        idx = idx[inside]
        distance = np.sqrt(((control_x[idx] - case_x[i]) ** 2).sum(axis=1))
        out.append(list(zip(distance.tolist(), idx.tolist())))
    return out


def match(knees: pd.DataFrame, spec: MatchSpec) -> MatchResult:
    """Match the cases of ``knees`` to controls under ``spec`` (see the module docstring)."""
    columns = [spec.column, *(v.name for v in spec.on)]
    missing = [c for c in columns if c not in knees.columns]
    if missing:
        raise QueryError(f"matching: no column {', '.join(missing)} in the cohort (ask for a variable with --var)")
    for v in spec.on:
        if v.caliper is not None and not pd.api.types.is_numeric_dtype(knees[v.name]):
            raise QueryError(f"--on {v.name}:{v.caliper:g}: a caliper needs a numeric variable; match it exactly")
    frame = knees.reset_index(drop=True)
    has_value = frame[spec.column].notna()
    is_case = _is_case(frame[spec.column], spec.values) & has_value
    cases = np.flatnonzero(is_case.to_numpy())
    controls = np.flatnonzero((~is_case & has_value).to_numpy())
    if len(cases) == 0:
        raise QueryStateError(f"--match {spec.column}={'|'.join(spec.values)}: no knee of the cohort is a case")
    exact = [v.name for v in spec.on if v.caliper is None]
    caliper = [v for v in spec.on if v.caliper is not None]
    widths = np.array([v.caliper for v in caliper], dtype=float)
    raw = frame[[v.name for v in caliper]].astype(float).to_numpy() if caliper else np.zeros((len(frame), 0))
    complete = frame[[v.name for v in spec.on]].notna().all(axis=1).to_numpy()

    rng = np.random.default_rng(spec.seed)
    case_order = cases[rng.permutation(len(cases))]
    control_rank = np.empty(len(frame), dtype=np.int64)
    control_rank[controls] = rng.permutation(len(controls))
    strata_of = frame[exact].map(stratum_key).agg("|".join, axis=1) if exact else pd.Series("", index=frame.index)
    eligible_controls = controls[complete[controls]]
    by_stratum = {
        key: idx.to_numpy()
        for key, idx in pd.Series(eligible_controls).groupby(strata_of.to_numpy()[eligible_controls])
    }

    subject = frame["subject_id"].to_numpy()
    reasons: dict[int, str] = {}
    options: dict[int, list[int]] = {}
    for case in case_order[~complete[case_order]]:
        absent = [v.name for v in spec.on if pd.isna(frame.at[case, v.name])]
        reasons[int(case)] = f"missing {', '.join(absent)}"
    ready = case_order[complete[case_order]]
    for key, group in pd.Series(ready).groupby(strata_of.to_numpy()[ready], sort=False):
        stratum = group.to_numpy()
        pool = by_stratum.get(key, np.array([], dtype=np.int64))
        found = (
            _candidates(raw[stratum] / widths, raw[pool] / widths, raw[stratum], raw[pool], widths) if len(pool) else []
        )
        for i, case in enumerate(stratum):
            others = pool[subject[pool] != subject[case]]
            if len(others) == 0:
                where = ", ".join(f"{n} {stratum_key(frame.at[case, n])}" for n in exact) or "any value"
                reasons[int(case)] = f"no control with {where}"
                continue
            fits = [(d, j) for d, j in found[i] if subject[pool[j]] != subject[case]]
            if not fits:
                calipers = ", ".join(f"{v.name} {v.rule}" for v in caliper)
                same = f"the same {', '.join(exact)}" if exact else "the cohort"
                reasons[int(case)] = f"no control within {calipers} among the {len(others)} of {same}"
                continue
            ranked = sorted(fits, key=lambda dj: (round(dj[0], 12), control_rank[pool[dj[1]]]))
            options[int(case)] = [int(pool[j]) for _, j in ranked]

    used: set[int] = set()
    chosen: dict[int, list[int]] = {case: [] for case in options}
    for _round in range(spec.ratio):
        for case in case_order:
            if int(case) not in options:
                continue
            free = next((c for c in options[int(case)] if c not in used), None)
            if free is not None:
                used.add(free)
                chosen[int(case)].append(free)
    return _result(frame, spec, case_order, chosen, options, reasons, raw, widths)


def _result(
    frame: pd.DataFrame,
    spec: MatchSpec,
    case_order: np.ndarray,
    chosen: dict[int, list[int]],
    options: dict[int, list[int]],
    reasons: dict[int, str],
    raw: np.ndarray,
    widths: np.ndarray,
) -> MatchResult:
    pairs, short = [], []
    matched_set = np.full(len(frame), -1, dtype=np.int64)
    role = np.full(len(frame), None, dtype=object)
    set_id = 0
    for case in case_order:
        case = int(case)
        got = chosen.get(case, [])
        if len(got) < spec.ratio:
            fit = len(options.get(case, []))
            reason = reasons.get(case) or f"{fit} control(s) fit the rules" + (
                f"; {fit - len(got)} of them went to other cases first" if len(got) < fit else ""
            )
            short.append((case, len(got), reason))
        if not got:
            continue
        set_id += 1
        matched_set[[case, *got]] = set_id
        role[case] = CASE
        role[got] = CONTROL
        for control in got:
            d = float(np.sqrt((((raw[control] - raw[case]) / widths) ** 2).sum())) if widths.size else 0.0
            pairs.append((set_id, int(frame.at[case, "knee_id"]), int(frame.at[control, "knee_id"]), d))
    keep = matched_set > 0
    cohort = frame[keep].assign(match_role=role[keep], matched_set=matched_set[keep])
    cohort = cohort.sort_values(["matched_set", "match_role", "subject_id", "side"], kind="stable").reset_index(
        drop=True
    )
    cohort.attrs = dict(frame.attrs)
    unmatched = pd.DataFrame(
        [
            (int(frame.at[c, "subject_id"]), frame.at[c, "side"], int(frame.at[c, "knee_id"]), n, why)
            for c, n, why in short
        ],
        columns=["subject_id", "side", "knee_id", "controls", "reason"],
    ).sort_values(["subject_id", "side"], kind="stable", ignore_index=True)
    weights = _weights(cohort)
    balance = _balance(frame, cohort, weights, spec)
    counts = {
        "cases": int(len(case_order)),
        "controls_available": int(len(frame) - len(case_order) - int(frame[spec.column].isna().sum())),
        "cases_matched": int(set_id),
        "cases_fully_matched": int(sum(len(g) == spec.ratio for g in chosen.values())),
        "cases_unmatched": int(len(case_order) - set_id),
        "controls_matched": int(len(pairs)),
    }
    result = MatchResult(
        spec,
        cohort,
        pd.DataFrame(pairs, columns=["matched_set", "case_knee_id", "control_knee_id", "distance"]),
        unmatched,
        balance,
        counts,
    )
    cohort.attrs["matching"] = result.to_dict()
    log.info("matching %s: %s", spec.describe(), counts)
    return result


# --------------------------------------------------------------------------- balance


def _weights(cohort: pd.DataFrame) -> np.ndarray:
    """Case 1; a control 1/k in a set with k controls."""
    k = cohort.groupby("matched_set")["match_role"].transform(lambda r: (r == CONTROL).sum()).to_numpy()
    return np.where(cohort["match_role"].to_numpy() == CASE, 1.0, 1.0 / np.maximum(k, 1))


def _balance(frame: pd.DataFrame, cohort: pd.DataFrame, weights: np.ndarray, spec: MatchSpec) -> pd.DataFrame:
    rules = {v.name: v.rule for v in spec.on}
    names = [*rules, *(b for b in BALANCE_VARIABLES if b not in rules and b in frame.columns and b != spec.column)]
    is_case = _is_case(frame[spec.column], spec.values) & frame[spec.column].notna()
    before_case, before_ctrl = frame[is_case], frame[~is_case & frame[spec.column].notna()]
    after_case = (cohort["match_role"] == CASE).to_numpy()
    rows = []
    for name in names:
        categorical = (
            name in CATEGORICAL_BUILT_IN
            or (rules.get(name) == "exact")
            or not pd.api.types.is_numeric_dtype(frame[name])
        )
        if categorical:
            before = smd_categorical(before_case[name], before_ctrl[name])
            after = smd_categorical(
                cohort.loc[after_case, name], cohort.loc[~after_case, name], weights[after_case], weights[~after_case]
            )
        else:
            values = cohort[name].astype(float).to_numpy()
            before = smd_continuous(
                before_case[name].astype(float).to_numpy(), before_ctrl[name].astype(float).to_numpy()
            )
            after = smd_continuous(values[after_case], values[~after_case], weights[after_case], weights[~after_case])
        rows.append((name, rules.get(name, "not matched"), before, after))
    return pd.DataFrame(rows, columns=["variable", "rule", "smd_before", "smd_after"])


__all__ = ["CASE", "CONTROL", "MatchResult", "MatchSpec", "MatchVariable", "match"]
