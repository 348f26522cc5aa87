"""Provenance of ``oai ingest``: the ``ingest_runs`` rows and the files each run read.

A run is committed ``running`` (naming its process) before any work, then completed as
``succeeded``, ``unchanged``, ``failed`` or ``interrupted``; a run left ``running`` by a process
that is gone is marked ``interrupted`` by the next ingest (``oaicohort.db.writers`` decides when
a writer is certainly gone). ``oaicohort.ingest.run`` drives the unit of work around these rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oaicohort import __version__
from oaicohort.db import Database
from oaicohort.db.bulk import insert_rows
from oaicohort.db.schema import ImageSeries, IngestFile, IngestRun, utcnow
from oaicohort.db.writers import RunLease, WriterIdentity, writer_gone
from oaicohort.errors import ConcurrentWriteError, OAIError
from oaicohort.ingest.reading import FileRecord

log = logging.getLogger(__name__)


def last_success(session: Session) -> IngestRun | None:
    return session.scalars(
        select(IngestRun).where(IngestRun.status == "succeeded").order_by(IngestRun.id.desc()).limit(1)
    ).first()


def unchanged_since(
    session: Session, root: Path, files: dict[str, str], variables: Sequence[str], *, scan_images: bool = False
) -> IngestRun | None:
    """The last successful run, if it read exactly these files (same root, same sha256s) and
    every variable asked for now (and every image header, when ``scan_images``); None otherwise."""
    last = last_success(session)
    if last is None or last.source_root != str(root):
        return None
    before = {(f.relative_path, f.sha256) for f in last.files}
    had = set((last.summary or {}).get("variables", []))
    scanned = bool((last.summary or {}).get("scan_images", False))
    same = before == set(files.items()) and set(variables) <= had
    return last if same and (scanned or not scan_images) else None


def add_run(
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
    insert_rows(
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
def running_run(db: Database, root: Path | str, started: dt.datetime) -> Iterator[int]:
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


def record_failure(db: Database, run_id: int, status: str, exc: BaseException) -> None:
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


def image_index_note(db: Database) -> str | None:
    """Why every knee lacks a baseline DESS series, when that is so: the database holds no image
    series (the ingest found no image index); None when it holds some."""
    with db.read() as session:
        if session.execute(select(ImageSeries.id).limit(1)).first() is not None:
            return None
        last = last_success(session)
    where = f" of {last.source_root}" if last is not None else ""
    return (
        f"no_baseline_dess: the database holds no MR series, because the ingest{where} found no image index "
        "(<visit dir>/contents.csv, contents.<code>.csv or an NDA image03.txt); ingest the image packages' "
        "indexes (e.g. `oai ingest FOLDER_WITH_00m`), then run `oai label` again"
    )
