"""Guards of a re-ingest: a file that gave rows before and now gives none, or far fewer, stops it.

A table re-saved with foreign line ends, truncated by a full disk or half copied parses as a valid
file with few or no rows; the ingest would then replace that visit's readings with nothing. So
each file's row count is compared with what the last successful ingest read from the same table
(``ingest_files.n_rows``): a file that now gives fewer than ``SHRINK_FRACTION`` of its earlier
rows stops the ingest (exit 1, naming the file and both counts) unless the user says, with
``oai ingest --allow-shrink``, that the smaller release is what they mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from oaicohort.db.schema import IngestFile, IngestRun
from oaicohort.errors import OAIError
from oaicohort.release.discovery import CONTENTS

if TYPE_CHECKING:
    from oaicohort.ingest.reading import FileRecord

# a file giving fewer than half of the rows it gave before has lost data, not shed a few rows
SHRINK_FRACTION = 0.5


class ShrinkingReleaseError(OAIError):
    """A re-ingested file gives far fewer rows than the same table did before."""


def table_key(kind: str, visit: int | None, relative_path: str) -> tuple[str, int | None, str]:
    """The identity of a table across releases: kind and visit (a clinical table may move between
    the flat and per-category layouts); image indexes, many per visit, by their path."""
    return (kind, visit, relative_path if kind == CONTENTS else "")


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
        more = f" (and {len(shrunk) - 3} more files)" if len(shrunk) > 3 else ""
        raise ShrinkingReleaseError(
            "; ".join(shrunk[:3])
            + more
            + ": the file looks truncated or damaged, so nothing was changed. If the smaller file is what you "
            "mean, run the ingest again with --allow-shrink"
        )
