"""The clinical tables of an OAI release, each read into a typed frame: Enrollees,
SubjectChar{vv}, AllClinical{vv}, kXR_SQ_BU{vv} (X-ray readings) and Outcomes99.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from oaicohort.release.table import Table, shown
from oaicohort.release.text import TableSource
from oaicohort.release.values import as_int, dates, knee_sides, none_if_missing, numeric, parse_coded, subject_ids

log = logging.getLogger(__name__)


SITES = ("A", "B", "C", "D", "E")  # the five OAI clinical centres (V00SITE)


def read_enrollees(raw: TableSource, variables: Sequence[str] = ()) -> tuple[pd.DataFrame, Table]:
    """Enrollees: ``subject_id, site, sex ("M"/"F"), race, cohort`` (one row per participant),
    plus a ``Table`` holding the extra ``variables`` asked for (see ``clinical_values``)."""
    t = raw.table(
        ["ID", "V00SITE", "P02SEX", "P02RACE", "V00COHORT", *variables],
        required=["ID", "V00SITE"],
        allow_empty=False,
    )
    sex_code = numeric(t, "P02SEX", integer=True).number
    sex = np.full(len(t), None, dtype=object)
    sex[sex_code == 1] = "M"
    sex[sex_code == 2] = "F"
    other = ~np.isnan(sex_code) & (sex_code != 1) & (sex_code != 2)
    if other.any():
        row = int(np.flatnonzero(other)[0])
        raise t.error(
            f"sex must be 1 (male) or 2 (female), got {shown(t.frame['P02SEX'].iloc[row])}", row=row, column="P02SEX"
        )
    site = none_if_missing(t.frame["V00SITE"])
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t),
            "site": site,
            "sex": pd.Series(sex, dtype=object),
            "race": as_int(numeric(t, "P02RACE", integer=True)),
            "cohort": as_int(numeric(t, "V00COHORT", integer=True)),
            "line": t.lines,
        }
    )
    unknown_site = np.array([s is not None and s not in SITES for s in site], dtype=bool)
    if unknown_site.any():
        row = int(np.flatnonzero(unknown_site)[0])
        raise t.error(
            f"site must be one of the OAI clinical centres {', '.join(SITES)}, got {shown(t.frame['V00SITE'].iloc[row])}",
            row=row,
            column="V00SITE",
        )
    return _unique_subjects(t, frame), t


def _unique_subjects(t: Table, frame: pd.DataFrame) -> pd.DataFrame:
    dup = frame["subject_id"].duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise t.error(f"participant {frame['subject_id'].iloc[row]} is listed twice", row=row, column="ID")
    return frame


def read_subjectchar(raw: TableSource, variables: Sequence[str] = ()) -> tuple[np.ndarray, Table]:
    """SubjectChar{vv}: participant ids and a ``Table`` of the ``variables`` asked for (the toolkit
    itself needs nothing from these files)."""
    t = raw.table(["ID", *variables], required=["ID"], allow_empty=False)
    ids = subject_ids(t)
    _unique_subjects(t, pd.DataFrame({"subject_id": ids}))
    return ids, t


def allclinical_columns(visit: int) -> dict[str, str]:
    """The typed per-visit columns of ``AllClinical{vv}`` (field -> OAI variable)."""
    vv = f"V{visit:02d}"
    if visit == 0:
        # screening BMI (P01) is the baseline BMI; the enrolment visit has its own date column
        return {"age": "V00AGE", "bmi": "P01BMI", "visit_date": "V00EVDATE"}
    return {"age": f"{vv}AGE", "bmi": f"{vv}BMI", "visit_date": f"{vv}FVDATE"}


def read_allclinical(raw: TableSource, variables: Sequence[str] = ()) -> tuple[pd.DataFrame, Table]:
    """AllClinical{vv}: per-visit ``subject_id, visit, age, bmi, visit_date``, plus a ``Table``
    holding the extra ``variables`` asked for (see ``clinical_values``).

    At baseline ``V00AGE`` and ``P01BMI`` are required: the paper's cohort needs them, and a file
    without them is not the AllClinical00 we think it is.
    """
    visit = raw.source.visit
    assert visit is not None
    typed = allclinical_columns(visit)
    required = ["ID", typed["age"], typed["bmi"]] if visit == 0 else ["ID"]
    t = raw.table(["ID", *typed.values(), *variables], required=required, allow_empty=False)
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t),
            "visit": visit,
            "age": numeric(t, typed["age"]).number,
            "bmi": numeric(t, typed["bmi"]).number,
            "visit_date": dates(t, typed["visit_date"]),
            "line": t.lines,
        }
    )
    return _unique_subjects(t, frame), t


def clinical_values(table: Table, variables: Sequence[str], ids: np.ndarray | None = None) -> pd.DataFrame:
    """Long rows ``subject_id, variable, value_text, value_num, missing_code, source_file`` for the
    requested ``variables`` found in ``table`` (one row per subject and variable)."""
    ids = subject_ids(table) if ids is None else ids
    frames = []
    for name in variables:
        column = name.upper()
        if column not in table.frame.columns:
            continue
        parsed = parse_coded(table.frame[column])
        text = table.frame[column].where(table.frame[column] != "", None)
        frames.append(
            pd.DataFrame(
                {
                    "subject_id": ids,
                    "variable": column,
                    "value_text": text.astype(object).where(text.notna(), None),
                    "value_num": parsed.number,
                    "missing_code": parsed.missing_code,
                    "source_file": table.source.relative_path,
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            columns=["subject_id", "variable", "value_text", "value_num", "missing_code", "source_file"]
        )
    return pd.concat(frames, ignore_index=True)


def kxr_columns(visit: int) -> dict[str, str]:
    """The ``kXR_SQ_BU{vv}`` columns read into ``xray_readings`` (field -> OAI variable)."""
    vv = f"V{visit:02d}XR"
    return {
        "klg": f"{vv}KL",
        "jsn_medial": f"{vv}JSM",
        "jsn_lateral": f"{vv}JSL",
        "osteophyte_fm": f"{vv}OSFM",
        "osteophyte_fl": f"{vv}OSFL",
        "osteophyte_tm": f"{vv}OSTM",
        "osteophyte_tl": f"{vv}OSTL",
    }


def read_kxr(raw: TableSource) -> pd.DataFrame:
    """kXR_SQ_BU{vv}: one row per reading, in file order, with ``source_row`` = file line.

    Columns: ``subject_id, side, visit, read_project, klg, klg_missing_code, jsn_*,
    osteophyte_*, source_file, source_row``. Duplicates across reading projects are kept; which
    one counts is the label definition's business.
    """
    visit = raw.source.visit
    assert visit is not None
    cols = kxr_columns(visit)
    t = raw.table(["ID", "SIDE", "READPRJ", *cols.values()], required=["ID", "SIDE", cols["klg"]])
    klg = numeric(t, cols["klg"], integer=True)
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t),
            "side": knee_sides(t),
            "visit": visit,
            "read_project": as_int(numeric(t, "READPRJ", integer=True)),
            "klg": as_int(klg),
            "klg_missing_code": pd.Series(klg.missing_code, dtype=object),
        }
    )
    out_of_range = frame["klg"].notna() & ~frame["klg"].isin([0, 1, 2, 3, 4])
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range.to_numpy())[0])
        raise t.error(f"KL grade must be 0-4, got {shown(t.frame[cols['klg']].iloc[row])}", row=row, column=cols["klg"])
    for field, column in cols.items():
        if field != "klg":
            frame[field] = numeric(t, column).number
    frame["source_file"] = raw.source.relative_path
    frame["source_row"] = t.lines
    return frame


# Outcomes99 knee columns: field -> suffix after V99E{R,L}K
OUTCOME_FIELDS: dict[str, str] = {
    "status": "RPSN",
    "at_baseline": "BLRP",
    "days_from_enrolment": "DAYS",
    "visit_before": "VSPR",
    "visit_after": "VSAF",
    "xray_visit_before": "XRPR",
    "xray_visit_after": "XRAF",
    "adjudication": "RPCF",
    "total_or_partial": "TLPR",
}


def read_outcomes(raw: TableSource) -> pd.DataFrame:
    """Outcomes99: knee replacement facts, one row per subject and side (``R``/``L``)."""
    sides = {"R": "V99ERK", "L": "V99ELK"}
    wanted = ["ID"] + [p + s for p in sides.values() for s in OUTCOME_FIELDS.values()]
    t = raw.table(wanted, required=["ID", "V99ERKRPSN", "V99ELKRPSN"], allow_empty=False)
    ids = subject_ids(t)
    _unique_subjects(t, pd.DataFrame({"subject_id": ids}))
    frames = []
    for side, prefix in sides.items():
        cols: dict[str, object] = {"subject_id": ids, "side": side}
        for field, suffix in OUTCOME_FIELDS.items():
            cols[field] = as_int(numeric(t, prefix + suffix, integer=True))
        frame = pd.DataFrame(cols)
        frame["at_baseline"] = frame["at_baseline"].astype("boolean")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
