"""The label algorithm itself: every knee's progression label and exclusion, pure pandas/numpy.

:func:`compute_labels` takes the tables a definition needs (:class:`LabelInputs`) and returns one
row per knee; it touches no database (reading and storing are in :mod:`oaicohort.cohort.labels`).
The rules are documented in :mod:`oaicohort.cohort.definitions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from oaicohort.cohort.definitions import (
    BASELINE_KLG_MISSING,
    BASELINE_NOT_BELOW_INCIDENCE,
    BMI_MISSING,
    IMAGE_FAILED,
    IMAGE_MISSING,
    LOST_TO_FOLLOW_UP,
    NO_BASELINE_DESS,
    NO_BASELINE_READING,
    NO_FOLLOW_UP,
    REPLACED_AT_BASELINE,
    SITE_MISSING,
    LabelDefinitionParams,
    image_reasons,
)
from oaicohort.visits import VISIT_MONTHS, XRAY_VISITS
from oaicohort.vocabulary import EVENT_TYPES, MRI_VIEWS

LABEL_COLUMNS = (
    "knee_id",
    "subject_id",
    "side",
    "kl_baseline",
    "label",
    "exclusion",
    "progression_month",
    "kl_increase",
    "time_months",
    "event_type",
)
# Days per month for placing an Outcomes99 replacement given only in days since enrolment.
DAYS_PER_MONTH = 365.25 / 12
# "KLG 5" stands for a replaced knee: its increase is 5 - KL0 (the reference's convention).
REPLACED_KLG = 5


# --------------------------------------------------------------------------- inputs and result


@dataclass
class LabelInputs:
    """The tables a label definition needs, as plain DataFrames (one SELECT each)."""

    knees: pd.DataFrame  # knee_id, subject_id, side
    readings: (
        pd.DataFrame
    )  # id, knee_id, visit, klg, klg_missing_code, jsn_medial, jsn_lateral, source_row, read_project
    baseline_bmi: pd.DataFrame  # subject_id, bmi (visit 0 rows only)
    baseline_series: pd.DataFrame  # subject_id, side: knees with the baseline DESS series
    replacements: pd.DataFrame  # knee_id, status, at_baseline, visit_after, xray_visit_after, days
    volumes: pd.DataFrame | None = None  # knee_id, status, view (baseline volumes in the store)


# --------------------------------------------------------------------------- the algorithm


# reading_order "project": the rank of a reading project (OAI notes: treat 42 like 37)
PROJECT_RANKS = {15: 0, 37: 1, 42: 1}
OTHER_PROJECTS = 2


def project_rank(read_project: pd.Series) -> np.ndarray:
    """0 for project 15, 1 for 37 and 42, 2 for any other (or none)."""
    return read_project.map(PROJECT_RANKS).fillna(OTHER_PROJECTS).to_numpy(dtype=np.int64)


def first_readings(readings: pd.DataFrame, policy: str, reading_order: str = "project") -> pd.DataFrame:
    """One reading per (knee, visit): the first (``first``), or the first graded one, falling
    back to the first (``first_graded``). "First" is by reading project (``reading_order=
    "project"``): 15, then 37 and 42 (``PROJECT_RANKS``), then the others; within a rank the
    lower project number (a knee-visit read by both 37 and 42, which the real files never have,
    takes 37's, whatever the row order), and only rows of one project by file order. Or by file
    order alone (``"file"``). ``readings`` needs knee_id, visit, klg, source_row and id (and
    read_project for ``project``); the result may carry the helper columns ``_ungraded`` and
    ``_rank``."""
    keys = ["knee_id", "visit"]
    frame = readings.assign(_ungraded=readings["klg"].isna()) if policy == "first_graded" else readings
    rank = ["_rank", "read_project"] if reading_order == "project" else []
    if rank:
        frame = frame.assign(_rank=project_rank(frame["read_project"]))
    order = keys + (["_ungraded"] if policy == "first_graded" else []) + rank + ["source_row", "id"]
    return frame.sort_values(order, kind="stable").drop_duplicates(keys, keep="first")


def disagreeing_knees(readings: pd.DataFrame, column: str = "klg") -> int:
    """Knees with a visit whose readings by different reading projects (42 counted as 37)
    disagree on ``column`` (a missing reading disagrees with a grade)."""
    if readings.empty:
        return 0
    frame = readings.assign(_rank=project_rank(readings["read_project"]), _v=readings[column].astype(float).fillna(-1))
    per = frame.sort_values(["source_row", "id"], kind="stable").drop_duplicates(["knee_id", "visit", "_rank"])
    spread = per.groupby(["knee_id", "visit"])["_v"].nunique()
    return int(spread[spread > 1].index.get_level_values("knee_id").nunique())


def _replacement_months(inputs: LabelInputs, params: LabelDefinitionParams, knee_ids: np.ndarray) -> np.ndarray:
    """Month at which an Outcomes99 knee replacement is first known (NaN: none, or beyond the
    horizon). The visit after the replacement, else the first X-ray visit after it, else the first
    X-ray visit on or after the day of replacement."""
    out = np.full(len(knee_ids), np.nan)
    rep = inputs.replacements
    if rep.empty:
        return out
    rep = rep[rep["status"].eq(1) & ~rep["at_baseline"].eq(True)]
    visit = rep["visit_after"].fillna(rep["xray_visit_after"])
    month = visit.map(lambda v: VISIT_MONTHS.get(int(v), np.nan) if pd.notna(v) else np.nan)
    xray_months = np.array([VISIT_MONTHS[v] for v in XRAY_VISITS], dtype=float)
    days = rep["days"].to_numpy(dtype=float)
    idx = np.searchsorted(xray_months, days / DAYS_PER_MONTH, side="left")
    from_days = np.where(
        np.isnan(days) | (idx >= len(xray_months)), np.nan, xray_months[np.minimum(idx, len(xray_months) - 1)]
    )
    month = month.to_numpy(dtype=float)
    month = np.where(np.isnan(month), from_days, month)
    month = np.where(month <= params.horizon_month, month, np.nan)
    pos = pd.Index(knee_ids).get_indexer(rep["knee_id"].to_numpy())
    keep = pos >= 0
    out[pos[keep]] = month[keep]
    return out


def compute_labels(inputs: LabelInputs, params: LabelDefinitionParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label every knee of ``inputs.knees`` under ``params`` (pure; no database).

    Returns ``(labels, stage1)``: ``labels`` has :data:`LABEL_COLUMNS`; ``stage1`` is the label
    algorithm's own result (knee_id, subject_id, label) before the cohort exclusions.
    """
    knees = inputs.knees.sort_values(["subject_id", "side"], kind="stable").reset_index(drop=True)
    knee_ids = knees["knee_id"].to_numpy()
    subject_ids = knees["subject_id"].to_numpy()
    n = len(knees)
    kidx = pd.Index(knee_ids)
    visits = params.examined_visits
    months = np.array([VISIT_MONTHS[v] for v in visits], dtype=float)

    readings = inputs.readings[inputs.readings["visit"].isin((0, *visits))]
    first = first_readings(readings, params.duplicates, params.reading_order)

    # baseline
    base = first[first["visit"] == 0]
    bpos = kidx.get_indexer(base["knee_id"].to_numpy())
    has_base = np.zeros(n, dtype=bool)
    kl0 = np.full(n, np.nan)
    has_base[bpos[bpos >= 0]] = True
    kl0[bpos[bpos >= 0]] = base["klg"].to_numpy(dtype=float)[bpos >= 0]
    # the graded variable's baseline (KLG itself, or JSN medial/lateral)
    column = params.graded_variable
    g0 = kl0 if column == "klg" else np.full(n, np.nan)
    if column != "klg":
        g0[bpos[bpos >= 0]] = base[column].to_numpy(dtype=float)[bpos >= 0]

    # follow-ups: knees x examined visits
    m = len(visits)
    present = np.zeros((n, m), dtype=bool)
    klg = np.full((n, m), np.nan)
    prosthesis = np.zeros((n, m), dtype=bool)
    follow = first[first["visit"] != 0]
    fpos = kidx.get_indexer(follow["knee_id"].to_numpy())
    vpos = pd.Index(visits).get_indexer(follow["visit"].to_numpy())
    ok = fpos >= 0
    present[fpos[ok], vpos[ok]] = True
    klg[fpos[ok], vpos[ok]] = follow[column].to_numpy(dtype=float)[ok]
    codes = follow["klg_missing_code"].astype("string").str.strip().str.upper()
    prosthesis[fpos[ok], vpos[ok]] = (codes == ".P").fillna(False).to_numpy(dtype=bool)[ok]

    graded = present & ~np.isnan(klg)
    with np.errstate(invalid="ignore"):
        if params.outcome == "incidence":
            increase = graded & (klg >= params.incidence_grade)
        else:
            increase = graded & (klg - g0[:, None] >= params.min_increase)
            if not params.count_0_to_1:
                increase &= klg != 1
    missing = present & np.isnan(klg)
    if params.missing_klg == "progression_proxy":
        replaced = missing
    elif params.missing_klg == "outcomes99":
        replaced = missing & prosthesis
    else:
        replaced = np.zeros_like(missing)
    event = increase | replaced
    has_event = event.any(axis=1)
    j = event.argmax(axis=1)
    rows = np.arange(n)
    month = np.where(has_event, months[j], np.nan)
    # a replaced knee "reaches KLG 5"; JSN has no such convention (no increase recorded)
    replaced_step = REPLACED_KLG - kl0 if column == "klg" else np.full(n, np.nan)
    step = np.where(replaced[rows, j], replaced_step, klg[rows, j] - g0)
    step = np.where(has_event, step, np.nan)

    replaced_first = has_event & replaced[rows, j]
    if params.missing_klg == "outcomes99":
        rep_month = _replacement_months(inputs, params, knee_ids)
        earlier = ~np.isnan(rep_month) & (~has_event | (rep_month <= np.nan_to_num(month, nan=np.inf)))
        month = np.where(earlier, rep_month, month)
        step = np.where(earlier, replaced_step, step)
        has_event |= earlier
        replaced_first |= earlier
    time_months, event_type = _event_times(months, graded, has_event, month, replaced_first)

    if params.non_progressor_requires == "subject_at_last_visit":
        raw_last = inputs.readings[inputs.readings["visit"] == params.last_visit]
        seen = knees.loc[knees["knee_id"].isin(raw_last["knee_id"]), "subject_id"].unique()
        followed = np.isin(subject_ids, seen)
    elif params.non_progressor_requires == "knee_at_last_visit":
        followed = graded[:, -1]
    else:
        followed = np.ones(n, dtype=bool)

    none_or_missing = np.where(followed, "none", None)  # type: ignore[call-overload]  # object array
    label = np.where(has_event, np.where(month < params.fast_before_month, "fast", "slow"), none_or_missing).astype(
        object
    )

    # exclusions, first applicable wins
    conditions: list[tuple[np.ndarray, str]] = [
        (~has_base, NO_BASELINE_READING),
        (np.isnan(kl0), BASELINE_KLG_MISSING),
    ]
    for grade in range(5):
        if grade not in params.baseline_klg_allowed:
            conditions.append((kl0 == grade, f"baseline_klg_{grade}"))
    if column != "klg":
        conditions.append((np.isnan(g0), params.baseline_graded_missing))
    if params.outcome == "incidence":
        conditions.append((g0 >= params.incidence_grade, BASELINE_NOT_BELOW_INCIDENCE))
    if params.time_to_event:  # followed part of the way: censored, not lost
        conditions.append((~has_event & np.isnan(time_months), NO_FOLLOW_UP))
    else:
        conditions.append((~has_event & ~followed, LOST_TO_FOLLOW_UP))
    stage1_excluded = np.logical_or.reduce([c for c, _ in conditions])
    for reason in params.exclusions:
        conditions.append((_cohort_exclusion(reason, inputs, knees), reason))
    if "site" in knees.columns:  # no site: the held-out-site split cannot place the knee
        conditions.append((knees["site"].isna().to_numpy(), SITE_MISSING))
    if params.image_store is not None:
        for view in params.required_views:  # each required input, named in the reason
            failed, missing_volume = _image_exclusions(inputs, knee_ids, (view,))
            conditions += list(zip((failed, missing_volume), image_reasons(view)))
        if not params.required_views:
            failed, missing_volume = _image_exclusions(inputs, knee_ids, MRI_VIEWS)
            conditions += [(failed, IMAGE_FAILED), (missing_volume, IMAGE_MISSING)]
    exclusion = np.select([c for c, _ in conditions], [r for _, r in conditions], default="")
    exclusion = np.where(exclusion == "", None, exclusion).astype(object)  # type: ignore[call-overload]
    included = pd.isna(exclusion)

    labels = pd.DataFrame(
        {
            "knee_id": knee_ids,
            "subject_id": subject_ids,
            "side": knees["side"].to_numpy(),
            "kl_baseline": pd.array(np.where(np.isnan(kl0), pd.NA, kl0), dtype="Int64"),
            "label": np.where(included, label, None),  # type: ignore[call-overload]
            "exclusion": exclusion,
            "progression_month": pd.array(np.where(included & has_event, month, np.nan), dtype="Int64"),
            "kl_increase": pd.array(np.where(included & has_event, np.round(step), np.nan), dtype="Int64"),
            "time_months": np.where(included & params.time_to_event, time_months, np.nan),
            "event_type": np.where(included & params.time_to_event, event_type, None),  # type: ignore[call-overload]
        }
    )
    stage1 = pd.DataFrame({"knee_id": knee_ids, "subject_id": subject_ids, "label": label})
    stage1 = stage1[~stage1_excluded].reset_index(drop=True)
    return labels, stage1


def _event_times(
    months: np.ndarray, graded: np.ndarray, has_event: np.ndarray, month: np.ndarray, replaced_first: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per knee: months to the first event, else to the last examined visit with a graded reading
    (censored; NaN without any), and the event's type (None: censored)."""
    m = graded.shape[1]
    last = m - 1 - graded[:, ::-1].argmax(axis=1)
    censored_at = np.where(graded.any(axis=1), months[last], np.nan)
    progression, replacement = EVENT_TYPES
    kind = np.where(replaced_first, replacement, progression)
    return np.where(has_event, month, censored_at), np.where(has_event, kind, None).astype(object)  # type: ignore[call-overload]


def _cohort_exclusion(reason: str, inputs: LabelInputs, knees: pd.DataFrame) -> np.ndarray:
    if reason == REPLACED_AT_BASELINE:
        rep = inputs.replacements
        at_base = rep.loc[rep["at_baseline"].eq(True), "knee_id"]
        return knees["knee_id"].isin(at_base).to_numpy()
    if reason == BMI_MISSING:
        bmi = inputs.baseline_bmi.dropna(subset=["bmi"])
        return ~knees["subject_id"].isin(bmi["subject_id"]).to_numpy()
    if reason == NO_BASELINE_DESS:
        series = pd.MultiIndex.from_frame(inputs.baseline_series[["subject_id", "side"]])
        return ~pd.MultiIndex.from_frame(knees[["subject_id", "side"]]).isin(series)
    raise AssertionError(reason)  # LabelDefinitionParams validates the names


def _image_exclusions(
    inputs: LabelInputs, knee_ids: np.ndarray, views: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(failed, no good volume) per knee, over the store's volumes of ``views``."""
    vols = inputs.volumes if inputs.volumes is not None else pd.DataFrame(columns=["knee_id", "status", "view"])
    if "view" in vols.columns:
        vols = vols[vols["view"].isin(views)]
    failed = np.isin(knee_ids, vols.loc[vols["status"] != "ok", "knee_id"])
    good = np.isin(knee_ids, vols.loc[vols["status"] == "ok", "knee_id"])
    return failed, ~good
