"""An image index built from the images themselves: one DICOM header per series folder.

``scan_series(locations)`` reads the header of each located series (``oaicohort.release.
image_files`` finds them; ``oaicohort.release.dicom_header`` reads them) and returns the rows a
``contents.csv`` would give (``read_contents``'s columns): participant from ``PatientID``, knee and
sequence from ``SeriesDescription``, ``StudyDescription``, ``StudyDate``, ``AccessionNumber`` as
the barcode. The visit comes from the path (the screening package, the release code, the visit
folder) or else from ``StudyDescription``; a ``^SCREENING^`` study is the screening visit ``P01``
wherever it lies. ``source_file`` is the header file read and ``source_row`` 0: scanned, not
indexed.

A series that cannot be indexed (unreadable header, no participant, no series description, no
visit) is left out with a counted warning naming its files. The same series found twice (one
``SeriesInstanceUID``: a package kept both zipped and unpacked) is read from the folder on disk;
two series of one knee, visit and sequence are a rescan: the later one (``StudyDate``,
``SeriesTime``, ``SeriesNumber``) is kept, as an index lists rescans last.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import pandas as pd

from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.release.dicom_header import HeaderError, SeriesHeader, read_file_header, read_member_header
from oaicohort.release.image_agree import Agreement, agree
from oaicohort.release.image_files import SeriesLocation
from oaicohort.release.image_index import SERIES_COLUMNS, split_series_description
from oaicohort.release.visit_paths import is_screening_study
from oaicohort.visits import SCREENING_VISIT

log = logging.getLogger(__name__)

TASK = "reading DICOM headers"
_ENROLMENT_STUDY = re.compile(r"(^|\^)\s*ENROLLMENT\s*(\^|$)", re.IGNORECASE)
# the database's column sizes (image_series)
_LIMITS = {"series_description": 128, "sequence": 64, "study_description": 128, "barcode": 32}
_SHOWN = 3


@dataclass
class ScanReport:
    """What a scan read and what it left out (one message per reason, naming files)."""

    read: int = 0  # headers read
    left_out: dict[str, list[str]] = field(default_factory=dict)  # reason -> "file: detail" per series
    duplicates: int = 0  # the same series found twice (zipped and unpacked)
    rescans: int = 0  # series superseded by a later one of the same knee, visit and sequence

    def leave_out(self, reason: str, detail: str) -> None:
        self.left_out.setdefault(reason, []).append(detail)

    @property
    def not_indexed(self) -> int:
        return sum(len(v) for v in self.left_out.values())

    def warnings(self) -> list[str]:
        out = []
        for reason, details in self.left_out.items():
            more = f"; and {len(details) - _SHOWN} more" if len(details) > _SHOWN else ""
            out.append(f"{len(details)} image series not indexed: {reason} ({'; '.join(details[:_SHOWN])}{more})")
        return out


def _visit(location: SeriesLocation, header: SeriesHeader) -> int | None:
    if is_screening_study(header.study_description):
        return SCREENING_VISIT
    if location.path_visit is not None:
        return location.path_visit
    if _ENROLMENT_STUDY.search(header.study_description):
        return 0
    return None


def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _row(location: SeriesLocation, header: SeriesHeader, report: ScanReport) -> dict[str, object] | None:
    where = location.header_where
    if not header.patient_id.isdigit() or len(header.patient_id) > 9:
        report.leave_out("PatientID is not an OAI participant id", f"{where}: {header.patient_id!r}")
        return None
    if not header.series_description:
        report.leave_out("no SeriesDescription", where)
        return None
    visit = _visit(location, header)
    if visit is None:
        report.leave_out(
            "cannot tell the visit (no release code or visit folder such as 00m or P001 in the path, "
            "and a StudyDescription without ENROLLMENT or SCREENING)",
            f"{where}: StudyDescription {header.study_description!r}",
        )
        return None
    sequence, side = split_series_description(header.series_description)
    row: dict[str, object] = {
        "subject_id": int(header.patient_id),
        "visit": visit,
        "side": side,
        "sequence": sequence,
        "series_description": header.series_description,
        "study_description": header.study_description or None,
        "folder": location.folder,
        "visit_dir": location.visit_dir,
        "study_date": _date(header.study_date),
        "barcode": header.accession_number or None,
        "source_file": location.header_relative,
        "source_row": 0,
    }
    for column, limit in _LIMITS.items():
        value = row[column]
        if isinstance(value, str) and len(value) > limit:
            report.leave_out(f"{column} longer than the {limit} characters the database holds", f"{where}: {value!r}")
            return None
    if header.study_date and row["study_date"] is None:
        log.warning("%s: StudyDate %r is not a date (yyyymmdd); stored without a date", where, header.study_date)
    return row


def _headers(
    locations: Sequence[SeriesLocation], progress: ProgressCallback, report: ScanReport
) -> Iterator[tuple[SeriesLocation, SeriesHeader]]:
    """(location, header) of each location whose header can be read; archives opened once each."""
    total, done = len(locations), 0
    ordered = sorted(locations, key=lambda loc: (str(loc.archive or ""), loc.relative))
    for archive, group in groupby(ordered, key=lambda loc: loc.archive):
        members = list(group)
        opened: zipfile.ZipFile | None = None
        try:
            if archive is not None:
                try:
                    opened = zipfile.ZipFile(archive)
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    for location in members:
                        report.leave_out("unreadable zip archive", f"{location.header_where}: {exc}")
                    done += len(members)
                    progress(TASK, done, total)
                    continue
            for location in members:
                try:
                    if opened is not None:
                        header = read_member_header(opened, location.header)
                    else:
                        header = read_file_header(location.header)
                except HeaderError as exc:
                    report.leave_out("unreadable DICOM header", f"{location.header_where}: {exc}")
                else:
                    report.read += 1
                    yield location, header
                done += 1
                if done % 500 == 0 or done == total:
                    progress(TASK, done, total)
        finally:
            if opened is not None:
                opened.close()


def scan_series(
    locations: Sequence[SeriesLocation], *, progress: ProgressCallback = no_progress
) -> tuple[pd.DataFrame, ScanReport]:
    """The ``image_series`` rows of ``locations`` read from their headers (module docstring)."""
    report = ScanReport()
    progress(TASK, 0, len(locations))
    rows, order, uids = [], [], []
    for location, header in _headers(locations, progress, report):
        row = _row(location, header, report)
        if row is None:
            continue
        rows.append(row)
        # later is larger: date, time, number; then on disk before in an archive
        order.append((header.study_date, header.series_time, header.series_number or 0, location.archive is None))
        uids.append(header.series_uid)
    frame = pd.DataFrame(rows, columns=list(SERIES_COLUMNS))
    if frame.empty:
        return frame, report
    frame["_order"] = order
    frame["_uid"] = uids
    frame["_on_disk"] = [o[3] for o in order]
    # one series found twice (zipped and unpacked): read from the folder on disk
    with_uid = frame["_uid"] != ""
    twice = frame[with_uid].sort_values(["_on_disk", "folder"], ascending=[False, True]).duplicated("_uid")
    report.duplicates = int(twice.sum())
    frame = frame.drop(index=twice[twice].index)
    if report.duplicates:
        log.info("%d image series were found twice (zipped and unpacked); read from the folders", report.duplicates)
    frame = frame.sort_values(["subject_id", "visit", "side", "sequence", "_order", "folder"], kind="stable")
    kept = frame.drop_duplicates(["subject_id", "visit", "side", "sequence"], keep="last")
    report.rescans = len(frame) - len(kept)
    return kept.drop(columns=["_order", "_uid", "_on_disk"]).reset_index(drop=True), report


def index_unlisted(
    root: Path,
    series: Sequence[pd.DataFrame],
    listed: set[str],
    locations: Sequence[SeriesLocation],
    *,
    scan_all: bool = False,
    progress: ProgressCallback = no_progress,
) -> tuple[Agreement, ScanReport]:
    """The index frames ``series`` completed by the series of ``locations`` that no index lists
    (``listed``: the places the indexes name, rescans included; every location with ``scan_all``),
    read from their headers and checked against the indexes (``oaicohort.release.image_agree``)."""
    todo = list(locations) if scan_all else [loc for loc in locations if loc.key not in listed]
    if len(todo) < len(locations):
        log.info("%d image series listed by an index; their headers are not read", len(locations) - len(todo))
    frame, report = scan_series(todo, progress=progress)
    agreement = agree(root, series, frame)
    if agreement.confirmed or agreement.replaced:
        log.info(
            "image headers agree with the indexes: %d series confirmed, %d stored as found on disk (listed, "
            "their files elsewhere)",
            agreement.confirmed,
            agreement.replaced,
        )
    return agreement, report
