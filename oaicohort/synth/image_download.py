"""The synthetic images as an image download of today: visit packages without any ``contents.csv``.

Image downloads no longer carry an index (OAI_DISTRIBUTIONS.md section 5): a visit package holds
the DICOM series of the visit, extracted or as one zip. ``write_image_download(root, layout)``
turns the indexed image packages that ``write_images`` and ``write_radiographs`` leave under
``root`` (``00m/``, ``XR/00m/``, ``XR/P001/``, each with its ``contents.csv``) into:

- ``folders``: ``OAIBaselineImages/results/<release>/<ID>/<yyyymmdd>/<series>/001 ...`` (MR series
  and radiographs of the baseline visit) and ``OAIScreeningImages/results/...`` (the radiographs
  of the screening visit);
- ``zip``: the same packages zipped per visit, ``00m/results/00m.zip`` and ``P001/results/P001.zip``
  (members ``<release>/<ID>/<yyyymmdd>/<series>/001``), reproducible byte for byte.

No ``contents.csv`` is left. Every series an index listed has files afterwards: the rendered ones
(DESS, radiographs) keep theirs; the others (locators, TSE, T2 maps, thigh series ...) get one
16x16 slice whose header carries the row's values (``SeriesNumber`` counting each participant's
rows, as ``write_images`` numbers the DESS series), so that reading the headers gives exactly the
series the index listed. ``synth_truth.csv`` and ``synth_xray_truth.csv`` keep their keys
(participant and knee); their folder columns name the indexed layout.
"""

from __future__ import annotations

import csv
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oaicohort.errors import OAIError
from oaicohort.synth.dicom_writer import SeriesMeta, synth_uid, write_series
from oaicohort.synth.images import SeriesNumbers
from oaicohort.synth.radiograph_release import BASELINE_DIR, PACKAGE_DIR, SCREENING_DIR

IMAGE_LAYOUTS = ("indexed", "folders", "zip")
# indexed packages (relative to the release root) -> the visit package they go to
_INDEXED = ((BASELINE_DIR, BASELINE_DIR), (f"{PACKAGE_DIR}/{BASELINE_DIR}", BASELINE_DIR))
_SCREENING = ((f"{PACKAGE_DIR}/{SCREENING_DIR}", SCREENING_DIR),)
FOLDER_NAMES = {BASELINE_DIR: "OAIBaselineImages", SCREENING_DIR: "OAIScreeningImages"}
STUB_SIZE = 16
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class _Listed:
    folder: str  # relative to its indexed package, e.g. 0.C.2/9000001/20040315/12345678
    source: Path  # the series folder in the indexed layout


def _stub(folder: Path, row: dict[str, str], number: int, barcode: str) -> None:
    """One small slice carrying the index row's header values."""
    participant = row["ParticipantID"].strip()
    meta = SeriesMeta(
        patient_id=participant,
        series_description=row["SeriesDescription"],
        study_date=row.get("StudyDate", "").strip(),
        study_description=row.get("StudyDescription", "").strip(),
        accession_number=barcode,
        series_uid=synth_uid("stub-series", participant, row["Folder"].strip()),
        study_uid=synth_uid("study", participant, row.get("StudyDate", "").strip()),
        series_number=number,
    )
    write_series(folder, np.zeros((1, STUB_SIZE, STUB_SIZE), dtype=np.uint16), meta)


def _listed_series(package: Path) -> list[_Listed]:
    """The series ``package/contents.csv`` lists, each with files (a stub written where none are)."""
    contents = package / "contents.csv"
    with contents.open(newline="") as handle:
        rows = [{(k or "").strip(): v or "" for k, v in raw.items()} for raw in csv.DictReader(handle)]
    numbers = SeriesNumbers()
    out = []
    for row in rows:
        number = numbers.next(row["ParticipantID"].strip())
        folder = row["Folder"].strip().replace("\\", "/").strip("/")
        source = package / folder
        if not source.resolve().is_relative_to(package.resolve()):
            raise OAIError(f"{contents}: Folder {folder!r} is not inside {package}")
        if not source.is_dir():
            _stub(source, row, number, row.get("Barcode", row.get("AccessionNumber", "")).strip())
        out.append(_Listed(folder, source))
    return out


def _packages(root: Path) -> dict[str, list[_Listed]]:
    """Visit package name (``00m``, ``P001``) -> the series it holds, from the indexed layout."""
    out: dict[str, list[_Listed]] = {}
    for indexed, visit in (*_INDEXED, *_SCREENING):
        package = root / indexed
        if (package / "contents.csv").is_file():
            out.setdefault(visit, []).extend(_listed_series(package))
    if not out:
        raise OAIError(f"{root}: no indexed image package (00m/contents.csv) to turn into an image download")
    return out


def _zip(target: Path, series: list[_Listed]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for item in sorted(series, key=lambda s: s.folder):
            for path in sorted(p for p in item.source.iterdir() if p.is_file()):
                info = zipfile.ZipInfo(f"{item.folder}/{path.name}", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
    partial.replace(target)


def write_image_download(root: Path, layout: str) -> list[str]:
    """Turn the indexed image packages under ``root`` into an image download (module docstring);
    returns what was written (the zip archives, or the package folders), relative to ``root``."""
    if layout not in IMAGE_LAYOUTS:
        raise OAIError(f"unknown image layout {layout!r}; expected one of {', '.join(IMAGE_LAYOUTS)}")
    root = Path(root)
    if layout == "indexed":
        return []
    packages = _packages(root)
    staging = root / ".image-download"
    shutil.rmtree(staging, ignore_errors=True)
    written = []
    for visit, series in sorted(packages.items()):
        if layout == "zip":
            relative = f"{visit}/results/{visit}.zip"
            _zip(staging / relative, series)
        else:
            relative = f"{FOLDER_NAMES[visit]}/results"
            for item in series:
                target = staging / relative / item.folder
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(item.source, target)
        written.append(relative)
    # the indexed layout goes (its contents.csv files with it); the download takes its place
    for indexed, _ in (*_INDEXED, *_SCREENING):
        shutil.rmtree(root / indexed, ignore_errors=True)
    if (root / PACKAGE_DIR).is_dir() and not any((root / PACKAGE_DIR).iterdir()):
        (root / PACKAGE_DIR).rmdir()
    for child in sorted(staging.iterdir()):
        shutil.move(child, root / child.name)
    staging.rmdir()
    return written
