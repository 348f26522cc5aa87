"""Reading a release for ingest: find its files, hash them, parse them into a ``ParsedRelease``
(no database involved)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.ingest.image_scanning import image_fingerprints, series_from_images
from oaicohort.ingest.ranges import clear_impossible_values
from oaicohort.ingest.variables import locate_variables
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.release.discovery import (
    ALLCLINICAL,
    ARCHIVE,
    ASCII,
    CONTENTS,
    ENROLLEES,
    IMAGE03,
    KXR_SQ_BU,
    NDA,
    NDA_STRUCTURE,
    OUTCOMES,
    SAS,
    SUBJECTCHAR,
    Discovery,
    SourceFile,
    discover,
)
from oaicohort.release.image_files import IMAGE_SCAN, SeriesLocation
from oaicohort.release.image_index import read_contents, read_image03
from oaicohort.release.nda import read_package
from oaicohort.release.readers import (
    allclinical_columns,
    clinical_values,
    read_allclinical,
    read_enrollees,
    read_kxr,
    read_outcomes,
    read_subjectchar,
)
from oaicohort.release.text import FileBytes, TableSource, hash_source, load_source

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
    # what was found but not read, or is missing (recorded with the run and shown by `oai ingest`)
    warnings: list[str] = field(default_factory=list)
    forms: list[str] = field(default_factory=list)  # ascii | sas | nda, and zip when archives were read
    image_indexes: int = 0  # contents.csv / image03.txt files read
    # data-dictionary entries of the NDA text categories read (variable, code, label, source_file)
    dictionary: list[dict[str, str]] = field(default_factory=list)
    series_scanned: int = 0  # image series whose DICOM header was read (image_scan packages)
    listed_series: set[str] = field(default_factory=set)  # places of the series the indexes name (series_key)


NO_IMAGE_INDEX = (
    "no image index found (<visit dir>/contents.csv, contents.<code>.csv, image03.txt) and no folder of DICOM "
    "series: no MR series were ingested, so `oai label` will exclude every knee as no_baseline_dess; ingest the "
    "image packages (or their indexes) too (they may sit beside the clinical data)"
)


def no_image_index_kept(held: int) -> str:
    """The no-index warning of a re-ingest: the series indexed before are kept, so no knee loses
    its baseline DESS series (``oai label`` excludes none for that)."""
    return (
        "no image index found (<visit dir>/contents.csv, contents.<code>.csv, image03.txt): the "
        f"{held:,} image series indexed by earlier ingests are kept as they are"
    )


def find_release(root: Path | str) -> Discovery:
    """The OAI files below ``root`` (a folder or a zip); finding none is an error (a wrong or empty ROOT)."""
    root_path = Path(root).expanduser()
    found = discover(root_path)
    if not any(s.kind != ARCHIVE for s in found.sources) and not found.image_series:
        raise InputFileError(
            root_path,
            "no OAI tables found below this folder (looked for Enrollees.txt, AllClinical{vv}.txt, "
            "SubjectChar00.txt, Outcomes99.txt, kXR_SQ_BU{vv}.txt and <visit dir>/contents.csv, their SAS "
            "copies (.sas7bdat), NDA data structures (oai_enrollee01.txt ..., image03.txt), folders of DICOM "
            "series (00m/..., P001/...), also inside .zip files)",
        )
    return found


def find_sources(root: Path | str) -> list[SourceFile]:
    """The OAI files below ``root`` (see ``find_release``)."""
    return find_release(root).sources


def fingerprint(
    sources: Sequence[SourceFile],
    progress: ProgressCallback = no_progress,
    images: Sequence[SeriesLocation] = (),
) -> dict[str, str]:
    """sha256 of every source file by relative path (one streaming read each, nothing parsed), and
    of every image package of ``images`` (its series folders and header files, none read)."""
    out: dict[str, str] = {}
    progress("checking files", 0, len(sources))
    for i, source in enumerate(sources, start=1):
        out[source.relative_path] = hash_source(source)
        progress("checking files", i, len(sources))
    out.update(image_fingerprints(images, out))
    return out


def read_release(
    root: Path | str,
    variables: Sequence[str] = (),
    progress: ProgressCallback = no_progress,
    *,
    sources: Sequence[SourceFile] | None = None,
    expected: dict[str, str] | None = None,
    warnings: Sequence[str] = (),
    images: Sequence[SeriesLocation] = (),
    scan_images: bool = False,
) -> ParsedRelease:
    """Find, hash and parse every OAI file below ``root`` (no database involved).

    ``expected``: sha256 by relative path from an earlier ``fingerprint``; a file whose content
    changed since is an error, so that the provenance recorded is that of the data parsed.
    ``warnings``: what discovery set aside (when ``sources`` are given), recorded with the run.
    ``images``: the image series folders discovery found (when ``sources`` are given); those no
    index lists are indexed from their DICOM headers, all of them with ``scan_images``
    (``oaicohort.ingest.image_scanning``).
    """
    root_path = Path(root).expanduser()
    if sources is None:
        found = find_release(root_path)
        sources, warnings, images = found.sources, found.warnings, found.image_series
    located = locate_variables(sources, variables, root_path)
    wanted: dict[str, list[str]] = {}
    for name, source in located.files.items():
        wanted.setdefault(source.relative_path, []).append(name)
    release = ParsedRelease(root=root_path.resolve(), warnings=list(warnings))
    records: dict[str, FileRecord] = {}
    structures: list[FileBytes] = []
    total = len(sources)
    progress("reading files", 0, total)
    for i, source in enumerate(sources, start=1):
        if source.kind == ARCHIVE:
            sha256 = hash_source(source)
            _check_unchanged(source, sha256, expected)
            members = sum(1 for s in sources if s.member is not None and s.path == source.path)
            records[source.relative_path] = FileRecord(
                source.relative_path, source.kind, None, sha256, source.path.stat().st_size, members
            )
            progress("reading files", i, total)
            continue
        raw = load_source(source)
        _check_unchanged(source, raw.sha256, expected)
        if source.kind == NDA_STRUCTURE:
            structures.append(raw)
            n_rows = 0  # counted when the package is read
        else:
            n_rows = _parse_into(release, raw, wanted.get(source.relative_path, []))
        records[source.relative_path] = FileRecord(
            source.relative_path, source.kind, source.visit, raw.sha256, raw.size_bytes, n_rows
        )
        log.debug("%s: %d rows", source.relative_path, n_rows)
        progress("reading files", i, total)
    if structures:
        assert located.nda_map is not None
        package = read_package(structures, located.nda, located.nda_map)
        for table in package.tables:
            _parse_into(release, table, table.variables)
        release.warnings += list(dict.fromkeys(package.notes.warnings))
        release.dictionary += package.notes.dictionary
        for path, n_rows in package.n_rows.items():
            records[path] = dataclasses.replace(records[path], n_rows=n_rows)
    if images:
        scanned = series_from_images(
            release.root,
            release.series,
            release.listed_series,
            images,
            taken=records,
            scan_all=scan_images,
            expected=expected,
            progress=progress,
        )
        release.series, release.series_scanned = scanned.series, scanned.read
        release.warnings.extend(scanned.warnings)
        for p in scanned.packages:
            records[p.name] = FileRecord(p.name, IMAGE_SCAN, p.visit, p.sha256, p.size_bytes, p.series)
    release.files = list(records.values())
    release.forms = sorted({s.form for s in sources if s.form in (ASCII, SAS, NDA) and s.kind != ARCHIVE})
    if any(s.member is not None for s in sources):
        release.forms.append("zip")
    release.image_indexes = sum(1 for s in sources if s.kind in (CONTENTS, IMAGE03))
    if not release.image_indexes and not release.series_scanned:
        release.warnings.append(NO_IMAGE_INDEX)
    return release


def _check_unchanged(source: SourceFile, sha256: str, expected: dict[str, str] | None) -> None:
    if expected is not None and expected.get(source.relative_path) != sha256:
        raise InputFileError(source.where, "the file changed while being ingested; run the ingest again")


def _parse_into(release: ParsedRelease, raw: TableSource, variables: list[str]) -> int:
    kind = raw.source.kind
    if kind == ENROLLEES:
        frame, table = read_enrollees(raw, variables)
        release.enrollees = frame
        release.clinical.append(clinical_values(table, variables, frame["subject_id"].to_numpy()))
        return len(frame)
    if kind == ALLCLINICAL:
        frame, table = read_allclinical(raw, variables)
        release.warnings += clear_impossible_values(frame, raw.source.path, allclinical_columns(raw.source.visit or 0))
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
    if kind in (CONTENTS, IMAGE03):
        assert isinstance(raw, FileBytes)
        reader = read_contents if kind == CONTENTS else read_image03
        frame = reader(raw, release.warnings, release.listed_series)
        release.series.append(frame)
        return len(frame)
    raise AssertionError(f"unhandled kind {kind}")  # discovery only yields the above
