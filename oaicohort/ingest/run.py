"""``oai ingest``: one OAI release below a root folder -> the cohort database, in one transaction.

The unit of work:

0. commit a ``running`` provenance row naming this process (a killed ingest leaves this trace;
   the next ingest marks it ``interrupted`` once ``oaicohort.db.writers`` shows its process is
   gone, never while it runs);
1. find the OAI files below ROOT (``oai_tables.discover_release``) and hash them. If the last
   successful run read exactly these files (same root, same sha256s) and every variable asked
   for, record an ``unchanged`` run and stop: nothing is parsed, no data row changes;
2. otherwise read each file once (checking that its bytes still have the hash just taken) and
   parse only the columns needed, before any database lock is taken;
3. in ONE write transaction, upsert by natural keys and mark the run ``succeeded`` with its
   files (the ``unchanged`` check is repeated there, against a concurrent ingest);
4. on any failure the data transaction rolls back; the run is then marked ``failed`` (or
   ``interrupted``) in a separate small transaction, so provenance shows the attempt but no data
   changed. A process killed at any point leaves the data as it was before it started.

Update rules for a newer release (ids of subjects, knees and image series stay stable because
labels, splits and volumes refer to them):

- subjects: upsert by OAI id; Enrollees values overwrite; ids seen only in other files get a
  bare row (logged).
- knees: inserted when first seen as (subject, side); never deleted.
- subject_visits: upsert by (subject, visit); clinical_values: upsert by (subject, variable).
- xray_readings: a ``kXR_SQ_BU{vv}`` file is the whole truth for its visit, so that visit's
  readings are replaced.
- knee_replacements: upsert by knee.
- image_series: upsert by (subject, visit, side, sequence); a subject's series at a visit that
  the new ``contents.csv`` files no longer list are removed. Done per subject and visit, not per
  visit, because image packages split one visit over several folders.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from oaicohort import __version__
from oaicohort.cohort.staleness import mark_stale
from oaicohort.db import Database
from oaicohort.db.schema import (
    ClinicalValue,
    ImageSeries,
    IngestFile,
    IngestRun,
    Knee,
    KneeReplacement,
    Subject,
    SubjectVisit,
    XrayReading,
    utcnow,
)
from oaicohort.db.writers import RunLease, WriterIdentity, writer_gone
from oaicohort.errors import ConcurrentWriteError, InputFileError, OAIError
from oaicohort.ingest.guards import check_no_shrink
from oaicohort.ingest.ranges import clear_impossible_values
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.release import tables as ot
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
# files searched for --variables, in this order
VARIABLE_KINDS = (ot.ENROLLEES, ot.SUBJECTCHAR, ot.ALLCLINICAL)
_VARIABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CHUNK = 500  # ids per IN (...) clause; well under every back-end's bound-parameter limit


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FileRecord:
    """Provenance of one source file of an ingest run."""

    relative_path: str
    kind: str
    visit: int | None
    sha256: str
    size_bytes: int
    n_rows: int


@dataclass
class IngestResult:
    """What an ingest did. ``rows``: rows this release wrote per table (0 when ``unchanged``);
    ``inserted`` / ``removed``: how many of them were new, and rows dropped as superseded."""

    run_id: int
    status: str  # succeeded | unchanged
    root: str
    files: list[FileRecord]
    rows: dict[str, int]
    inserted: dict[str, int]
    removed: dict[str, int]
    variables: list[str]
    seconds: float

    @property
    def tables(self) -> list[str]:
        return [t for t in TABLES if self.rows.get(t)]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tables"] = self.tables
        out["n_files"] = len(self.files)
        return out


# --------------------------------------------------------------------------- variables


def parse_variables(text: str, *, source: Path | None = None, line: int | None = None) -> list[str]:
    """``"V00WOMKPR, P01INJR"`` -> ``["V00WOMKPR", "P01INJR"]`` (upper case, order kept, no repeats)."""
    names: list[str] = []
    for token in re.split(r"[\s,;]+", text.strip()):
        if not token:
            continue
        if not _VARIABLE_NAME.fullmatch(token):
            message = f"{token!r} is not an OAI variable name (letters, digits, underscore)"
            if source is not None:
                raise InputFileError(source, message, line=line)
            raise OAIError(f"--variables: {message}")
        if token.upper() not in names:
            names.append(token.upper())
    return names


def read_variables_file(path: Path | str) -> list[str]:
    """Variable names from a text file: separated by commas or white space, ``#`` starts a comment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputFileError(path, f"cannot read variables file: {exc.strerror or exc}") from None
    names: list[str] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        for name in parse_variables(raw_line.split("#", 1)[0], source=path, line=number):
            if name not in names:
                names.append(name)
    return names


# --------------------------------------------------------------------------- reading


@dataclass
class ParsedRelease:
    """Everything an ingest writes, parsed and validated before the database is touched."""

    root: Path
    files: list[FileRecord] = field(default_factory=list)
    enrollees: pd.DataFrame | None = None
    subject_visits: list[pd.DataFrame] = field(default_factory=list)
    readings: dict[int, pd.DataFrame] = field(default_factory=dict)
    outcomes: pd.DataFrame | None = None
    series: list[pd.DataFrame] = field(default_factory=list)
    clinical: list[pd.DataFrame] = field(default_factory=list)
    other_ids: list[np.ndarray] = field(default_factory=list)  # ids of SubjectChar files
    warnings: list[str] = field(default_factory=list)  # values set missing (ingest.ranges)


def locate_variables(sources: Sequence[ot.SourceFile], variables: Sequence[str]) -> dict[str, ot.SourceFile]:
    """The file each requested variable is read from (the first in ``VARIABLE_KINDS`` order).

    Only header lines are read. A variable found nowhere is an error naming it.
    """
    order = {kind: i for i, kind in enumerate(VARIABLE_KINDS)}
    candidates = sorted(
        (s for s in sources if s.kind in order),
        key=lambda s: (order[s.kind], s.visit or 0, s.relative_path),
    )
    located: dict[str, ot.SourceFile] = {}
    remaining = [v.upper() for v in variables]
    for source in candidates:
        if not remaining:
            break
        header = set(ot.read_header(source))
        for name in [v for v in remaining if v in header]:
            located[name] = source
            remaining.remove(name)
    if remaining:
        raise OAIError(
            f"variable(s) {', '.join(remaining)} not found in any Enrollees, SubjectChar or "
            f"AllClinical file ({len(candidates)} searched)"
        )
    return located


def find_sources(root: Path | str) -> list[ot.SourceFile]:
    """The OAI files below ``root``; finding none is an error (a wrong or empty ROOT)."""
    root_path = Path(root).expanduser()
    sources = ot.discover_release(root_path)
    if not sources:
        raise InputFileError(
            root_path,
            "no OAI tables found below this folder (looked for Enrollees.txt, AllClinical{vv}.txt, "
            "SubjectChar00.txt, Outcomes99.txt, kXR_SQ_BU{vv}.txt and <visit dir>/contents.csv)",
        )
    return sources


def fingerprint(sources: Sequence[ot.SourceFile], progress: ProgressCallback = no_progress) -> dict[str, str]:
    """sha256 of every source file by relative path (one streaming read each, nothing parsed)."""
    out: dict[str, str] = {}
    progress("checking files", 0, len(sources))
    for i, source in enumerate(sources, start=1):
        out[source.relative_path] = ot.hash_source(source)
        progress("checking files", i, len(sources))
    return out


def read_release(
    root: Path | str,
    variables: Sequence[str] = (),
    progress: ProgressCallback = no_progress,
    *,
    sources: Sequence[ot.SourceFile] | None = None,
    expected: dict[str, str] | None = None,
) -> ParsedRelease:
    """Find, hash and parse every OAI file below ``root`` (no database involved).

    ``expected``: sha256 by relative path from an earlier ``fingerprint``; a file whose content
    changed since is an error, so that the provenance recorded is that of the data parsed.
    """
    root_path = Path(root).expanduser()
    sources = find_sources(root_path) if sources is None else sources
    located = locate_variables(sources, variables)
    wanted: dict[str, list[str]] = {}
    for name, source in located.items():
        wanted.setdefault(source.relative_path, []).append(name)
    release = ParsedRelease(root=root_path.resolve())
    total = len(sources)
    progress("reading files", 0, total)
    for i, source in enumerate(sources, start=1):
        raw = ot.load_source(source)
        if expected is not None and expected.get(source.relative_path) != raw.sha256:
            raise InputFileError(source.path, "the file changed while being ingested; run the ingest again")
        n_rows = _parse_into(release, raw, wanted.get(source.relative_path, []))
        release.files.append(
            FileRecord(source.relative_path, source.kind, source.visit, raw.sha256, raw.size_bytes, n_rows)
        )
        log.debug("%s: %d rows", source.relative_path, n_rows)
        progress("reading files", i, total)
    return release


def _parse_into(release: ParsedRelease, raw: ot.FileBytes, variables: list[str]) -> int:
    kind = raw.source.kind
    if kind == ot.ENROLLEES:
        frame, table = ot.read_enrollees(raw, variables)
        release.enrollees = frame
        release.clinical.append(ot.clinical_values(table, variables, frame["subject_id"].to_numpy()))
        return len(frame)
    if kind == ot.ALLCLINICAL:
        frame, table = ot.read_allclinical(raw, variables)
        release.warnings += clear_impossible_values(
            frame, raw.source.path, ot.allclinical_columns(raw.source.visit or 0)
        )
        release.subject_visits.append(frame)
        release.clinical.append(ot.clinical_values(table, variables, frame["subject_id"].to_numpy()))
        return len(frame)
    if kind == ot.SUBJECTCHAR:
        ids, table = ot.read_subjectchar(raw, variables)
        release.other_ids.append(ids)
        release.clinical.append(ot.clinical_values(table, variables, ids))
        return len(table)
    if kind == ot.KXR_SQ_BU:
        frame = ot.read_kxr(raw)
        assert raw.source.visit is not None
        release.readings[raw.source.visit] = frame
        return len(frame)
    if kind == ot.OUTCOMES:
        release.outcomes = ot.read_outcomes(raw)
        return len(release.outcomes) // 2
    if kind == ot.CONTENTS:
        frame = ot.read_contents(raw)
        release.series.append(frame)
        return len(frame)
    raise AssertionError(f"unhandled kind {kind}")  # discover_release only yields the above


# --------------------------------------------------------------------------- writing


# Rows travel column-wise, {column: [values]}: building a dict per row would cost more than
# the database inserts themselves at OAI size.
Columns = dict[str, list[Any]]


def _python(series: pd.Series) -> list[Any]:
    """Column values as Python objects with None for every kind of missing (DB drivers need it)."""
    values = series.astype(object)
    return values.where(series.notna(), None).tolist()


def _columns(frame: pd.DataFrame, names: Sequence[str], **constants: Any) -> Columns:
    out = {name: _python(frame[name]) for name in names}
    out.update({name: [value] * len(frame) for name, value in constants.items()})
    return out


def _n_rows(cols: Columns) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def _take(cols: Columns, rows: list[int]) -> Columns:
    return {name: [values[i] for i in rows] for name, values in cols.items()}


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Counts:
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))


def _executemany(session: Session, stmt: Any, binds: dict[str, tuple[str, Any]], cols: Columns) -> None:
    """Run ``stmt`` once per row as ONE driver executemany.

    ``binds`` maps each bind parameter of ``stmt`` to ``(column key, column type)``. Values are
    converted column-wise with the types' bind processors, skipping SQLAlchemy's per-row
    parameter handling, which would cost more than the inserts themselves (the ORM bulk paths
    are worse still: they split batches wherever the pattern of NULLs changes).
    """
    if not _n_rows(cols):
        return
    conn = session.connection()
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect)
    values: dict[str, list[Any]] = {}
    for name, (key, type_) in binds.items():
        process = type_.dialect_impl(dialect).bind_processor(dialect)
        values[name] = [process(v) for v in cols[key]] if process else cols[key]
    if compiled.positional:
        params: list[Any] = list(zip(*(values[n] for n in compiled.positiontup or ())))
    else:
        names = list(values)
        params = [dict(zip(names, row)) for row in zip(*values.values())]
    conn.exec_driver_sql(str(compiled), params)


def _insert(session: Session, model: type, cols: Columns) -> None:
    """Bulk insert."""
    t = model.__table__  # type: ignore[attr-defined]
    stmt = insert(t).values({k: bindparam(f"v_{k}", type_=t.c[k].type) for k in cols})
    _executemany(session, stmt, {f"v_{k}": (k, t.c[k].type) for k in cols}, cols)


def _update(session: Session, model: type, cols: Columns, pk: str) -> None:
    """Bulk update by primary key ``pk`` (a column of ``cols``)."""
    t = model.__table__  # type: ignore[attr-defined]
    keys = [k for k in cols if k != pk]
    stmt = (
        update(t)
        .where(t.c[pk] == bindparam("pk_", type_=t.c[pk].type))
        .values({k: bindparam(f"v_{k}", type_=t.c[k].type) for k in keys})
    )
    binds = {f"v_{k}": (k, t.c[k].type) for k in keys}
    binds["pk_"] = (pk, t.c[pk].type)
    _executemany(session, stmt, binds, cols)


def _upsert(
    session: Session,
    model: type,
    table: str,
    cols: Columns,
    key: Sequence[str],
    existing: dict[tuple[Any, ...], Any],
    counts: _Counts,
    pk: str = "id",
) -> None:
    """Insert rows whose natural ``key`` is new, update the others by primary key (bulk)."""
    found = [existing.get(k) for k in zip(*(cols[c] for c in key))]
    new = [i for i, f in enumerate(found) if f is None]
    old = [i for i, f in enumerate(found) if f is not None]
    if not old:
        _insert(session, model, cols)
    elif not new:
        _update(session, model, {**cols, pk: found}, pk)
    else:
        _insert(session, model, _take(cols, new))
        _update(session, model, {**_take(cols, old), pk: [found[i] for i in old]}, pk)
    counts.rows[table] += len(found)
    counts.inserted[table] += len(new)


def _write_subjects(session: Session, release: ParsedRelease, counts: _Counts) -> None:
    mark_stale(session, release.enrollees)  # a changed site or sex makes earlier labels/splits stale
    existing = {(sid,): sid for sid in session.scalars(select(Subject.id))}
    enrolled: set[int] = set()
    if release.enrollees is not None:
        cols = _columns(release.enrollees, ["site", "sex", "race", "cohort"])
        cols["id"] = _python(release.enrollees["subject_id"])
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
        _insert(session, Subject, {"id": bare})
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


def _write_knees(session: Session, release: ParsedRelease, counts: _Counts) -> dict[tuple[int, str], int]:
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
        _insert(session, Knee, {"subject_id": [s for s, _ in new], "side": [side for _, side in new]})
        knee_ids = _knee_map(session)
    counts.rows["knees"] = len(wanted)
    counts.inserted["knees"] = len(new)
    return knee_ids


def _knee_column(frame: pd.DataFrame, knee_ids: dict[tuple[int, str], int]) -> list[int]:
    return [knee_ids[key] for key in zip(frame["subject_id"].tolist(), frame["side"].tolist())]


def _write_subject_visits(session: Session, release: ParsedRelease, counts: _Counts) -> None:
    if not release.subject_visits:
        return
    existing = {
        (s, v): i for i, s, v in session.execute(select(SubjectVisit.id, SubjectVisit.subject_id, SubjectVisit.visit))
    }
    for frame in release.subject_visits:
        if not len(frame):
            continue
        visit = int(frame["visit"].iloc[0])
        cols = _columns(frame, ["subject_id", "visit", "age", "bmi", "visit_date"], month=visit_month(visit))
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
    session: Session, release: ParsedRelease, knee_ids: dict[tuple[int, str], int], counts: _Counts
) -> None:
    for visit, frame in sorted(release.readings.items()):
        removed = session.execute(delete(XrayReading).where(XrayReading.visit == visit))
        counts.removed["xray_readings"] += max(removed.rowcount or 0, 0)
        cols = _columns(frame, _READING_FIELDS, visit=visit, month=visit_month(visit))
        cols["knee_id"] = _knee_column(frame, knee_ids)
        _insert(session, XrayReading, cols)
        counts.rows["xray_readings"] += len(frame)
        counts.inserted["xray_readings"] += len(frame)


def _write_outcomes(
    session: Session, release: ParsedRelease, knee_ids: dict[tuple[int, str], int], counts: _Counts
) -> None:
    if release.outcomes is None:
        return
    frame = release.outcomes
    cols = _columns(frame, list(ot.OUTCOME_FIELDS))
    cols["knee_id"] = _knee_column(frame, knee_ids)
    existing = {(k,): k for k in session.scalars(select(KneeReplacement.knee_id))}
    _upsert(session, KneeReplacement, "knee_replacements", cols, ["knee_id"], existing, counts, pk="knee_id")


_SERIES_FIELDS = (
    "subject_id",
    "visit",
    "side",
    "sequence",
    "series_description",
    "study_description",
    "folder",
    "visit_dir",
    "study_date",
    "barcode",
    "source_file",
    "source_row",
)
_SERIES_KEY = ("subject_id", "visit", "side", "sequence")


def _write_series(session: Session, release: ParsedRelease, counts: _Counts) -> None:
    if not release.series:
        return
    # several packages of one visit may list the same series: the later file wins, as a rescan
    frame = pd.concat(release.series, ignore_index=True).drop_duplicates(list(_SERIES_KEY), keep="last")
    visits = sorted(int(v) for v in frame["visit"].unique())
    existing: dict[tuple[Any, ...], int] = {}
    for i, s, v, side, seq in session.execute(
        select(ImageSeries.id, ImageSeries.subject_id, ImageSeries.visit, ImageSeries.side, ImageSeries.sequence).where(
            ImageSeries.visit.in_(visits)
        )
    ):
        existing[(s, v, side, seq)] = i
    cols = _columns(frame, _SERIES_FIELDS)
    months = {v: visit_month(v) for v in visits}
    cols["month"] = [months[v] for v in cols["visit"]]
    if existing:
        listed = set(zip(*(cols[c] for c in _SERIES_KEY)))
        covered = set(zip(cols["subject_id"], cols["visit"]))
        stale = [i for key, i in existing.items() if key[:2] in covered and key not in listed]
        for chunk in _chunks(stale):
            session.execute(delete(ImageSeries).where(ImageSeries.id.in_(chunk)))
        counts.removed["image_series"] += len(stale)
    _upsert(session, ImageSeries, "image_series", cols, _SERIES_KEY, existing, counts)


def _write_clinical(session: Session, release: ParsedRelease, counts: _Counts) -> None:
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
    cols = _columns(frame, ["subject_id", "variable", "value_text", "value_num", "missing_code", "source_file"])
    _upsert(session, ClinicalValue, "clinical_values", cols, ["subject_id", "variable"], existing, counts)


def _last_success(session: Session) -> IngestRun | None:
    return session.scalars(
        select(IngestRun).where(IngestRun.status == "succeeded").order_by(IngestRun.id.desc()).limit(1)
    ).first()


def _unchanged_since(session: Session, root: Path, files: dict[str, str], variables: Sequence[str]) -> IngestRun | None:
    """The last successful run, if it read exactly these files (same root, same sha256s) and
    every variable asked for now; None otherwise."""
    last = _last_success(session)
    if last is None or last.source_root != str(root):
        return None
    before = {(f.relative_path, f.sha256) for f in last.files}
    had = set((last.summary or {}).get("variables", []))
    return last if before == set(files.items()) and set(variables) <= had else None


def _add_run(
    session: Session,
    root: Path,
    files: Sequence[FileRecord],
    status: str,
    started: dt.datetime,
    summary: dict[str, Any],
    run_id: int | None = None,
) -> IngestRun:
    """Record the outcome: on the ``running`` row ``run_id`` when given, else on a new row."""
    run = session.get(IngestRun, run_id) if run_id is not None else None
    if run is None:
        run = IngestRun(started_at=started, toolkit_version=__version__)
        session.add(run)
    run.source_root = str(root)
    run.finished_at = utcnow()
    run.status = status
    run.summary = summary
    run.error = None
    session.flush()
    _insert(
        session,
        IngestFile,
        {
            "run_id": [run.id] * len(files),
            "relative_path": [f.relative_path for f in files],
            "table_kind": [f.kind for f in files],
            "visit": [f.visit for f in files],
            "sha256": [f.sha256 for f in files],
            "size_bytes": [f.size_bytes for f in files],
            "n_rows": [f.n_rows for f in files],
        },
    )
    return run


def _summary(counts: _Counts, variables: Sequence[str], n_files: int, seconds: float) -> dict[str, Any]:
    return {
        "rows": counts.rows,
        "inserted": counts.inserted,
        "removed": counts.removed,
        "variables": list(variables),
        "n_files": n_files,
        "seconds": round(seconds, 3),
    }


def record_if_unchanged(
    db: Database,
    root: Path,
    files: dict[str, str],
    *,
    variables: Sequence[str] = (),
    started: dt.datetime | None = None,
    t0: float | None = None,
    run_id: int | None = None,
) -> IngestResult | None:
    """Record an ``unchanged`` run when ``files`` (sha256 by relative path) are what the last
    successful run read; None (and nothing written) otherwise. Nothing is parsed.

    ``run_id``: the ``running`` row to complete (see ``ingest_release``); else a new row."""
    started = started or utcnow()
    t0 = time.perf_counter() if t0 is None else t0
    counts = _Counts()
    with db.write() as session:
        last = _unchanged_since(session, root, files, variables)
        if last is None:
            return None
        records = [
            FileRecord(f.relative_path, f.table_kind, f.visit, f.sha256, f.size_bytes, f.n_rows)
            for f in sorted(last.files, key=lambda f: f.relative_path)
        ]
        seconds = time.perf_counter() - t0
        run = _add_run(
            session, root, records, "unchanged", started, _summary(counts, variables, len(records), seconds), run_id
        )
        run_id = run.id
    log.info("%s: same files as ingest run %d; nothing to change", root, last.id)
    return IngestResult(
        run_id=run_id,
        status="unchanged",
        root=str(root),
        files=records,
        rows=counts.rows,
        inserted=counts.inserted,
        removed=counts.removed,
        variables=list(variables),
        seconds=time.perf_counter() - t0,
    )


def _write_tables(session: Session, release: ParsedRelease, counts: _Counts, progress: ProgressCallback) -> None:
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
    progress(task, 7, total)


def write_release(
    db: Database,
    release: ParsedRelease,
    *,
    variables: Sequence[str] = (),
    started: dt.datetime | None = None,
    progress: ProgressCallback = no_progress,
    t0: float | None = None,
    run_id: int | None = None,
    allow_shrink: bool = False,
) -> IngestResult:
    """Write a parsed release in one transaction (or record it as ``unchanged``).

    ``allow_shrink``: write even a file that gives far fewer rows than before (ingest.guards).

    ``run_id``: the ``running`` row to complete (see ``ingest_release``); else a new row."""
    started = started or utcnow()
    t0 = time.perf_counter() if t0 is None else t0
    counts = _Counts()
    with db.write() as session:
        files = {f.relative_path: f.sha256 for f in release.files}
        if _unchanged_since(session, release.root, files, variables) is not None:
            status = "unchanged"
            log.info("%s: same files as the last successful ingest; nothing to change", release.root)
        else:
            status = "succeeded"
            check_no_shrink(session, release.files, allow_shrink=allow_shrink)
            _write_tables(session, release, counts, progress)
        summary = _summary(counts, variables, len(release.files), time.perf_counter() - t0)
        if release.warnings:
            summary["warnings"] = release.warnings[:1000]
        run = _add_run(session, release.root, release.files, status, started, summary, run_id)
        run_id = run.id
    return IngestResult(
        run_id=run_id,
        status=status,
        root=str(release.root),
        files=list(release.files),
        rows=counts.rows,
        inserted=counts.inserted,
        removed=counts.removed,
        variables=list(variables),
        seconds=time.perf_counter() - t0,
    )


def _source_root(root: Path | str) -> str:
    try:
        return str(Path(root).expanduser().resolve())
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return str(root)


_INTERRUPTED = (
    "the ingest process ended before recording its outcome (killed, crashed or out of memory); "
    "nothing of this run was written"
)


def _writer_gone(session: Session, run: IngestRun) -> bool:
    return writer_gone(session, run.id, run.writer_host, run.writer_pid, run.writer_start)


def mark_interrupted_runs(session: Session) -> list[int]:
    """Mark ``running`` runs whose writer is certainly gone as ``interrupted`` (oaicohort.db.writers);
    a concurrent ingest that is still running is left alone. Returns the ids marked."""
    marked = []
    for run in session.scalars(select(IngestRun).where(IngestRun.status == "running").order_by(IngestRun.id)):
        if not _writer_gone(session, run):
            continue
        run.status, run.finished_at, run.error = "interrupted", utcnow(), _INTERRUPTED
        marked.append(run.id)
    if marked:
        log.warning(
            "ingest run(s) %s were left running by a process that is gone: marked interrupted",
            ", ".join(map(str, marked)),
        )
    return marked


def list_runs(db: Database, limit: int = 20) -> list[dict[str, Any]]:
    """The latest ``limit`` ingest runs, newest first. A ``running`` run whose writer is gone is
    shown ``interrupted`` (the next ingest records it so); nothing is written."""
    with db.read() as session:
        runs = session.scalars(select(IngestRun).order_by(IngestRun.id.desc()).limit(limit)).all()
        out = []
        for run in runs:
            status = "interrupted" if run.status == "running" and _writer_gone(session, run) else run.status
            out.append(
                {
                    "run_id": run.id,
                    "status": status,
                    "source_root": run.source_root,
                    "started_at": run.started_at,
                    "finished_at": run.finished_at,
                    "writer": f"{run.writer_host}:{run.writer_pid}" if run.writer_host else None,
                    "error": run.error if status == run.status else _INTERRUPTED,
                }
            )
    return out


@contextmanager
def _running_run(db: Database, root: Path | str, started: dt.datetime) -> Iterator[int]:
    """Commit a ``running`` row for this ingest (a killed ingest leaves this trace) and hold its
    lease until the outcome is recorded; runs of processes that are gone are marked first."""
    writer = WriterIdentity.current()
    with db.write() as session:
        mark_interrupted_runs(session)
        run = IngestRun(
            source_root=_source_root(root),
            started_at=started,
            status="running",
            toolkit_version=__version__,
            writer_host=writer.host,
            writer_pid=writer.pid,
            writer_start=writer.start,
        )
        session.add(run)
        session.flush()
        run_id = run.id
        # taken before the commit: no one sees this row running without its lease
        lease = RunLease.take(db, run_id)
    try:
        yield run_id
    finally:
        lease.release()


def _record_failure(db: Database, run_id: int, status: str, exc: BaseException) -> None:
    """Provenance of a run that changed nothing; never masks the original error."""
    if isinstance(exc, ConcurrentWriteError):
        # the lock is still taken; waiting again would double the wait. The row stays running
        # until the next ingest sees that this process is gone and marks it interrupted.
        return
    message = str(exc) if isinstance(exc, OAIError) else f"{type(exc).__name__}: {exc}"
    try:
        with db.write() as session:
            run = session.get(IngestRun, run_id)
            if run is not None:
                run.status, run.finished_at, run.error = status, utcnow(), message
    except Exception:  # the database itself may be what failed
        log.exception("could not record the %s ingest run", status)


def ingest_release(
    db: Database,
    root: Path | str,
    *,
    variables: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    allow_shrink: bool = False,
) -> IngestResult:
    """Ingest the OAI release below ``root`` into ``db`` (see the module docstring).

    ``allow_shrink``: accept a file giving none or far fewer rows than the same table gave in the
    last successful ingest (otherwise ``ShrinkingReleaseError``, see ``oaicohort.ingest.guards``).

    ``variables``: further OAI variables (e.g. ``V00WOMKPR``) stored in ``clinical_values``; each
    must exist in an Enrollees, SubjectChar or AllClinical file. Raises ``InputFileError`` for bad
    input (naming file, line, column) and leaves the data as it was.
    """
    progress = progress or no_progress
    started = utcnow()
    t0 = time.perf_counter()
    names = parse_variables(",".join(variables))
    with _running_run(db, root, started) as run_id:
        try:
            root_path = Path(root).expanduser()
            sources = find_sources(root_path)
            locate_variables(sources, names)  # an unknown variable fails before any work
            # hashing is cheap next to parsing: a re-ingest of the same files parses nothing
            files = fingerprint(sources, progress)
            result = record_if_unchanged(
                db, root_path.resolve(), files, variables=names, started=started, t0=t0, run_id=run_id
            )
            if result is None:
                release = read_release(root_path, names, progress, sources=sources, expected=files)
                result = write_release(
                    db,
                    release,
                    variables=names,
                    started=started,
                    progress=progress,
                    t0=t0,
                    run_id=run_id,
                    allow_shrink=allow_shrink,
                )
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            _record_failure(db, run_id, status, exc)
            raise
    log.info("ingest run %d %s in %.1f s", result.run_id, result.status, result.seconds)
    return result
