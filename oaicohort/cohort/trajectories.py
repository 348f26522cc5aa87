"""Any variable over time, per knee: KLG and the other X-ray readings, and clinical variables.

Used by :meth:`oaicohort.cohort.query.Cohort.trajectories`, which selects the knees.

- **X-ray readings** (``XRKL``, ``XRJSM``, ``XRJSL``, ``XROSFM`` ...) come from
  ``xray_readings``; several reading projects of one knee and visit are reduced by the rule the
  label definitions use by default (``first`` row, or ``first_graded``: project 15, then 37/42,
  then file order), or all kept.
- **Clinical variables** are read per visit from the ingested ``Vvv<STEM>`` variables. A
  knee-side pair (``WOMKP``: ``V00WOMKPR``/``V00WOMKPL`` ...) gives each knee its own side's
  value; a subject-level variable the subject's. Coded values keep both their code (``value``)
  and their label (``value_label``, from the data dictionary stored at ingest).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import select

from oaicohort.cohort.derivation import first_readings
from oaicohort.cohort.variables import VariableCatalogue, labels_for, load_dictionary
from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import ClinicalValue, XrayReading
from oaicohort.visits import VISIT_MONTHS

TRAJECTORY_COLUMNS = (
    "knee_id",
    "subject_id",
    "side",
    "label",
    "exclusion",
    "visit",
    "month",
    "klg",
    "klg_missing_code",
    "read_project",
    "source_row",
)
VARIABLE_TRAJECTORY_COLUMNS = (
    "knee_id",
    "subject_id",
    "side",
    "label",
    "exclusion",
    "visit",
    "month",
    "variable",
    "value",
    "value_label",
    "missing_code",
)
# X-ray reading names (without the Vvv prefix) -> xray_readings column
READING_VARIABLES: dict[str, str] = {
    "XRKL": "klg",
    "XRJSM": "jsn_medial",
    "XRJSL": "jsn_lateral",
    "XROSFM": "osteophyte_fm",
    "XROSFL": "osteophyte_fl",
    "XROSTM": "osteophyte_tm",
    "XROSTL": "osteophyte_tl",
}
# up to this many knees, rows are read with WHERE knee_id/subject_id IN (...); beyond, all rows
_IN_LIST_MAX = 2000
_INFO = ["knee_id", "subject_id", "side", "label", "exclusion"]


def _readings(db: Database, knees: pd.DataFrame, column: str) -> pd.DataFrame:
    stmt = select(
        XrayReading.knee_id,
        XrayReading.visit,
        XrayReading.month,
        getattr(XrayReading, column),
        XrayReading.klg_missing_code,
        XrayReading.read_project,
        XrayReading.source_row,
        XrayReading.id,
    )
    if len(knees) <= _IN_LIST_MAX:
        stmt = stmt.where(XrayReading.knee_id.in_([int(k) for k in knees["knee_id"]]))
    with db.read() as session:
        readings = read_frame(
            session, stmt, ["knee_id", "visit", "month", "klg", "klg_missing_code", "read_project", "source_row", "id"]
        )
    return readings[readings["knee_id"].isin(knees["knee_id"])]


def _reduce(readings: pd.DataFrame, duplicates: str) -> pd.DataFrame:
    if duplicates == "all":
        readings = readings.sort_values(["knee_id", "visit", "source_row", "id"], kind="stable")
    else:  # the rule the label definitions use
        readings = first_readings(readings.assign(klg=readings["klg"].astype(float)), duplicates)
    return readings.drop(columns=[c for c in ("id", "_ungraded", "_rank") if c in readings])


def _wide(long: pd.DataFrame, info: pd.DataFrame, value: str, prefix: str, dtype: str | None) -> pd.DataFrame:
    table = long.pivot(index="knee_id", columns="month", values=value)
    table.columns = [f"{prefix}_{int(m):02d}m" for m in table.columns]
    out = info.merge(table.reset_index(), on="knee_id", how="left")
    if dtype is not None:
        for col in table.columns:
            out[col] = out[col].astype(dtype)
    return out.reset_index(drop=True)


def klg_trajectories(db: Database, knees: pd.DataFrame, *, duplicates: str, wide: bool) -> pd.DataFrame:
    """KLG per knee per visit (:data:`TRAJECTORY_COLUMNS`; wide: ``klg_00m`` ...)."""
    readings = _reduce(_readings(db, knees, "klg"), duplicates)
    for col in ("klg", "read_project"):
        readings[col] = readings[col].astype("Int64")
    info = knees[_INFO]
    long = info.merge(readings, on="knee_id", how="inner")
    long = long.sort_values(["subject_id", "side", "month"], kind="stable").reset_index(drop=True)
    long = long[list(TRAJECTORY_COLUMNS)]
    out = _wide(long, info, "klg", "klg", "Int64") if wide else long
    out.attrs.update(knees.attrs)
    return out


def reading_trajectories(
    db: Database, knees: pd.DataFrame, name: str, column: str, *, duplicates: str, wide: bool
) -> pd.DataFrame:
    """Another X-ray reading (JSN, osteophytes) per knee per visit (:data:`VARIABLE_TRAJECTORY_COLUMNS`)."""
    readings = _reduce(_readings(db, knees, column), duplicates)
    info = knees[_INFO]
    long = info.merge(readings, on="knee_id", how="inner")
    long = long.sort_values(["subject_id", "side", "month"], kind="stable").reset_index(drop=True)
    long = long.assign(
        variable=[f"V{int(v):02d}{name}" for v in long["visit"]],
        value=long["klg"].astype(float),
        value_label=None,
        missing_code=None,
    )[list(VARIABLE_TRAJECTORY_COLUMNS)]
    out = _wide(long, info, "value", name, None) if wide else long
    out.attrs.update(knees.attrs)
    return out


def clinical_trajectories(db: Database, knees: pd.DataFrame, variable: str, *, wide: bool) -> pd.DataFrame:
    """A clinical variable per knee per ingested visit (:data:`VARIABLE_TRAJECTORY_COLUMNS`)."""
    with db.read() as session:
        catalogue = VariableCatalogue.load(session)
        series = catalogue.series(variable)
        names = sorted({v for _, ref in series for v in ref.sources})
        stmt = select(
            ClinicalValue.subject_id,
            ClinicalValue.variable,
            ClinicalValue.value_num,
            ClinicalValue.value_text,
            ClinicalValue.missing_code,
        ).where(ClinicalValue.variable.in_(names))
        subjects = knees["subject_id"].unique()
        if len(subjects) <= _IN_LIST_MAX:
            stmt = stmt.where(ClinicalValue.subject_id.in_([int(s) for s in subjects]))
        values = read_frame(session, stmt, ["subject_id", "variable", "value", "value_text", "missing_code"])
        dictionary = load_dictionary(session, names)
    info = knees[_INFO]
    parts: list[pd.DataFrame] = []
    for visit, ref in series:
        part = info.assign(
            visit=visit, month=VISIT_MONTHS[visit], variable=info["side"].map({"R": ref.right, "L": ref.left})
        )
        parts.append(part)
    long = pd.concat(parts, ignore_index=True) if parts else info.assign(visit=[], month=[], variable=[])
    long = long.merge(values, on=["subject_id", "variable"], how="inner")
    long["value"] = long["value"].astype(float)
    text_label = long["value_text"].astype("string").str.extract(r"^\s*[^:]+:\s*(.+?)\s*$")[0]
    long["value_label"] = labels_for(
        long["value"].where(long["value"].notna(), long["missing_code"]), long["variable"], dictionary
    )
    long["value_label"] = (
        long["value_label"]
        .fillna(text_label.astype(object))
        .where(long["value_label"].notna() | text_label.notna(), None)
    )
    long = long.sort_values(["subject_id", "side", "month"], kind="stable").reset_index(drop=True)
    long = long[list(VARIABLE_TRAJECTORY_COLUMNS)]
    stem = variable.strip().upper().split("@", 1)[0]
    out: Any = _wide(long, info, "value", stem, None) if wide else long
    out.attrs.update(knees.attrs)
    out.attrs["variable"] = stem
    out.attrs["dictionary_variables"] = names
    return out


__all__ = [
    "READING_VARIABLES",
    "TRAJECTORY_COLUMNS",
    "VARIABLE_TRAJECTORY_COLUMNS",
    "clinical_trajectories",
    "klg_trajectories",
    "reading_trajectories",
]
