"""Writing a parsed release to the database (inside the ingest's one write transaction).

Update rules (ids of subjects, knees and image series stay stable because labels, splits and
volumes refer to them) are in ``oaicohort.ingest.run``'s docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from oaicohort.db.bulk import Columns, chunks, frame_columns, insert_rows, python_values, take, update_rows
from oaicohort.db.schema import (
    ClinicalValue,
    ImageSeries,
    Knee,
    KneeReplacement,
    Subject,
    SubjectVisit,
    Volume,
    XrayReading,
    XrayRoi,
)
from oaicohort.db.staleness import mark_stale
from oaicohort.ingest.dictionary import record_categories, record_variables
from oaicohort.ingest.reading import NO_IMAGE_INDEX, ParsedRelease, no_image_index_kept
from oaicohort.progress import ProgressCallback
from oaicohort.release.discovery import CONTENTS, IMAGE03
from oaicohort.release.image_index import SERIES_COLUMNS
from oaicohort.release.readers import OUTCOME_FIELDS
from oaicohort.visits import visit_month

log = logging.getLogger(__name__)

TABLES = (
    "subjects",
    "subject_visits",
    "knees",
    "xray_readings",
    "knee_replacements",
    "image_series",
    "clinical_values",
)


@dataclass
class Counts:
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))


def _upsert(
    session: Session,
    model: type,
    table: str,
    cols: Columns,
    key: Sequence[str],
    existing: dict[tuple[Any, ...], Any],
    counts: Counts,
    pk: str = "id",
) -> None:
    """Insert rows whose natural ``key`` is new, update the others by primary key (bulk)."""
    found = [existing.get(k) for k in zip(*(cols[c] for c in key))]
    new = [i for i, f in enumerate(found) if f is None]
    old = [i for i, f in enumerate(found) if f is not None]
    if not old:
        insert_rows(session, model, cols)
    elif not new:
        update_rows(session, model, {**cols, pk: found}, pk)
    else:
        insert_rows(session, model, take(cols, new))
        update_rows(session, model, {**take(cols, old), pk: [found[i] for i in old]}, pk)
    counts.rows[table] += len(found)
    counts.inserted[table] += len(new)


def _write_subjects(session: Session, release: ParsedRelease, counts: Counts) -> None:
    mark_stale(session, release.enrollees)  # a changed site or sex makes earlier labels/splits stale
    existing = {(sid,): sid for sid in session.scalars(select(Subject.id))}
    enrolled: set[int] = set()
    if release.enrollees is not None:
        cols = frame_columns(release.enrollees, ["site", "sex", "race", "cohort"])
        cols["id"] = python_values(release.enrollees["subject_id"])
        enrolled = set(cols["id"])
        _upsert(session, Subject, "subjects", cols, ["id"], existing, counts)
    seen: set[int] = set()
    for ids in _all_ids(release):
        seen.update(ids.tolist())
    bare = sorted(seen - enrolled - {sid for (sid,) in existing})
    if bare:
        if release.enrollees is not None:
            log.warning(
                "%d participant id(s) appear in other files but not in Enrollees (e.g. %s); added without site/sex",
                len(bare),
                bare[0],
            )
        insert_rows(session, Subject, {"id": bare})
        counts.rows["subjects"] += len(bare)
        counts.inserted["subjects"] += len(bare)


def _all_ids(release: ParsedRelease) -> Iterable[np.ndarray]:
    for frame in release.subject_visits:
        yield frame["subject_id"].to_numpy()
    for frame in release.readings.values():
        yield frame["subject_id"].to_numpy()
    if release.outcomes is not None:
        yield release.outcomes["subject_id"].to_numpy()
    for frame in release.series:
        yield frame["subject_id"].to_numpy()
    yield from release.other_ids


def _knee_map(session: Session) -> dict[tuple[int, str], int]:
    return {(s, side): k for k, s, side in session.execute(select(Knee.id, Knee.subject_id, Knee.side))}


def _write_knees(session: Session, release: ParsedRelease, counts: Counts) -> dict[tuple[int, str], int]:
    wanted: set[tuple[int, str]] = set()
    frames = [*release.readings.values(), *release.series]
    if release.outcomes is not None:
        frames.append(release.outcomes)
    for frame in frames:
        knees = frame.loc[frame["side"].isin(["R", "L"]), ["subject_id", "side"]].drop_duplicates()
        wanted.update(zip(knees["subject_id"].tolist(), knees["side"].tolist()))
    knee_ids = _knee_map(session)
    new = sorted(wanted - set(knee_ids))
    if new:
        insert_rows(session, Knee, {"subject_id": [s for s, _ in new], "side": [side for _, side in new]})
        knee_ids = _knee_map(session)
    counts.rows["knees"] = len(wanted)
    counts.inserted["knees"] = len(new)
    return knee_ids


def _knee_column(frame: pd.DataFrame, knee_ids: dict[tuple[int, str], int]) -> list[int]:
    return [knee_ids[key] for key in zip(frame["subject_id"].tolist(), frame["side"].tolist())]


def _write_subject_visits(session: Session, release: ParsedRelease, counts: Counts) -> None:
    if not release.subject_visits:
        return
    existing = {
        (s, v): i for i, s, v in session.execute(select(SubjectVisit.id, SubjectVisit.subject_id, SubjectVisit.visit))
    }
    for frame in release.subject_visits:
        if not len(frame):
            continue
        visit = int(frame["visit"].iloc[0])
        cols = frame_columns(frame, ["subject_id", "visit", "age", "bmi", "visit_date"], month=visit_month(visit))
        _upsert(session, SubjectVisit, "subject_visits", cols, ["subject_id", "visit"], existing, counts)


_READING_FIELDS = (
    "read_project",
    "klg",
    "klg_missing_code",
    "jsn_medial",
    "jsn_lateral",
    "osteophyte_fm",
    "osteophyte_fl",
    "osteophyte_tm",
    "osteophyte_tl",
    "source_file",
    "source_row",
)


def _write_readings(
    session: Session, release: ParsedRelease, knee_ids: dict[tuple[int, str], int], counts: Counts
) -> None:
    for visit, frame in sorted(release.readings.items()):
        removed = session.execute(delete(XrayReading).where(XrayReading.visit == visit))
        counts.removed["xray_readings"] += max(getattr(removed, "rowcount", 0) or 0, 0)  # a DML result
        cols = frame_columns(frame, _READING_FIELDS, visit=visit, month=visit_month(visit))
        cols["knee_id"] = _knee_column(frame, knee_ids)
        insert_rows(session, XrayReading, cols)
        counts.rows["xray_readings"] += len(frame)
        counts.inserted["xray_readings"] += len(frame)


def _write_outcomes(
    session: Session, release: ParsedRelease, knee_ids: dict[tuple[int, str], int], counts: Counts
) -> None:
    if release.outcomes is None:
        return
    frame = release.outcomes
    cols = frame_columns(frame, list(OUTCOME_FIELDS))
    cols["knee_id"] = _knee_column(frame, knee_ids)
    existing = {(k,): k for k in session.scalars(select(KneeReplacement.knee_id))}
    _upsert(session, KneeReplacement, "knee_replacements", cols, ["knee_id"], existing, counts, pk="knee_id")


_SERIES_KEY = ("subject_id", "visit", "side", "sequence")


@dataclass(frozen=True)
class SupersededSeries:
    """Index rows a release would replace: those its index files no longer list (``dropped``),
    and those listed by an index file that is not in this root (``kept``: never removed, as when
    the root holds no index at all)."""

    dropped: dict[int, tuple[Any, ...]]  # id -> (subject, visit, side, sequence, source_file)
    kept: dict[int, tuple[Any, ...]]


def release_series(release: ParsedRelease) -> pd.DataFrame | None:
    """The release's image series, one row per (subject, visit, side, sequence): several packages
    of one visit may list the same series, and the later file wins, as a rescan."""
    if not release.series:
        return None
    return pd.concat(release.series, ignore_index=True).drop_duplicates(list(_SERIES_KEY), keep="last")


def superseded_series(session: Session, release: ParsedRelease) -> SupersededSeries:
    """The stored series of the subjects and visits the release indexes that it no longer lists
    (see :class:`SupersededSeries`). Per subject and visit, not per visit, because image packages
    split one visit over several folders; only rows whose index file was read again are dropped."""
    frame = release_series(release)
    if frame is None:
        return SupersededSeries({}, {})
    read = set(frame["source_file"]) | {f.relative_path for f in release.files if f.kind in (CONTENTS, IMAGE03)}
    listed = set(zip(*(frame[c].tolist() for c in _SERIES_KEY)))
    covered = set(zip(frame["subject_id"].tolist(), frame["visit"].tolist()))
    visits = sorted(int(v) for v in frame["visit"].unique())
    dropped: dict[int, tuple[Any, ...]] = {}
    kept: dict[int, tuple[Any, ...]] = {}
    for i, *key, source in session.execute(
        select(
            ImageSeries.id,
            ImageSeries.subject_id,
            ImageSeries.visit,
            ImageSeries.side,
            ImageSeries.sequence,
            ImageSeries.source_file,
        ).where(ImageSeries.visit.in_(visits))
    ):
        if tuple(key[:2]) in covered and tuple(key) not in listed:
            (dropped if source in read else kept)[i] = (*key, source)
    return SupersededSeries(dropped, kept)


def _write_series(session: Session, release: ParsedRelease, counts: Counts) -> None:
    frame = release_series(release)
    if frame is None:
        held = session.execute(select(func.count(ImageSeries.id))).scalar_one()
        if held and NO_IMAGE_INDEX in release.warnings:  # the warning would not be true: nothing is removed
            release.warnings[release.warnings.index(NO_IMAGE_INDEX)] = no_image_index_kept(held)
        return
    visits = sorted(int(v) for v in frame["visit"].unique())
    existing: dict[tuple[Any, ...], int] = {}
    for i, s, v, side, seq in session.execute(
        select(ImageSeries.id, ImageSeries.subject_id, ImageSeries.visit, ImageSeries.side, ImageSeries.sequence).where(
            ImageSeries.visit.in_(visits)
        )
    ):
        existing[(s, v, side, seq)] = i
    cols = frame_columns(frame, SERIES_COLUMNS)
    months = {v: visit_month(v) for v in visits}
    cols["month"] = [months[v] for v in cols["visit"]]
    superseded = superseded_series(session, release)
    if superseded.kept:
        files = sorted({row[-1] for row in superseded.kept.values()})
        release.warnings.append(
            f"{', '.join(files[:3])}: not in this root (an image package left out?), so the {len(superseded.kept)} "
            "image series it listed for the subjects and visits indexed here are kept"
        )
    stale = sorted(superseded.dropped)
    if stale:
        # only with --allow-shrink (ingest.guards): the volumes made from them go with them,
        # the same on every back-end (never a dangling or NULL series id)
        made = select(Volume.id).where(Volume.series_id.in_(stale))
        session.execute(delete(XrayRoi).where(XrayRoi.volume_id.in_(made)))
        gone = session.execute(delete(Volume).where(Volume.series_id.in_(stale)))
        removed_volumes = max(getattr(gone, "rowcount", 0) or 0, 0)
        if removed_volumes:
            release.warnings.append(
                f"{len(stale)} image series no longer listed were removed, with the {removed_volumes} "
                "preprocessed volumes made from them (--allow-shrink)"
            )
        for chunk in chunks(stale):
            session.execute(delete(ImageSeries).where(ImageSeries.id.in_(chunk)))
        counts.removed["image_series"] += len(stale)
    _upsert(session, ImageSeries, "image_series", cols, _SERIES_KEY, existing, counts)


def _write_clinical(session: Session, release: ParsedRelease, counts: Counts) -> None:
    frames = [f for f in release.clinical if len(f)]
    if not frames:
        return
    frame = pd.concat(frames, ignore_index=True)
    names = sorted(frame["variable"].unique().tolist())
    existing = {
        (s, v): i
        for i, s, v in session.execute(
            select(ClinicalValue.id, ClinicalValue.subject_id, ClinicalValue.variable).where(
                ClinicalValue.variable.in_(names)
            )
        )
    }
    cols = frame_columns(frame, ["subject_id", "variable", "value_text", "value_num", "missing_code", "source_file"])
    _upsert(session, ClinicalValue, "clinical_values", cols, ["subject_id", "variable"], existing, counts)
    record_variables(session, frame)  # data dictionary and knee-side pairs (oaicohort.ingest.dictionary)


def write_tables(session: Session, release: ParsedRelease, counts: Counts, progress: ProgressCallback) -> None:
    # subjects, then knees: every other table refers to them
    task, total = "writing database", 7
    progress(task, 0, total)
    _write_subjects(session, release, counts)
    progress(task, 1, total)
    knee_ids = _write_knees(session, release, counts)
    progress(task, 2, total)
    _write_subject_visits(session, release, counts)
    progress(task, 3, total)
    _write_readings(session, release, knee_ids, counts)
    progress(task, 4, total)
    _write_outcomes(session, release, knee_ids, counts)
    progress(task, 5, total)
    _write_series(session, release, counts)
    progress(task, 6, total)
    _write_clinical(session, release, counts)
    record_categories(session, release.dictionary)  # what an NDA package's text categories mean
    progress(task, 7, total)
