"""Ingest's side of indexing images from their own headers (``oaicohort.release.image_scan``).

Which series are read: by default those no image index of the release lists (an image download
without ``contents.csv``, a zipped visit package); with ``scan_images`` every series found, so
that the indexes are checked against the images (``oaicohort.release.image_agree``: a
disagreement stops the ingest naming both). Provenance: one ``ingest_files`` row per image
package (its visit folder or zip archive), kind ``image_scan``, whose ``sha256`` fingerprints the
series folders and header files found (``package_fingerprints``) and whose ``n_rows`` counts the
series found in it; each scanned ``image_series`` row names the header file it was read from
(``source_file``, ``source_row`` 0).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.release.image_files import SeriesLocation, package_fingerprints
from oaicohort.release.image_scan import index_unlisted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagePrint:
    """An image package's provenance name, fingerprint and counts."""

    name: str  # ingest_files.relative_path
    package: str
    sha256: str
    size_bytes: int
    series: int
    visit: int | None


def image_packages(locations: Sequence[SeriesLocation], taken: Iterable[str] = ()) -> list[PackagePrint]:
    """One fingerprint per image package of ``locations``; a name also used by a table file (a zip
    holding both) gets ``#dicom`` appended."""
    used = set(taken)
    visits: dict[str, set[int | None]] = {}
    for location in locations:
        visits.setdefault(location.package, set()).add(location.path_visit)
    out = []
    for package, (sha256, size, series) in sorted(package_fingerprints(locations).items()):
        name = package if package not in used else f"{package}#dicom"
        (visit,) = visits[package] if len(visits[package]) == 1 else (None,)
        out.append(PackagePrint(name, package, sha256, size, series, visit))
    return out


def image_fingerprints(locations: Sequence[SeriesLocation], taken: Iterable[str] = ()) -> dict[str, str]:
    """sha256 by provenance name of every image package (see ``image_packages``), for ``fingerprint``."""
    return {p.name: p.sha256 for p in image_packages(locations, taken)}


@dataclass
class ScanOutcome:
    """The series to store (the indexes' and the scanned), and what the scan adds to the run."""

    series: list[pd.DataFrame]
    packages: list[PackagePrint]
    read: int  # headers read
    warnings: list[str] = field(default_factory=list)


def series_from_images(
    root: Path,
    series: Sequence[pd.DataFrame],
    listed: set[str],
    locations: Sequence[SeriesLocation],
    *,
    taken: Iterable[str] = (),
    scan_all: bool = False,
    expected: dict[str, str] | None = None,
    progress: ProgressCallback = no_progress,
) -> ScanOutcome:
    """Read the headers of the series in ``locations`` that no index lists (``listed``: the places
    the indexes of ``series`` name, rescans included; all with ``scan_all``), check them against
    the indexes and return all series to store.

    ``taken``: provenance names of the release's other files; ``expected``: fingerprints taken
    before (a package that changed since is an error, as for table files)."""
    packages = image_packages(locations, taken)
    for package in packages:
        if expected is not None and expected.get(package.name) != package.sha256:
            raise InputFileError(
                root / package.package, "the image package changed while being ingested; run the ingest again"
            )
    agreement, report = index_unlisted(root, series, listed, locations, scan_all=scan_all, progress=progress)
    return ScanOutcome(agreement.series, packages, report.read, report.warnings())
