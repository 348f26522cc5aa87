"""Time-to-event outcomes of a cohort: ``time_months``, ``event``, ``event_type`` per knee.

A label definition with ``outcome = "time_to_event"`` (:mod:`oaicohort.cohort.definitions`)
stores with every included knee the months to its first event under the definition's rule (the
graded variable, ``min_increase``, the 0 -> 1 rule, how a missing reading or a replacement
counts), or to its last examined visit with a graded reading where it had none (censored). A knee
replacement is an event type of its own (``knee_replacement``), a competing event beside
``progression``. ``event`` is 1 for either and 0 for a censored knee.

``with_event_times(db, knees)`` adds these columns to a :meth:`Cohort.knees` result of such a
definition (``oai cohort --format csv`` exports them); ``time_to_event(cohort, **query)`` is
the query and the columns in one call. Kaplan-Meier curves are :mod:`oaicohort.cohort.kaplan_meier`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import select

from oaicohort.cohort.variables import QueryError
from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import KneeLabel, LabelDefinition

TIME_COLUMNS = ("time_months", "event", "event_type")


def is_time_to_event(db: Database, definition_id: int) -> bool:
    """Whether the stored definition ``definition_id`` is a time-to-event definition."""
    with db.read() as session:
        params = session.execute(select(LabelDefinition.params).where(LabelDefinition.id == definition_id)).scalar()
    return isinstance(params, dict) and params.get("outcome") == "time_to_event"


def with_event_times(db: Database, knees: pd.DataFrame, *, required: bool = False) -> pd.DataFrame:
    """``knees`` (a :meth:`Cohort.knees` result) with :data:`TIME_COLUMNS` after its label
    columns when its definition is a time-to-event one; unchanged otherwise (an error with
    ``required``)."""
    definition_id = int(knees.attrs["definition_id"])
    if not is_time_to_event(db, definition_id):
        if required:
            raise QueryError(
                f"definition {knees.attrs.get('definition')!r} has no times to event: derive one with "
                'outcome = "time_to_event" (oai label --definition-file) and query that'
            )
        return knees
    with db.read() as session:
        times = read_frame(
            session,
            select(KneeLabel.knee_id, KneeLabel.time_months, KneeLabel.event_type).where(
                KneeLabel.definition_id == definition_id
            ),
            ["knee_id", "time_months", "event_type"],
        )
    times["time_months"] = times["time_months"].astype(float)
    times["event"] = pd.array(
        [pd.NA if pd.isna(t) else int(pd.notna(e)) for t, e in zip(times["time_months"], times["event_type"])],
        dtype="Int64",
    )
    out = knees.drop(columns=[c for c in TIME_COLUMNS if c in knees.columns])
    out = out.merge(times[["knee_id", *TIME_COLUMNS]], on="knee_id", how="left")
    after = list(out.columns).index("kl_increase") + 1 if "kl_increase" in out.columns else len(knees.columns)
    rest = [c for c in out.columns if c not in TIME_COLUMNS]
    out = out[[*rest[:after], *TIME_COLUMNS, *rest[after:]]]
    out.attrs = dict(knees.attrs)
    return out


def time_to_event(cohort: Any, **query: Any) -> pd.DataFrame:
    """The knees of ``cohort.knees(**query)`` with :data:`TIME_COLUMNS` (the query's definition
    must be a time-to-event one)."""
    return with_event_times(cohort.db, cohort.knees(**query), required=True)


__all__ = ["TIME_COLUMNS", "is_time_to_event", "time_to_event", "with_event_times"]
