"""``oai ingest``: one OAI release below a root folder -> the cohort database, in one transaction.

The unit of work:

0. commit a ``running`` provenance row naming this process (``oaicohort.ingest.provenance``; a
   killed ingest leaves this trace, and the next ingest marks it ``interrupted`` once
   ``oaicohort.db.writers`` shows its process is gone, never while it runs);
1. find the OAI files below ROOT (``oaicohort.release.discovery.discover_release``) and hash them. If the last
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
  the index files read again (or the scanned image folders) no longer list are removed. Done per subject and visit, not per
  visit, because image packages split one visit over several folders; series listed by an index
  file that is not in the root are kept (a root without one image package, like a root without
  any index, removes nothing), and a series that volumes were made from is removed only with
  ``--allow-shrink``, with those volumes (``ingest.guards``).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oaicohort.db import Database
from oaicohort.db.schema import utcnow
from oaicohort.ingest.guards import check_no_dropped_series, check_no_emptied_columns, check_no_shrink
from oaicohort.ingest.provenance import (
    add_run,
    record_failure,
    running_run,
    unchanged_since,
)
from oaicohort.ingest.reading import FileRecord, ParsedRelease, find_release, fingerprint, read_release
from oaicohort.ingest.variables import locate_variables, parse_variables
from oaicohort.ingest.writer import TABLES, Counts, write_tables
from oaicohort.progress import ProgressCallback, no_progress

log = logging.getLogger(__name__)


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
    # what was set aside or is missing (e.g. no image index), each one message
    warnings: list[str] = field(default_factory=list)
    forms: list[str] = field(default_factory=list)  # ascii | sas | nda | zip: how the release was held
    image_indexes: int = 0  # image index files read (contents.csv, image03.txt)
    series_scanned: int = 0  # image series indexed from their DICOM headers

    @property
    def tables(self) -> list[str]:
        return [t for t in TABLES if self.rows.get(t)]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tables"] = self.tables
        out["n_files"] = len(self.files)
        return out


def _summary(
    counts: Counts,
    variables: Sequence[str],
    n_files: int,
    seconds: float,
    about: dict[str, Any] | None = None,
    scan_images: bool = False,
) -> dict[str, Any]:
    return {
        "scan_images": scan_images,
        "rows": counts.rows,
        "inserted": counts.inserted,
        "removed": counts.removed,
        "variables": list(variables),
        "n_files": n_files,
        "seconds": round(seconds, 3),
        **(about or {}),
    }


_ABOUT: tuple[tuple[str, Any], ...] = (("warnings", []), ("forms", []), ("image_indexes", 0), ("series_scanned", 0))


def _about(release: ParsedRelease) -> dict[str, Any]:
    return {
        "warnings": list(release.warnings),
        "forms": list(release.forms),
        "image_indexes": release.image_indexes,
        "series_scanned": release.series_scanned,
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
    scan_images: bool = False,
) -> IngestResult | None:
    """Record an ``unchanged`` run when ``files`` (sha256 by relative path) are what the last
    successful run read; None (and nothing written) otherwise. Nothing is parsed.

    ``run_id``: the ``running`` row to complete (see ``ingest_release``); else a new row.
    ``scan_images``: only a run that read every image header too counts as the same."""
    started = started or utcnow()
    t0 = time.perf_counter() if t0 is None else t0
    counts = Counts()
    with db.write() as session:
        last = unchanged_since(session, root, files, variables, scan_images=scan_images)
        if last is None:
            return None
        records = [
            FileRecord(f.relative_path, f.table_kind, f.visit, f.sha256, f.size_bytes, f.n_rows)
            for f in sorted(last.files, key=lambda f: f.relative_path)
        ]
        seconds = time.perf_counter() - t0
        # what the last run found still holds: the files are the same
        about = {k: (last.summary or {}).get(k, d) for k, d in _ABOUT}
        summary = _summary(counts, variables, len(records), seconds, about, scan_images)
        run = add_run(session, root, records, "unchanged", started, summary, run_id)
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
        **about,
    )


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
    scan_images: bool = False,
) -> IngestResult:
    """Write a parsed release in one transaction (or record it as ``unchanged``).

    ``allow_shrink``: write even a file that gives far fewer rows or values than before (ingest.guards).
    ``run_id``: the ``running`` row to complete (see ``ingest_release``); else a new row."""
    started = started or utcnow()
    t0 = time.perf_counter() if t0 is None else t0
    counts = Counts()
    with db.write() as session:
        files = {f.relative_path: f.sha256 for f in release.files}
        if unchanged_since(session, release.root, files, variables, scan_images=scan_images) is not None:
            status = "unchanged"
            log.info("%s: same files as the last successful ingest; nothing to change", release.root)
        else:
            status = "succeeded"
            check_no_shrink(session, release.files, allow_shrink=allow_shrink)
            check_no_emptied_columns(session, release, allow_shrink=allow_shrink)
            check_no_dropped_series(session, release, allow_shrink=allow_shrink)
            write_tables(session, release, counts, progress)
        seconds = time.perf_counter() - t0
        summary = _summary(counts, variables, len(release.files), seconds, _about(release), scan_images)
        run = add_run(session, release.root, release.files, status, started, summary, run_id)
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
        **_about(release),
    )


def ingest_release(
    db: Database,
    root: Path | str,
    *,
    variables: Sequence[str] = (),
    progress: ProgressCallback | None = None,
    allow_shrink: bool = False,
    scan_images: bool = False,
) -> IngestResult:
    """Ingest the OAI release below ``root`` into ``db`` (see the module docstring).

    Image series folders (on disk or in zip archives) that no image index lists are indexed from
    one DICOM header each; ``scan_images`` reads the header of every series found, and an index
    that disagrees with its images is an ``InputFileError`` naming both
    (``oaicohort.ingest.image_scanning``).

    ``allow_shrink``: accept a file giving none or far fewer rows than the same table gave in the
    last successful ingest, or a column with far fewer values than the database holds (otherwise
    ``ShrinkingReleaseError``, see ``oaicohort.ingest.guards``).

    ``root``: a classic ASCII release (either layout), its SAS copy, an NDA data package, zip
    archives of any of them, or a folder holding several; the form is recognised per file.
    ``variables``: further OAI variables (e.g. ``V00WOMKPR``) stored in ``clinical_values``; each
    must exist in an Enrollees, SubjectChar or AllClinical file (in an NDA package: where the NDA
    variable map says, or named ``structure.column@V00``). Raises ``InputFileError`` for bad
    input (naming file, line, column) and leaves the data as it was.
    """
    progress = progress or no_progress
    started = utcnow()
    t0 = time.perf_counter()
    names = parse_variables(",".join(variables))
    with running_run(db, root, started) as run_id:
        try:
            root_path = Path(root).expanduser()
            found = find_release(root_path)
            sources = found.sources
            locate_variables(sources, names, root_path)  # an unknown variable fails before any work
            # hashing is cheap next to parsing: a re-ingest of the same files parses nothing
            files = fingerprint(sources, progress, found.image_series)
            result = record_if_unchanged(
                db,
                root_path.resolve(),
                files,
                variables=names,
                started=started,
                t0=t0,
                run_id=run_id,
                scan_images=scan_images,
            )
            if result is None:
                release = read_release(
                    root_path,
                    names,
                    progress,
                    sources=sources,
                    expected=files,
                    warnings=found.warnings,
                    images=found.image_series,
                    scan_images=scan_images,
                )
                result = write_release(
                    db,
                    release,
                    variables=names,
                    started=started,
                    progress=progress,
                    t0=t0,
                    run_id=run_id,
                    allow_shrink=allow_shrink,
                    scan_images=scan_images,
                )
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record_failure(db, run_id, status, exc)
            raise
    log.info("ingest run %d %s in %.1f s", result.run_id, result.status, result.seconds)
    return result
