"""Labels and splits made before a re-ingest changed a subject's site or sex are stale.

The held-out-site split puts a subject in the test set or a training fold by its site; the cohort
table counts by sex. When a newer release changes either for a subject, every stored label
definition and every split holding that subject is marked stale (``stale_results``). A knee
query by role or fold (``Cohort.knees(role=...)``, hence ``oai train``, ``oai eval`` and ``oai
cohort --role``) refuses stale ones, naming the subjects that changed and what to re-run; ``oai label`` clears the marks of the labels it re-derives and
``oai split`` those of the split it makes (or finds valid again).
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oaicohort.db.schema import Knee, KneeLabel, LabelDefinition, Split, SplitAssignment, StaleResult, Subject
from oaicohort.errors import DatabaseStateError

log = logging.getLogger(__name__)

TRACKED = ("site", "sex")  # what a split or the cohort table depends on
LABELS, SPLIT = "labels", "split"


class StaleResultError(DatabaseStateError):
    """Labels or a split were made before a re-ingest changed a subject they depend on."""


def changed_subjects(session: Session, enrollees: pd.DataFrame) -> list[tuple[int, str, Any, Any]]:
    """(subject, field, old, new) for subjects already stored whose site or sex ``enrollees`` changes."""
    ids = [int(i) for i in enrollees["subject_id"].tolist()]
    if not ids:
        return []
    stored: dict[int, tuple[Any, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for sid, site, sex in session.execute(
            select(Subject.id, Subject.site, Subject.sex).where(Subject.id.in_(chunk))
        ):
            stored[sid] = (site, sex)
    changes = []
    for sid, site, sex in zip(ids, enrollees["site"].tolist(), enrollees["sex"].tolist(), strict=True):
        if sid not in stored:
            continue
        for field, old, new in zip(TRACKED, stored[sid], (site, sex), strict=True):
            new = None if pd.isna(new) else new
            if old != new:
                changes.append((sid, field, old, new))
    return changes


def mark_stale(session: Session, enrollees: pd.DataFrame | None) -> int:
    """Record stale labels and splits for every site/sex change ``enrollees`` brings (before it is
    written). Returns the number of subjects changed."""
    if enrollees is None or not len(enrollees):
        return 0
    changes = changed_subjects(session, enrollees)
    if not changes:
        return 0
    subjects = sorted({c[0] for c in changes})
    definitions = session.scalars(select(LabelDefinition.id)).all()
    splits: dict[int, set[int]] = {}
    for start in range(0, len(subjects), 500):
        chunk = subjects[start : start + 500]
        for split_id, sid in session.execute(
            select(SplitAssignment.split_id, Knee.subject_id)
            .join(Knee, Knee.id == SplitAssignment.knee_id)
            .where(Knee.subject_id.in_(chunk))
            .distinct()
        ):
            splits.setdefault(sid, set()).add(split_id)
    labelled: set[int] = set()
    for start in range(0, len(subjects), 500):
        chunk = subjects[start : start + 500]
        labelled.update(
            session.scalars(
                select(Knee.subject_id).join(KneeLabel, KneeLabel.knee_id == Knee.id).where(Knee.subject_id.in_(chunk))
            ).all()
        )
    rows = []
    for sid, field, old, new in changes:
        values = {"subject_id": sid, "field": field, "old_value": old, "new_value": new}
        if sid in labelled:
            rows += [StaleResult(kind=LABELS, target_id=d, **values) for d in definitions]
        rows += [StaleResult(kind=SPLIT, target_id=s, **values) for s in sorted(splits.get(sid, ()))]
    session.add_all(rows)
    if rows:
        log.warning(
            "%d subject(s) changed site or sex (e.g. %d); labels and splits made before are stale: "
            "re-run `oai label` and `oai split`",
            len(subjects),
            subjects[0],
        )
    return len(subjects)


def clear_stale(session: Session, kind: str, target_id: int) -> None:
    session.execute(delete(StaleResult).where(StaleResult.kind == kind, StaleResult.target_id == target_id))


def _describe(rows: list[StaleResult]) -> str:
    shown = [f"{r.subject_id} ({r.field} {r.old_value or 'blank'} -> {r.new_value or 'blank'})" for r in rows[:5]]
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return ", ".join(shown) + more


def check_not_stale(session: Session, definition_id: int | None, split_id: int | None) -> None:
    """Refuse labels or a split made before a re-ingest changed one of their subjects' site or sex."""
    problems = []
    if definition_id is not None:
        rows = session.scalars(
            select(StaleResult)
            .where(StaleResult.kind == LABELS, StaleResult.target_id == definition_id)
            .order_by(StaleResult.subject_id)
        ).all()
        if rows:
            problems.append(
                f"the labels (definition id {definition_id}) predate changes of subject(s) {_describe(list(rows))}"
            )
    if split_id is not None:
        rows = session.scalars(
            select(StaleResult)
            .where(StaleResult.kind == SPLIT, StaleResult.target_id == split_id)
            .order_by(StaleResult.subject_id)
        ).all()
        if rows:
            problems.append(f"split {split_id} predates changes of subject(s) {_describe(list(rows))}")
    if problems:
        raise StaleResultError(
            "; ".join(problems) + ": a re-ingest changed their site or sex, so they may sit in the wrong fold. "
            "Re-run `oai label` and then `oai split` (nothing was used)"
        )


def drop_if_stale(session: Session, split_id: int) -> bool:
    """Delete a stale split (its assignments too) so that ``oai split`` makes it again from the
    current data; True when it was stale. A split is found again by its parameters, which a
    changed site does not alter, so without this the stale split would be found and refused."""
    stale = session.scalars(
        select(StaleResult.id).where(StaleResult.kind == SPLIT, StaleResult.target_id == split_id).limit(1)
    ).first()
    if stale is None:
        return False
    session.execute(delete(SplitAssignment).where(SplitAssignment.split_id == split_id))
    session.execute(delete(Split).where(Split.id == split_id))
    clear_stale(session, SPLIT, split_id)
    log.warning("split %d was stale (a subject's site or sex changed): made again from the current data", split_id)
    return True
