"""The cohort table the paper prints (section 3.1), for the included knees of one definition."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import select

from oaicohort.cohort.definitions import LabelDefinitionParams
from oaicohort.cohort.stored import stored_definition, stored_labels
from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import Knee, KneeLabel, Subject, SubjectVisit
from oaicohort.vocabulary import DEFAULT_DEFINITION


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


def reason_counts(exclusion: pd.Series, params: LabelDefinitionParams | None) -> dict[str, int]:
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
        excluded=reason_counts(labels["exclusion"], params),
    )


__all__ = ["CohortSummary", "cohort_summary"]
