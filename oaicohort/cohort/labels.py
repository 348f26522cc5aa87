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
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from oaicohort.cohort.definitions import (
    PRESETS,
    LabelDefinitionError,
    LabelDefinitionParams,
    preset,
    resolve_definition,
)
from oaicohort.cohort.derivation import LABEL_COLUMNS, LabelInputs, compute_labels, disagreeing_knees, first_readings
from oaicohort.cohort.stored import (
    labels_fingerprint,
    latest_named,
    stored_definition,
    stored_labels,
)
from oaicohort.cohort.summary import CohortSummary, cohort_summary, reason_counts
from oaicohort.db import Database
from oaicohort.db.bulk import insert_frame
from oaicohort.db.frames import read_frame
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
from oaicohort.db.staleness import LABELS, clear_stale
from oaicohort.db.stores import canonical_path, find_store, where_is
from oaicohort.errors import DatabaseStateError
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.vocabulary import CLASSES, DEFAULT_DEFINITION, MRI_VIEWS

log = logging.getLogger(__name__)


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
    # knees with a visit whose readings by different reading projects disagree on the graded
    # variable (which one counts is the definition's reading_order)
    disagreeing_knees: int = 0

    def counts(self) -> dict[str, Any]:
        """Included knees per class and excluded knees per reason."""
        included = self.labels[self.labels["exclusion"].isna()]
        return {
            "knees": int(len(included)),
            "subjects": int(included["subject_id"].nunique()),
            **{c: int((included["label"] == c).sum()) for c in CLASSES},
            "excluded": reason_counts(self.labels["exclusion"], self.definition),
        }


# --------------------------------------------------------------------------- database I/O


READING_COLUMNS = (
    "id", "knee_id", "visit", "klg", "klg_missing_code", "jsn_medial", "jsn_lateral", "source_row", "read_project",
)  # fmt: skip


def xray_readings(session: Session, visits: Sequence[int] | None = None) -> pd.DataFrame:
    """The central X-ray readings (:data:`READING_COLUMNS`, as stored), of ``visits`` or all."""
    stmt = select(*(getattr(XrayReading, c) for c in READING_COLUMNS))
    if visits is not None:
        stmt = stmt.where(XrayReading.visit.in_(visits))
    return read_frame(session, stmt, list(READING_COLUMNS))


def load_label_inputs(session: Session, params: LabelDefinitionParams) -> LabelInputs:
    """Read what ``params`` needs from the database (a handful of SELECTs)."""
    # the last visit (non-progressor rule) is the last examined one, so it is among these
    visits = (0, *params.examined_visits)
    knees = read_frame(
        session,
        select(Knee.id, Knee.subject_id, Knee.side, Subject.site).join(Subject, Subject.id == Knee.subject_id),
        ["knee_id", "subject_id", "side", "site"],
    )
    readings = xray_readings(session, visits)
    if params.read_projects:  # only these reading projects' readings count
        readings = readings[readings["read_project"].isin(params.used_read_projects)].reset_index(drop=True)
    for column in ("klg", "jsn_medial", "jsn_lateral"):
        readings[column] = readings[column].astype(float)
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
        store = find_store(session, params.image_store)  # by its UUID: a store that moved is still found
        # the MRI volumes unless views are required: the paper's exclusion is about the DESS
        # image (a store may also hold radiograph ROIs, view xray)
        views = params.required_views or MRI_VIEWS
        volumes = read_frame(
            session,
            select(Volume.knee_id, Volume.status, Volume.view).where(
                Volume.store_id == store.id, Volume.visit == 0, Volume.view.in_(views)
            ),
            ["knee_id", "status", "view"],
        )
        if volumes.empty:
            raise DatabaseStateError(
                f"no volumes of store {params.image_store} are indexed in the database: {where_is(session, store)}"
            )
    return LabelInputs(knees, readings, bmi, series, replacements, volumes)


def _latest_ingest_run(session: Session) -> int | None:
    return session.execute(
        select(func.max(IngestRun.id)).where(IngestRun.status.in_(("succeeded", "unchanged")))
    ).scalar()


def _require_ingested(session: Session) -> None:
    if session.execute(select(XrayReading.id).limit(1)).first() is None:
        raise DatabaseStateError("the database holds no X-ray readings: run `oai ingest ROOT` first, then `oai label`")


def _definition_params(db: Database, definition: str | LabelDefinitionParams) -> LabelDefinitionParams:
    """A preset, the given parameters, or the parameters stored under a non-preset name."""
    try:
        return resolve_definition(definition)
    except LabelDefinitionError:
        assert isinstance(definition, str)  # only an unknown name fails to resolve
        with db.read() as session:
            row = session.execute(latest_named(definition)).scalars().first()
        if row is None:
            raise
        return LabelDefinitionParams.from_dict(row.params)


def derive_labels(
    db: Database,
    definition: str | LabelDefinitionParams = DEFAULT_DEFINITION,
    *,
    store: str | Path | None = None,
    require: Sequence[str] = (),
    progress: ProgressCallback | None = None,
) -> LabelResult:
    """Derive and store the labels of every knee under ``definition``: a preset name, params, or
    the name of a definition stored earlier (its stored parameters are used again).

    With ``store`` (a volume store path) knees without a good baseline volume in that store are
    excluded too (``image_failed`` / ``image_missing``). ``require`` (views of the store, e.g.
    ``("sag", "xray")``) asks for a good volume of every one of them instead, and the reason
    names the view that is missing (``image_missing_xray``): runs of every input then share one
    test set. The store and the required views are recorded with the labels but are not part of
    the definition's identity: the labels are those of one definition, replaced by each
    derivation (in one transaction).
    """
    started = time.perf_counter()
    report = progress or no_progress
    params = _definition_params(db, definition)
    # where images live is a derivation option, not part of the definition's identity
    image_store = None if store is None else str(canonical_path(store))
    if require and image_store is None:
        raise LabelDefinitionError(f"required views {list(require)} need an image store: give --store too")
    params = dataclasses.replace(params, image_store=image_store, required_views=tuple(require))
    params_hash = params.hash()
    report("labels", 0, 3)
    with db.write() as session:
        _require_ingested(session)
        inputs = load_label_inputs(session, params)
        report("labels", 1, 3)
        labels, stage1 = compute_labels(inputs, params)
        disagreeing = disagreeing_knees(inputs.readings, params.graded_variable)
        report("labels", 2, 3)
        row = session.execute(
            select(LabelDefinition).where(
                LabelDefinition.name == params.name, LabelDefinition.params_hash == params_hash
            )
        ).scalar_one_or_none()
        if row is None:
            row = LabelDefinition(name=params.name, params=params.to_dict(), params_hash=params_hash)
            session.add(row)
        # created_at marks the latest derivation: "the latest labels of a name" resolve to it;
        # params record that derivation's options (the image store) too
        row.params = params.to_dict()
        row.created_at = utcnow()
        row.ingest_run_id = _latest_ingest_run(session)
        session.flush()
        clear_stale(session, LABELS, row.id)
        session.execute(delete(KneeLabel).where(KneeLabel.definition_id == row.id))
        insert_frame(session, KneeLabel, labels.drop(columns=["subject_id", "side"]).assign(definition_id=row.id))
        definition_id = row.id
    report("labels", 3, 3)
    labelled: dict[str, int] = {
        "knees": int(len(stage1)),
        "subjects": int(stage1["subject_id"].nunique()),
        **{c: int((stage1["label"] == c).sum()) for c in CLASSES},
    }
    seconds = time.perf_counter() - started
    log.info("labels %s (%s): %d knees in %.2f s", params.name, params_hash[:12], len(labels), seconds)
    return LabelResult(definition_id, params, params_hash, labels, labelled, seconds, disagreeing)


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
