"""Knee-level KLG progression labels and cohort exclusions, and the paper's cohort table.

``derive_labels(db, "panfilov2022")`` loads the X-ray readings, BMI, baseline image index and
knee-replacement outcomes with a few SELECTs, computes every knee's label vectorised (numpy over a
knees x follow-ups matrix) and stores it under the definition's name and parameter hash. Every
knee of the ``knees`` table gets one row: a label (``none``/``fast``/``slow``) or the first
exclusion reason that applies, in the order of
:attr:`~oaicohort.cohort.definitions.LabelDefinitionParams.exclusion_reasons`.
The rules themselves are documented in :mod:`oaicohort.cohort.definitions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from oaicohort.cohort.definitions import (
    BASELINE_KLG_MISSING,
    BMI_MISSING,
    IMAGE_FAILED,
    IMAGE_MISSING,
    LOST_TO_FOLLOW_UP,
    NO_BASELINE_DESS,
    NO_BASELINE_READING,
    PRESETS,
    REPLACED_AT_BASELINE,
    LabelDefinitionError,
    LabelDefinitionParams,
    preset,
    resolve_definition,
)
from oaicohort.db import Database
from oaicohort.db.schema import (
    ImageSeries,
    IngestRun,
    Knee,
    KneeLabel,
    KneeReplacement,
    LabelDefinition,
    Subject,
    SubjectVisit,
    Volume,
    XrayReading,
    utcnow,
)
from oaicohort.errors import DatabaseStateError
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.visits import VISIT_MONTHS, XRAY_VISITS
from oaicohort.vocabulary import CLASSES, DEFAULT_DEFINITION, MRI_VIEWS

log = logging.getLogger(__name__)

LABEL_COLUMNS = (
    "knee_id",
    "subject_id",
    "side",
    "kl_baseline",
    "label",
    "exclusion",
    "progression_month",
    "kl_increase",
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
    readings: pd.DataFrame  # id, knee_id, visit, klg, klg_missing_code, source_row
    baseline_bmi: pd.DataFrame  # subject_id, bmi (visit 0 rows only)
    baseline_series: pd.DataFrame  # subject_id, side: knees with the baseline DESS series
    replacements: pd.DataFrame  # knee_id, status, at_baseline, visit_after, xray_visit_after, days
    volumes: pd.DataFrame | None = None  # knee_id, status (baseline volumes in the store)


@dataclass
class LabelResult:
    """Labels of one definition as stored, plus the counts before the cohort exclusions."""

    definition_id: int
    definition: LabelDefinitionParams
    params_hash: str
    labels: pd.DataFrame  # LABEL_COLUMNS, one row per knee
    # the label algorithm's own output (the reference's labels file) before BMI/DESS/... exclusions
    labelled: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def counts(self) -> dict[str, Any]:
        """Included knees per class and excluded knees per reason."""
        included = self.labels[self.labels["exclusion"].isna()]
        return {
            "knees": int(len(included)),
            "subjects": int(included["subject_id"].nunique()),
            **{c: int((included["label"] == c).sum()) for c in CLASSES},
            "excluded": _reason_counts(self.labels["exclusion"], self.definition),
        }


# --------------------------------------------------------------------------- the algorithm


def first_readings(readings: pd.DataFrame, policy: str) -> pd.DataFrame:
    """One reading per (knee, visit): the first in file order (``first``), or the first graded
    one, falling back to the first (``first_graded``). ``readings`` needs knee_id, visit, klg,
    source_row and id; with ``first_graded`` the result has an extra ``_ungraded`` column."""
    keys = ["knee_id", "visit"]
    frame = readings.assign(_ungraded=readings["klg"].isna()) if policy == "first_graded" else readings
    order = keys + (["_ungraded"] if policy == "first_graded" else []) + ["source_row", "id"]
    return frame.sort_values(order, kind="stable").drop_duplicates(keys, keep="first")


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
    first = first_readings(readings, params.duplicates)

    # baseline
    base = first[first["visit"] == 0]
    bpos = kidx.get_indexer(base["knee_id"].to_numpy())
    has_base = np.zeros(n, dtype=bool)
    kl0 = np.full(n, np.nan)
    has_base[bpos[bpos >= 0]] = True
    kl0[bpos[bpos >= 0]] = base["klg"].to_numpy(dtype=float)[bpos >= 0]

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
    klg[fpos[ok], vpos[ok]] = follow["klg"].to_numpy(dtype=float)[ok]
    codes = follow["klg_missing_code"].astype("string").str.strip().str.upper()
    prosthesis[fpos[ok], vpos[ok]] = (codes == ".P").fillna(False).to_numpy(dtype=bool)[ok]

    graded = present & ~np.isnan(klg)
    with np.errstate(invalid="ignore"):
        increase = graded & (klg > kl0[:, None])
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
    step = np.where(replaced[rows, j], REPLACED_KLG - kl0, klg[rows, j] - kl0)
    step = np.where(has_event, step, np.nan)

    if params.missing_klg == "outcomes99":
        rep_month = _replacement_months(inputs, params, knee_ids)
        earlier = ~np.isnan(rep_month) & (~has_event | (rep_month <= np.nan_to_num(month, nan=np.inf)))
        month = np.where(earlier, rep_month, month)
        step = np.where(earlier, REPLACED_KLG - kl0, step)
        has_event |= earlier

    if params.non_progressor_requires == "subject_at_last_visit":
        raw_last = inputs.readings[inputs.readings["visit"] == params.last_visit]
        seen = knees.loc[knees["knee_id"].isin(raw_last["knee_id"]), "subject_id"].unique()
        followed = np.isin(subject_ids, seen)
    elif params.non_progressor_requires == "knee_at_last_visit":
        followed = graded[:, -1]
    else:
        followed = np.ones(n, dtype=bool)

    label = np.where(
        has_event,
        np.where(month < params.fast_before_month, "fast", "slow"),
        np.where(followed, "none", None),
    ).astype(object)

    # exclusions, first applicable wins
    conditions: list[tuple[np.ndarray, str]] = [
        (~has_base, NO_BASELINE_READING),
        (np.isnan(kl0), BASELINE_KLG_MISSING),
    ]
    for grade in range(5):
        if grade not in params.baseline_klg_allowed:
            conditions.append((kl0 == grade, f"baseline_klg_{grade}"))
    conditions.append((~has_event & ~followed, LOST_TO_FOLLOW_UP))
    stage1_excluded = np.logical_or.reduce([c for c, _ in conditions])
    for reason in params.exclusions:
        conditions.append((_cohort_exclusion(reason, inputs, knees), reason))
    if params.image_store is not None:
        failed, missing_volume = _image_exclusions(inputs, knee_ids)
        conditions += [(failed, IMAGE_FAILED), (missing_volume, IMAGE_MISSING)]
    exclusion = np.select([c for c, _ in conditions], [r for _, r in conditions], default="")
    exclusion = np.where(exclusion == "", None, exclusion).astype(object)
    included = pd.isna(exclusion)

    labels = pd.DataFrame(
        {
            "knee_id": knee_ids,
            "subject_id": subject_ids,
            "side": knees["side"].to_numpy(),
            "kl_baseline": pd.array(np.where(np.isnan(kl0), pd.NA, kl0), dtype="Int64"),
            "label": np.where(included, label, None),
            "exclusion": exclusion,
            "progression_month": pd.array(np.where(included & has_event, month, np.nan), dtype="Int64"),
            "kl_increase": pd.array(np.where(included & has_event, step, np.nan), dtype="Int64"),
        }
    )
    stage1 = pd.DataFrame({"knee_id": knee_ids, "subject_id": subject_ids, "label": label})
    stage1 = stage1[~stage1_excluded].reset_index(drop=True)
    return labels, stage1


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


def _image_exclusions(inputs: LabelInputs, knee_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vols = inputs.volumes if inputs.volumes is not None else pd.DataFrame(columns=["knee_id", "status"])
    failed = np.isin(knee_ids, vols.loc[vols["status"] != "ok", "knee_id"])
    good = np.isin(knee_ids, vols.loc[vols["status"] == "ok", "knee_id"])
    return failed, ~good


# --------------------------------------------------------------------------- database I/O


def read_frame(session: Session, stmt: Any, columns: Sequence[str]) -> pd.DataFrame:
    """Run a Core SELECT in the session's transaction and return its rows as a DataFrame.

    Column-wise construction: ``DataFrame.from_records`` over Row objects is several times slower.
    """
    rows = session.connection().execute(stmt).fetchall()
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    return pd.DataFrame(dict(zip(columns, map(list, zip(*rows)))))


def load_label_inputs(session: Session, params: LabelDefinitionParams) -> LabelInputs:
    """Read what ``params`` needs from the database (a handful of SELECTs)."""
    # the last visit (non-progressor rule) is the last examined one, so it is among these
    visits = (0, *params.examined_visits)
    knees = read_frame(session, select(Knee.id, Knee.subject_id, Knee.side), ["knee_id", "subject_id", "side"])
    readings = read_frame(
        session,
        select(
            XrayReading.id,
            XrayReading.knee_id,
            XrayReading.visit,
            XrayReading.klg,
            XrayReading.klg_missing_code,
            XrayReading.source_row,
        ).where(XrayReading.visit.in_(visits)),
        ["id", "knee_id", "visit", "klg", "klg_missing_code", "source_row"],
    )
    readings["klg"] = readings["klg"].astype(float)
    bmi = read_frame(
        session,
        select(SubjectVisit.subject_id, SubjectVisit.bmi).where(SubjectVisit.visit == 0),
        ["subject_id", "bmi"],
    )
    series = read_frame(
        session,
        select(ImageSeries.subject_id, ImageSeries.side)
        .where(ImageSeries.visit == 0, ImageSeries.sequence == params.dess_sequence)
        .distinct(),
        ["subject_id", "side"],
    )
    replacements = read_frame(
        session,
        select(
            KneeReplacement.knee_id,
            KneeReplacement.status,
            KneeReplacement.at_baseline,
            KneeReplacement.visit_after,
            KneeReplacement.xray_visit_after,
            KneeReplacement.days_from_enrolment,
        ),
        ["knee_id", "status", "at_baseline", "visit_after", "xray_visit_after", "days"],
    )
    volumes = None
    if params.image_store is not None:
        volumes = read_frame(
            session,
            # the MRI volumes only: the paper's exclusion is about the DESS image (a store may also
            # hold radiograph ROIs, view xray)
            select(Volume.knee_id, Volume.status).where(
                Volume.store_path == params.image_store, Volume.visit == 0, Volume.view.in_(MRI_VIEWS)
            ),
            ["knee_id", "status"],
        )
        if volumes.empty:
            raise DatabaseStateError(
                f"no volumes of store {params.image_store} are indexed in the database: "
                f"run `oai preprocess --store {params.image_store}` first"
            )
    return LabelInputs(knees, readings, bmi, series, replacements, volumes)


def _latest_ingest_run(session: Session) -> int | None:
    return session.execute(
        select(func.max(IngestRun.id)).where(IngestRun.status.in_(("succeeded", "unchanged")))
    ).scalar()


def _require_ingested(session: Session) -> None:
    if session.execute(select(XrayReading.id).limit(1)).first() is None:
        raise DatabaseStateError("the database holds no X-ray readings: run `oai ingest ROOT` first, then `oai label`")


def _python_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as dicts of plain Python values (None for missing), for bulk inserts."""
    clean = frame.astype(object).where(frame.notna(), None)
    return clean.to_dict("records")


def _definition_params(db: Database, definition: str | LabelDefinitionParams) -> LabelDefinitionParams:
    """A preset, the given parameters, or the parameters stored under a non-preset name."""
    try:
        return resolve_definition(definition)
    except LabelDefinitionError:
        assert isinstance(definition, str)  # only an unknown name fails to resolve
        with db.read() as session:
            row = session.execute(_latest_named(definition)).scalars().first()
        if row is None:
            raise
        return LabelDefinitionParams.from_dict(row.params)


def derive_labels(
    db: Database,
    definition: str | LabelDefinitionParams = DEFAULT_DEFINITION,
    *,
    store: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> LabelResult:
    """Derive and store the labels of every knee under ``definition``: a preset name, params, or
    the name of a definition stored earlier (its stored parameters are used again).

    With ``store`` (a volume store path) knees without a good baseline volume in that store are
    excluded too (``image_failed`` / ``image_missing``); the store is part of the definition's
    parameters. Re-deriving replaces the definition's labels in one transaction.
    """
    started = time.perf_counter()
    report = progress or no_progress
    params = _definition_params(db, definition)
    if store is not None:
        params = dataclasses.replace(params, image_store=str(Path(store).expanduser().resolve()))
    params_hash = params.hash()
    report("labels", 0, 3)
    with db.write() as session:
        _require_ingested(session)
        inputs = load_label_inputs(session, params)
        report("labels", 1, 3)
        labels, stage1 = compute_labels(inputs, params)
        report("labels", 2, 3)
        row = session.execute(
            select(LabelDefinition).where(
                LabelDefinition.name == params.name, LabelDefinition.params_hash == params_hash
            )
        ).scalar_one_or_none()
        if row is None:
            row = LabelDefinition(name=params.name, params=params.to_dict(), params_hash=params_hash)
            session.add(row)
        # created_at marks the latest derivation: "the latest labels of a name" resolve to it
        row.created_at = utcnow()
        row.ingest_run_id = _latest_ingest_run(session)
        session.flush()
        session.execute(delete(KneeLabel).where(KneeLabel.definition_id == row.id))
        records = _python_rows(labels.drop(columns=["subject_id", "side"]).assign(definition_id=row.id))
        if records:
            # Core executemany: the ORM bulk path splits rows by their None pattern (x100 slower)
            session.connection().execute(insert(KneeLabel.__table__), records)
        definition_id = row.id
    report("labels", 3, 3)
    labelled = {
        "knees": int(len(stage1)),
        "subjects": int(stage1["subject_id"].nunique()),
        **{c: int((stage1["label"] == c).sum()) for c in CLASSES},
    }
    seconds = time.perf_counter() - started
    log.info("labels %s (%s): %d knees in %.2f s", params.name, params_hash[:12], len(labels), seconds)
    return LabelResult(definition_id, params, params_hash, labels, labelled, seconds)


# --------------------------------------------------------------------------- stored definitions


def _latest_named(name: str) -> Any:
    """SELECT of the latest derived definition called ``name`` (``created_at`` marks a derivation)."""
    return (
        select(LabelDefinition)
        .where(LabelDefinition.name == name)
        .order_by(LabelDefinition.created_at.desc(), LabelDefinition.id.desc())
        .limit(1)
    )


def stored_definition(
    session: Session, definition: str | int | LabelDefinitionParams = DEFAULT_DEFINITION
) -> LabelDefinition:
    """The stored definition: by id, by exact parameters, or the latest derived of a name."""
    if isinstance(definition, LabelDefinitionParams):
        stmt = select(LabelDefinition).where(
            LabelDefinition.name == definition.name, LabelDefinition.params_hash == definition.hash()
        )
        what = f"{definition.name!r} (hash {definition.hash()[:12]})"
        name = definition.name
    elif isinstance(definition, int):
        stmt = select(LabelDefinition).where(LabelDefinition.id == definition)
        what, name = f"id {definition}", DEFAULT_DEFINITION
    else:
        stmt = _latest_named(definition)
        what, name = repr(definition), definition
    row = session.execute(stmt).scalars().first()
    if row is None:
        if session.execute(select(Knee.id).limit(1)).first() is None:
            raise DatabaseStateError("the database holds no knees: run `oai ingest ROOT` first, then `oai label`")
        raise DatabaseStateError(
            f"no labels of definition {what} in the database: run `oai label --definition {name}` first"
        )
    return row


def stored_labels(session: Session, definition_id: int) -> pd.DataFrame:
    """The stored labels of a definition joined with subject and side (LABEL_COLUMNS)."""
    stmt = (
        select(
            KneeLabel.knee_id,
            Knee.subject_id,
            Knee.side,
            KneeLabel.kl_baseline,
            KneeLabel.label,
            KneeLabel.exclusion,
            KneeLabel.progression_month,
            KneeLabel.kl_increase,
        )
        .join(Knee, Knee.id == KneeLabel.knee_id)
        .where(KneeLabel.definition_id == definition_id)
        .order_by(Knee.subject_id, Knee.side)
    )
    frame = read_frame(session, stmt, list(LABEL_COLUMNS))
    for col in ("kl_baseline", "progression_month", "kl_increase"):
        frame[col] = frame[col].astype("Int64")
    return frame


def labels_fingerprint(labels: pd.DataFrame) -> str:
    """sha256 of the included knees' (subject, side, label): identifies the labels a split used."""
    included = labels[labels["exclusion"].isna()].sort_values(["subject_id", "side"])
    text = "\n".join(
        f"{s},{side},{lab}" for s, side, lab in zip(included["subject_id"], included["side"], included["label"])
    )
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- cohort table


@dataclass
class CohortSummary:
    """The cohort table the paper prints, for the included knees of one definition.

    Age and BMI are per subject (baseline ``V00AGE`` / ``P01BMI``), mean and sample SD.
    """

    definition: str
    definition_id: int
    params_hash: str
    knees: int
    subjects: int
    none: int
    fast: int
    slow: int
    kl: dict[int, int]
    age_mean: float | None
    age_sd: float | None
    bmi_mean: float | None
    bmi_sd: float | None
    female: int
    male: int
    excluded: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kl"] = {str(k): v for k, v in self.kl.items()}
        return out


def _mean_sd(values: pd.Series) -> tuple[float | None, float | None]:
    values = values.dropna().astype(float)
    if values.empty:
        return None, None
    sd = float(values.std(ddof=1)) if len(values) > 1 else None
    return float(values.mean()), sd


def _reason_counts(exclusion: pd.Series, params: LabelDefinitionParams | None) -> dict[str, int]:
    counts = exclusion.dropna().value_counts()
    reasons = list(params.exclusion_reasons) if params is not None else []
    reasons += sorted(r for r in counts.index if r not in reasons)
    return {r: int(counts.get(r, 0)) for r in reasons}


def cohort_summary(db: Database, definition: str | int | LabelDefinitionParams = DEFAULT_DEFINITION) -> CohortSummary:
    """Summarise the stored labels of ``definition`` (see :class:`CohortSummary`)."""
    with db.read() as session:
        row = stored_definition(session, definition)
        labels = stored_labels(session, row.id)
        subjects = read_frame(
            session,
            select(Subject.id, Subject.sex, SubjectVisit.age, SubjectVisit.bmi)
            .outerjoin(SubjectVisit, (SubjectVisit.subject_id == Subject.id) & (SubjectVisit.visit == 0))
            .where(
                Subject.id.in_(
                    select(Knee.subject_id)
                    .join(KneeLabel, KneeLabel.knee_id == Knee.id)
                    .where(KneeLabel.definition_id == row.id, KneeLabel.exclusion.is_(None))
                )
            ),
            ["subject_id", "sex", "age", "bmi"],
        )
    try:
        params: LabelDefinitionParams | None = LabelDefinitionParams.from_dict(row.params)
    except Exception:  # a definition stored by another toolkit version: still summarise it
        params = None
    included = labels[labels["exclusion"].isna()]
    age_mean, age_sd = _mean_sd(subjects["age"])
    bmi_mean, bmi_sd = _mean_sd(subjects["bmi"])
    return CohortSummary(
        definition=row.name,
        definition_id=row.id,
        params_hash=row.params_hash,
        knees=int(len(included)),
        subjects=int(included["subject_id"].nunique()),
        none=int((included["label"] == "none").sum()),
        fast=int((included["label"] == "fast").sum()),
        slow=int((included["label"] == "slow").sum()),
        kl={
            int(k): int((included["kl_baseline"] == k).sum())
            for k in sorted({0, 1, 2, 3} | set(included["kl_baseline"].dropna().astype(int)))
        },
        age_mean=age_mean,
        age_sd=age_sd,
        bmi_mean=bmi_mean,
        bmi_sd=bmi_sd,
        female=int((subjects["sex"] == "F").sum()),
        male=int((subjects["sex"] == "M").sum()),
        excluded=_reason_counts(labels["exclusion"], params),
    )


__all__ = [
    "CLASSES",
    "LABEL_COLUMNS",
    "PRESETS",
    "CohortSummary",
    "LabelDefinitionParams",
    "LabelInputs",
    "LabelResult",
    "cohort_summary",
    "compute_labels",
    "derive_labels",
    "first_readings",
    "labels_fingerprint",
    "preset",
    "read_frame",
    "stored_definition",
    "stored_labels",
]
