"""Reading a release for ingest: find its files, hash them, parse them into a ``ParsedRelease``
(no database involved)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.ingest.variables import locate_variables
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.release.discovery import (
    ALLCLINICAL,
    CONTENTS,
    ENROLLEES,
    KXR_SQ_BU,
    OUTCOMES,
    SUBJECTCHAR,
    SourceFile,
    discover_release,
)
from oaicohort.release.image_index import read_contents
from oaicohort.release.readers import (
    clinical_values,
    read_allclinical,
    read_enrollees,
    read_kxr,
    read_outcomes,
    read_subjectchar,
)
from oaicohort.release.text import FileBytes, hash_source, load_source

log = logging.getLogger(__name__)


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


def find_sources(root: Path | str) -> list[SourceFile]:
    """The OAI files below ``root``; finding none is an error (a wrong or empty ROOT)."""
    root_path = Path(root).expanduser()
    sources = discover_release(root_path)
    if not sources:
        raise InputFileError(
            root_path,
            "no OAI tables found below this folder (looked for Enrollees.txt, AllClinical{vv}.txt, "
            "SubjectChar00.txt, Outcomes99.txt, kXR_SQ_BU{vv}.txt and <visit dir>/contents.csv)",
        )
    return sources


def fingerprint(sources: Sequence[SourceFile], progress: ProgressCallback = no_progress) -> dict[str, str]:
    """sha256 of every source file by relative path (one streaming read each, nothing parsed)."""
    out: dict[str, str] = {}
    progress("checking files", 0, len(sources))
    for i, source in enumerate(sources, start=1):
        out[source.relative_path] = hash_source(source)
        progress("checking files", i, len(sources))
    return out


def read_release(
    root: Path | str,
    variables: Sequence[str] = (),
    progress: ProgressCallback = no_progress,
    *,
    sources: Sequence[SourceFile] | None = None,
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
        raw = load_source(source)
        if expected is not None and expected.get(source.relative_path) != raw.sha256:
            raise InputFileError(source.path, "the file changed while being ingested; run the ingest again")
        n_rows = _parse_into(release, raw, wanted.get(source.relative_path, []))
        release.files.append(
            FileRecord(source.relative_path, source.kind, source.visit, raw.sha256, raw.size_bytes, n_rows)
        )
        log.debug("%s: %d rows", source.relative_path, n_rows)
        progress("reading files", i, total)
    return release


def _parse_into(release: ParsedRelease, raw: FileBytes, variables: list[str]) -> int:
    kind = raw.source.kind
    if kind == ENROLLEES:
        frame, table = read_enrollees(raw, variables)
        release.enrollees = frame
        release.clinical.append(clinical_values(table, variables, frame["subject_id"].to_numpy()))
        return len(frame)
    if kind == ALLCLINICAL:
        frame, table = read_allclinical(raw, variables)
        release.subject_visits.append(frame)
        release.clinical.append(clinical_values(table, variables, frame["subject_id"].to_numpy()))
        return len(frame)
    if kind == SUBJECTCHAR:
        ids, table = read_subjectchar(raw, variables)
        release.other_ids.append(ids)
        release.clinical.append(clinical_values(table, variables, ids))
        return len(table)
    if kind == KXR_SQ_BU:
        frame = read_kxr(raw)
        assert raw.source.visit is not None
        release.readings[raw.source.visit] = frame
        return len(frame)
    if kind == OUTCOMES:
        release.outcomes = read_outcomes(raw)
        return len(release.outcomes) // 2
    if kind == CONTENTS:
        frame = read_contents(raw)
        release.series.append(frame)
        return len(frame)
    raise AssertionError(f"unhandled kind {kind}")  # discover_release only yields the above
