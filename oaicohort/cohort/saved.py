"""Saved cohorts: a named query with its frozen result, re-run and cited later.

``save_cohort(db, "my_study", sex="F", variables={"WOMKP@V00": (5, None)})`` stores the query
(filters, options, the definition's name and hash, the split id), the resulting knees with a
content hash, and a *snapshot* of what decided every knee of the definition at that moment
(label, exclusion, baseline KL, age, BMI, the requested variables, each visit's KLG and JSN).

``oaicohort.cohort.saved_check.check_saved(db, "my_study")`` re-runs the query and says whether
the result still equals the saved one, and if not which knees entered or left and why.

``export_saved(db, "my_study")`` gives the frozen list and a provenance header (toolkit version,
the ingest run the labels came from and the sha256 of each of its files) for a methods section.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import defer

from oaicohort import __version__
from oaicohort.cohort.derivation import first_readings
from oaicohort.cohort.labels import xray_readings
from oaicohort.cohort.matching import MatchSpec
from oaicohort.cohort.matching import match as match_knees
from oaicohort.cohort.query import KNEE_COLUMNS
from oaicohort.cohort.variables import QueryError, QueryStateError
from oaicohort.db import Database
from oaicohort.db.schema import IngestFile, IngestRun, SavedCohort
from oaicohort.db.text import text_problem
from oaicohort.errors import DatabaseStateError
from oaicohort.vocabulary import DEFAULT_DEFINITION

KEY = ["subject_id", "side"]
# snapshot fields compared to explain a knee entering or leaving (besides variables and readings)
_SNAPSHOT_FIELDS = ["knee_id", "site", "sex", "age", "bmi", "kl_baseline", "label", "exclusion"]
_READING_FIELDS = {"klg": "KLG", "jsn_medial": "JSM", "jsn_lateral": "JSL"}


# --------------------------------------------------------------------------- JSON of queries


def encode_query(value: Any) -> Any:
    """Query values as JSON: tuples (ranges, (sequence, visit)) stay distinguishable from lists."""
    if isinstance(value, tuple):
        return {"tuple": [encode_query(v) for v in value]}
    if isinstance(value, list):
        return [encode_query(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: encode_query(v) for k, v in value.items()}}
    if value is ...:
        return {"column": True}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def decode_query(value: Any) -> Any:
    if isinstance(value, list):
        return [decode_query(v) for v in value]
    if isinstance(value, dict):
        if "tuple" in value:
            return tuple(decode_query(v) for v in value["tuple"])
        if "dict" in value:
            return {k: decode_query(v) for k, v in value["dict"].items()}
        if "column" in value:
            return ...
    return value


def _columnar(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """A frame as JSON-able columns (missing -> None)."""
    out: dict[str, list[Any]] = {}
    for col in frame.columns:
        values = frame[col].astype(object).where(frame[col].notna(), None).tolist()
        out[str(col)] = [v.item() if isinstance(v, (np.integer, np.floating, np.bool_)) else v for v in values]
    return out


def content_hash(knees: pd.DataFrame) -> str:
    """sha256 of the sorted (subject, side, label) of a cohort: what "the same cohort" means; of a
    matched cohort, with each knee's role and matched set too (the same pairs)."""
    keys = zip(knees["subject_id"], knees["side"], knees["label"])
    rows = [f"{int(s)},{side},{lab}" for s, side, lab in keys]
    if "matched_set" in knees.columns:
        rows = [f"{r},{role},{int(m)}" for r, role, m in zip(rows, knees["match_role"], knees["matched_set"])]
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


# --------------------------------------------------------------------------- snapshot


def snapshot(db: Database, cohort: Any, query: dict[str, Any]) -> pd.DataFrame:
    """What decided every knee of the definition: label fields, variables, readings per visit."""
    variables = list(query["variables"]) if query["variables"] else None
    all_knees = cohort.knees(definition=query["definition"], split=None, include_excluded=True, variables=variables)
    keep = [c for c in all_knees.columns if c in (*KEY, *_SNAPSHOT_FIELDS) or c in (variables or [])]
    snap = all_knees[keep].copy()
    with db.read() as session:
        readings = xray_readings(session)
    if not readings.empty:
        first = first_readings(readings, "first")
        for column, short in _READING_FIELDS.items():
            wide = first.pivot(index="knee_id", columns="visit", values=column)
            wide.columns = [f"V{int(v):02d} {short}" for v in wide.columns]
            snap = snap.merge(wide.reset_index(), on="knee_id", how="left")
    return snap.drop(columns=["knee_id"])


def latest_ingest_run(session: Any) -> int | None:
    return session.execute(
        select(func.max(IngestRun.id)).where(IngestRun.status.in_(("succeeded", "unchanged")))
    ).scalar()


# --------------------------------------------------------------------------- save, check, export


def _query(
    definition: str,
    split: int | str | None,
    include_excluded: bool,
    variables: Any,
    filters: dict[str, Any],
    match: MatchSpec | None = None,
) -> dict[str, Any]:
    if isinstance(variables, (list, tuple)):
        variables = {name: ... for name in variables}
    elif isinstance(variables, str):
        variables = {variables: ...}
    if match is not None:  # the matching reads these columns
        wanted = [n for n in (match.column, *(v.name for v in match.on)) if n not in KNEE_COLUMNS]
        variables = {**{n: ... for n in wanted}, **(variables or {})}
    query = {
        "definition": definition,
        "split": split,
        "include_excluded": include_excluded,
        "variables": dict(variables or {}),
        "filters": dict(filters),
    }
    if match is not None:
        query["match"] = match.to_dict()
    return query


def run_query(cohort: Any, query: dict[str, Any], split: int | str | None) -> pd.DataFrame:
    """The knees of a saved query; of a matched cohort, the matched knees (``attrs["matching"]``:
    balance and unmatched cases)."""
    frame = cohort.knees(
        definition=query["definition"],
        split=split,
        include_excluded=query["include_excluded"],
        variables=query["variables"] or None,
        **query["filters"],
    )
    if query.get("match"):
        frame = match_knees(frame, MatchSpec.from_dict(query["match"])).cohort
    return frame


def save_cohort(
    db: Database,
    name: str,
    *,
    definition: str = DEFAULT_DEFINITION,
    split: int | str | None = "latest",
    include_excluded: bool = False,
    variables: Any = None,
    replace: bool = False,
    match: MatchSpec | None = None,
    **filters: Any,
) -> pd.DataFrame:
    """Run the query and store it, its result and the snapshot under ``name`` (see module doc).

    Returns the result (``attrs["saved"]`` holds the name and content hash). A name already
    used is an error unless ``replace``. With ``match`` the result is the matched cohort, and its
    balance table and unmatched cases are saved with it (:mod:`oaicohort.cohort.matching`).
    """
    from oaicohort.cohort.query import Cohort

    problem = "empty" if not name else text_problem(name, SavedCohort.name)
    if problem is not None:
        raise QueryError(f"saved cohort name {name!r}: {problem}; give a name of 1-64 characters")
    cohort = Cohort(db)
    query = _query(definition, split, include_excluded, variables, filters, match)
    frame = run_query(cohort, query, split)
    query["split"] = frame.attrs.get("split_id")  # the split actually used, frozen
    frozen = snapshot(db, cohort, query)
    digest = content_hash(frame)
    with db.write() as session:
        existing = session.execute(select(SavedCohort).where(SavedCohort.name == name)).scalar_one_or_none()
        if existing is not None:
            if not replace:
                raise QueryStateError(f"a cohort named {name!r} is already saved; choose another name or replace it")
            session.delete(existing)
            session.flush()
        session.add(
            SavedCohort(
                name=name,
                query=encode_query(query),
                definition_name=str(frame.attrs["definition"]),
                params_hash=str(frame.attrs["params_hash"]),
                split_id=frame.attrs.get("split_id"),
                knees=_columnar(frame),
                content_hash=digest,
                snapshot=_columnar(frozen),
                matching=frame.attrs.get("matching"),
                ingest_run_id=latest_ingest_run(session),
                toolkit_version=__version__,
            )
        )
    frame.attrs["saved"] = {"name": name, "content_hash": digest, "knees": len(frame)}
    return frame


def load_saved(session: Any, name: str) -> SavedCohort:
    # the snapshot (every knee of the definition) is read only when a check needs to explain
    row = session.execute(
        select(SavedCohort).options(defer(SavedCohort.snapshot)).where(SavedCohort.name == name)
    ).scalar_one_or_none()
    if row is None:
        names = session.execute(select(SavedCohort.name).order_by(SavedCohort.name)).scalars().all()
        raise DatabaseStateError(
            f"no saved cohort {name!r}; saved cohorts: {', '.join(names) or 'none (oai cohort ... --save NAME)'}"
        )
    return row


def run_files(session: Any, run_id: int | None) -> dict[str, str]:
    if run_id is None:
        return {}
    rows = session.execute(select(IngestFile.relative_path, IngestFile.sha256).where(IngestFile.run_id == run_id)).all()
    return {path: sha for path, sha in rows}


def export_saved(db: Database, name: str) -> tuple[list[str], pd.DataFrame]:
    """The frozen knee list of a saved cohort and its provenance header lines."""
    with db.read() as session:
        row = load_saved(session, name)
        files = run_files(session, row.ingest_run_id)
        run = session.get(IngestRun, row.ingest_run_id) if row.ingest_run_id is not None else None
        frame = pd.DataFrame(row.knees)
        header = [
            f"saved cohort: {row.name} ({len(frame)} knees, content sha256 {row.content_hash})",
            f"saved at: {row.created_at:%Y-%m-%d %H:%M:%S} UTC with oai toolkit {row.toolkit_version}"
            f" (exported with {__version__})",
            f"label definition: {row.definition_name} (params sha256 {row.params_hash})",
            f"split: {row.split_id if row.split_id is not None else 'none'}",
            f"query: {json.dumps(decode_query(row.query), default=str, sort_keys=True)}",
        ]
        if run is not None:
            header.append(
                f"ingest run {run.id}: {run.source_root} ({run.status}, {run.finished_at or run.started_at:%Y-%m-%d})"
            )
        header += [f"  file {path} sha256 {sha}" for path, sha in sorted(files.items())]
    return header, frame


def saved_knees(db: Database, name: str) -> list[tuple[int, str]]:
    """The ``(subject_id, side)`` knees of a saved cohort, in its order (``--cohort NAME`` of
    ``oai predict`` and ``oai explain``)."""
    with db.read() as session:
        knees = load_saved(session, name).knees
    return [(int(s), str(side)) for s, side in zip(knees.get("subject_id", []), knees.get("side", []), strict=True)]


def saved_cohorts(db: Database) -> pd.DataFrame:
    """Every saved cohort: name, knees, content hash, definition, created_at."""
    with db.read() as session:
        rows = session.execute(
            select(
                SavedCohort.name,
                SavedCohort.content_hash,
                SavedCohort.definition_name,
                SavedCohort.ingest_run_id,
                SavedCohort.created_at,
            ).order_by(SavedCohort.name)
        ).all()
    return pd.DataFrame(rows, columns=["name", "content_hash", "definition", "ingest_run_id", "created_at"])


__all__ = [
    "content_hash",
    "decode_query",
    "encode_query",
    "export_saved",
    "latest_ingest_run",
    "load_saved",
    "run_files",
    "run_query",
    "save_cohort",
    "saved_cohorts",
    "saved_knees",
    "snapshot",
]
