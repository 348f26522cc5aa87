"""Guards of a re-ingest: a file that gave rows or values before and now gives none, or far
fewer, stops it.

A table re-saved with foreign line ends, truncated by a full disk or half copied parses as a valid
file with few or no rows; the ingest would then replace that visit's readings with nothing. So
each file's row count is compared with what the last successful ingest read from the same table
(``ingest_files.n_rows``): a file that now gives fewer than ``SHRINK_FRACTION`` of its earlier
rows stops the ingest (exit 1, naming the file and both counts) unless the user says, with
``oai ingest --allow-shrink``, that the smaller release is what they mean.

An image series that the index files read again no longer list is removed, but one that
preprocessed volumes (or X-ray ROIs) were made from stops the ingest the same way
(``check_no_dropped_series``): removing it would leave those rows pointing at nothing. Series
listed by an index file that is not in the root at all are kept (``ingest.writer``), as when the
root holds no image index.

The same holds for the columns a table may lack (JSN and osteophyte grades, follow-up age and
BMI, sex, replacement dates, series dates...): a file re-exported without one, or with it blanked,
has all its rows, but writing it would empty the values the database holds. Each such column's
values in the file are counted against the values the database holds for the same table and
visit (``check_no_emptied_columns``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oaicohort.db.bulk import chunks
from oaicohort.db.schema import (
    ImageSeries,
    IngestFile,
    IngestRun,
    Knee,
    KneeReplacement,
    Subject,
    SubjectVisit,
    Volume,
    XrayReading,
    XrayRoi,
)
from oaicohort.errors import OAIError
from oaicohort.release.discovery import ALLCLINICAL, CONTENTS, ENROLLEES, OUTCOMES
from oaicohort.release.image_files import IMAGE_SCAN
from oaicohort.release.readers import OUTCOME_FIELDS, allclinical_columns, kxr_columns

if TYPE_CHECKING:
    from oaicohort.ingest.reading import FileRecord, ParsedRelease

# a file giving fewer than half of the rows it gave before has lost data, not shed a few rows
SHRINK_FRACTION = 0.5


class ShrinkingReleaseError(OAIError):
    """A re-ingested file gives far fewer rows than the same table did before."""


def table_key(kind: str, visit: int | None, relative_path: str) -> tuple[str, int | None, str]:
    """The identity of a table across releases: kind and visit (a clinical table may move between
    the flat and per-category layouts); image indexes and image packages, many per visit, by their path."""
    return (kind, visit, relative_path if kind in (CONTENTS, IMAGE_SCAN) else "")


def previous_row_counts(session: Session) -> tuple[int | None, dict[tuple[str, int | None, str], int]]:
    """Row count of every table of the last successful ingest (and that run's id)."""
    last = session.scalars(
        select(IngestRun.id).where(IngestRun.status == "succeeded").order_by(IngestRun.id.desc()).limit(1)
    ).first()
    if last is None:
        return None, {}
    rows = session.execute(
        select(IngestFile.table_kind, IngestFile.visit, IngestFile.relative_path, IngestFile.n_rows).where(
            IngestFile.run_id == last
        )
    )
    return last, {table_key(kind, visit, path): int(n) for kind, visit, path, n in rows}


def check_no_shrink(session: Session, files: Sequence[FileRecord], *, allow_shrink: bool = False) -> None:
    """Raise ``ShrinkingReleaseError`` naming every file that gives none or far fewer rows than the
    same table did in the last successful ingest; nothing when ``allow_shrink``."""
    if allow_shrink:
        return
    run_id, before = previous_row_counts(session)
    shrunk = []
    for f in files:
        was = before.get(table_key(f.kind, f.visit, f.relative_path))
        if was and f.n_rows < was * SHRINK_FRACTION:
            shrunk.append(f"{f.relative_path} gives {f.n_rows:,} rows, ingest run {run_id} read {was:,}")
    if shrunk:
        raise _shrinking(
            shrunk,
            "files",
            "the file looks truncated or damaged, so nothing was changed. If the smaller file is what you "
            "mean, run the ingest again with --allow-shrink",
        )


def _shrinking(found: list[str], things: str, advice: str) -> ShrinkingReleaseError:
    """The error naming the first three of ``found`` (and how many more ``things``), then ``advice``."""
    more = f" (and {len(found) - 3} more {things})" if len(found) > 3 else ""
    return ShrinkingReleaseError("; ".join(found[:3]) + more + ": " + advice)


# --------------------------------------------------------------------------- columns emptied

_ENROLLEE_COLUMNS = {"sex": "P02SEX", "race": "P02RACE", "cohort": "V00COHORT"}
_SERIES_COLUMNS = {
    "study_description": "StudyDescription",
    "study_date": "StudyDate",
    "barcode": "Barcode",
}


def _file_of(release: ParsedRelease, kind: str, visit: int | None = None) -> str:
    names = [f.relative_path for f in release.files if f.kind == kind and (visit is None or f.visit == visit)]
    return ", ".join(names) if names else kind


def _emptied(
    session: Session, model: type, where: Any, frame: pd.DataFrame, columns: dict[str, str], source: str
) -> Iterator[str]:
    """'FILE: column C gives N values, the database holds M' for each of ``columns`` (field ->
    file column) that ``frame`` would empty in the rows of ``model`` matching ``where`` (None: all)."""
    query = select(*(func.count(getattr(model, f)) for f in columns))
    held = session.execute(query if where is None else query.where(where)).one()
    for (field, column), was in zip(columns.items(), held, strict=True):
        now = int(frame[field].notna().sum()) if field in frame.columns else 0
        if was and now < was * SHRINK_FRACTION:
            yield f"{source}: column {column} gives {now:,} values, the database holds {int(was):,}"


def emptied_columns(session: Session, release: ParsedRelease) -> list[str]:
    """Every column of ``release`` that would empty (or mostly empty) values the database holds."""
    found: list[str] = []
    if release.enrollees is not None:
        source = _file_of(release, ENROLLEES)
        found += _emptied(session, Subject, None, release.enrollees, _ENROLLEE_COLUMNS, source)
    for frame in release.subject_visits:
        if len(frame):
            visit = int(frame["visit"].iloc[0])
            source = _file_of(release, ALLCLINICAL, visit)
            columns = allclinical_columns(visit)
            found += _emptied(session, SubjectVisit, SubjectVisit.visit == visit, frame, columns, source)
    for visit, frame in sorted(release.readings.items()):
        source = ", ".join(sorted(frame["source_file"].unique())) if len(frame) else f"kXR_SQ_BU{visit:02d}"
        columns = {**kxr_columns(visit), "read_project": "READPRJ"}
        found += _emptied(session, XrayReading, XrayReading.visit == visit, frame, columns, source)
    if release.outcomes is not None:
        source = _file_of(release, OUTCOMES)
        for side, frame in release.outcomes.groupby("side", sort=False):
            columns = {field: f"V99E{side}K{suffix}" for field, suffix in OUTCOME_FIELDS.items()}
            held = KneeReplacement.knee_id.in_(select(Knee.id).where(Knee.side == side))
            found += _emptied(session, KneeReplacement, held, frame, columns, source)
    if release.series:
        series = pd.concat(release.series, ignore_index=True)
        for visit, frame in series.groupby("visit", sort=True):
            source = ", ".join(sorted(frame["source_file"].unique()))
            found += _emptied(session, ImageSeries, ImageSeries.visit == int(visit), frame, _SERIES_COLUMNS, source)
    return found


def check_no_emptied_columns(session: Session, release: ParsedRelease, *, allow_shrink: bool = False) -> None:
    """Raise ``ShrinkingReleaseError`` naming every column of ``release`` that has none or far fewer
    values than the database holds for the same table and visit; nothing when ``allow_shrink``."""
    if allow_shrink:
        return
    emptied = emptied_columns(session, release)
    if emptied:
        raise _shrinking(
            emptied,
            "columns",
            "the column is missing or blank (a damaged file, or a release form without it), so nothing was "
            "changed. To write the file as it is and empty those values, run the ingest again with --allow-shrink",
        )


# --------------------------------------------------------------------------- image series in use


def check_no_dropped_series(session: Session, release: ParsedRelease, *, allow_shrink: bool = False) -> None:
    """Raise ``ShrinkingReleaseError`` when image series that preprocessed volumes were made from
    are no longer listed by the index files read; nothing when ``allow_shrink`` (the writer then
    removes those volumes with their series)."""
    if allow_shrink:
        return
    from oaicohort.ingest.writer import superseded_series

    dropped = superseded_series(session, release).dropped
    if not dropped:
        return
    used: dict[int, int] = {}
    rois = 0
    for chunk in chunks(sorted(dropped)):
        made = select(Volume.id).where(Volume.series_id.in_(chunk))
        for series_id, n in session.execute(
            select(Volume.series_id, func.count()).where(Volume.series_id.in_(chunk)).group_by(Volume.series_id)
        ):
            if series_id is not None:
                used[int(series_id)] = int(n)
        rois += session.execute(select(func.count()).where(XrayRoi.volume_id.in_(made))).scalar_one()
    if not used:
        return
    files = sorted({dropped[i][-1] for i in used})
    subject, visit, side, sequence, _ = dropped[min(used)]
    with_rois = f", {rois:,} of them X-ray ROIs" if rois else ""
    raise ShrinkingReleaseError(
        f"{', '.join(files[:3])} no longer list{'s' if len(files) == 1 else ''} {len(used):,} image series that {sum(used.values()):,} "
        f"preprocessed volumes were made from{with_rois} (e.g. subject {subject}, visit {visit}, "
        f"{sequence} {side}".rstrip()
        + "): a truncated or partial index would leave those volumes without their series, so nothing was "
        "changed. If the series are gone from the release, run the ingest again with --allow-shrink "
        "(their volumes are then removed from the index too)"
    )
