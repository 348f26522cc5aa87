"""The forms users hold the OAI in (OAI_DISTRIBUTIONS.md), written from a synthetic ASCII release.

``convert_release(root, distribution)`` rewrites the classic release that ``write_release`` (and
``write_images``) put under ``root`` as one of:

- ``ascii``: unchanged (the flat ``OAICompleteData_ASCII/`` layout);
- ``ascii-categories``: the 2018 layout, one folder per category (``General_ASCII/``,
  ``AllClinical_ASCII/``, ``X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII/``);
- ``zip``: the tables as ``OAICompleteData_ASCII.zip`` (image folders stay as they are);
- ``sas``: ``OAICompleteData_SAS/*.sas7bdat`` (real SAS7BDAT files, ``synth.sas_writer``);
- ``nda``: an NDA data package ``Package_<n>/``: one tab-delimited file per data structure (with
  the description row), values bare, missing values blank except the special codes (``.P``),
  ``image03.txt`` listing every series, and each written DESS series as a ``.tar.gz``. The
  structures and columns carry the names real packages use (``synth.nda_tables``; sex, race and
  ethnicity as NDA text categories), and ``image03.txt`` is written as real ones are: fields
  quoted, no ``visit`` column (the visit is in ``image_file``'s path), ``interview_date`` one day
  before the study date. ``legacy_names=True`` writes the first synthetic form instead (the
  names guessed before real packages were seen), for the compatibility tests.

The data are the same in every form, so ingesting any of them gives the same database (the
tests compare them); only what a form cannot carry differs: value labels (``1: Male`` -> ``1``),
and ``.`` versus an empty cell. ``synth_truth.csv`` stays in ``root`` in every form.

``images`` (``oaicohort.synth.image_download``) writes the image packages as an image download
of today instead of the indexed layout: ``folders`` or ``zip`` per visit, without contents.csv
(an NDA package then lists the series in ``image03.txt`` but holds no ``.tar.gz`` of them).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
import shutil
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from oaicohort.errors import OAIError
from oaicohort.release.nda_map import NdaColumn, NdaMap, guess_column
from oaicohort.release.visit_paths import release_visit
from oaicohort.synth.image_download import IMAGE_LAYOUTS, write_image_download
from oaicohort.synth.nda_tables import LEGACY_MAP, write_structure, write_structures
from oaicohort.synth.sas_writer import write_sas7bdat

DISTRIBUTIONS = ("ascii", "ascii-categories", "zip", "sas", "nda")
ASCII_DIR = "OAICompleteData_ASCII"
SAS_DIR = "OAICompleteData_SAS"
ZIP_FILE = "OAICompleteData_ASCII.zip"
PACKAGE = "Package_1207001"
S3_PREFIX = "s3://NDAR_Central_4/submission_31370"
CATEGORY_DIRS = ("General_ASCII", "AllClinical_ASCII", "X-Ray Image Assessments_ASCII")
IMAGE_VISIT_DIR = "00m"
COMMON = ("subjectkey", "src_subject_id", "interview_date", "interview_age", "sex", "visit")
# AllClinical columns go to the NDA structure of their family (there is no AllClinical structure)
FAMILY_STRUCTURES = (("WOM", "oai_koos_womac01"), ("KOOS", "oai_koos_womac01"), ("PASE", "oai_pase01"))
DEFAULT_CLINICAL_STRUCTURE = "oai_oarisk01"
_CODED = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)|\.[A-Za-z_]?)\s*(?::.*)?")


def _category(name: str) -> str:
    lower = name.lower()
    if lower.startswith("allclinical"):
        return "AllClinical_ASCII"
    if lower.startswith("kxr"):
        return "X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII"
    return "General_ASCII"


def clear_distributions(root: Path) -> None:
    """Remove what an earlier conversion of a synthetic release wrote (never the ASCII tables)."""
    for name in (SAS_DIR, ZIP_FILE, *CATEGORY_DIRS):
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for package in root.glob("Package_*"):
        if (package / "image03.txt").exists():
            shutil.rmtree(package)


def _ascii_tables(root: Path) -> dict[str, pd.DataFrame]:
    folder = root / ASCII_DIR
    if not folder.is_dir():
        raise OAIError(f"{folder}: no synthetic ASCII release to convert (run write_release first)")
    return {
        path.name: pd.read_csv(
            path, sep="|", dtype=str, keep_default_na=False, na_filter=False, quoting=csv.QUOTE_NONE, encoding="utf-8"
        )
        for path in sorted(folder.glob("*.txt"))
    }


def convert_release(root: Path, distribution: str, *, legacy_names: bool = False, images: str = "indexed") -> list[str]:
    """Rewrite the synthetic ASCII release under ``root`` as ``distribution`` and its images in the
    layout ``images`` (``indexed``, ``folders``, ``zip``); returns the files written (relative to
    ``root``). ``legacy_names``: an NDA package in the first synthetic form."""
    if distribution not in DISTRIBUTIONS:
        raise OAIError(f"unknown distribution {distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    if images not in IMAGE_LAYOUTS:
        raise OAIError(f"unknown image layout {images!r}; expected one of {', '.join(IMAGE_LAYOUTS)}")
    root = Path(root)
    clear_distributions(root)
    if distribution == "ascii":
        tables = sorted(p.relative_to(root).as_posix() for p in (root / ASCII_DIR).glob("*.txt"))
        return tables + write_image_download(root, images)
    folder = root / ASCII_DIR
    written: list[str] = []
    if distribution == "ascii-categories":
        for path in sorted(folder.glob("*.txt")):
            target = root / _category(path.name) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
            written.append(target.relative_to(root).as_posix())
    elif distribution == "zip":
        with zipfile.ZipFile(root / ZIP_FILE, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.glob("*.txt")):
                archive.write(path, f"{ASCII_DIR}/{path.name}")
        written.append(ZIP_FILE)
    elif distribution == "sas":
        for name, frame in _ascii_tables(root).items():
            target = root / SAS_DIR / f"{Path(name).stem.lower()}.sas7bdat"
            write_sas7bdat(target, {c: frame[c].tolist() for c in frame.columns}, Path(name).stem)
            written.append(target.relative_to(root).as_posix())
    else:
        written = write_nda_package(root, _ascii_tables(root), legacy_names=legacy_names)
        if images != "indexed":  # a package without its associated files: the series are downloaded
            shutil.rmtree(root / PACKAGE / "image03", ignore_errors=True)
            written = [w for w in written if not w.startswith(f"{PACKAGE}/image03/")]
        elif (root / IMAGE_VISIT_DIR).is_dir():
            shutil.rmtree(root / IMAGE_VISIT_DIR)  # the package carries the series as archives
    shutil.rmtree(folder)
    return written + write_image_download(root, images)


# --------------------------------------------------------------------------- NDA package


def _nda_cell(cell: str) -> str:
    """An ASCII cell as an NDA package writes it: the code without its label, blank for ``.``."""
    m = _CODED.fullmatch(cell)
    if not m:
        return cell.replace("\t", " ").strip()
    head = m.group(1)
    return "" if head == "." else head


def _nda_column(mapping: NdaMap, name: str) -> NdaColumn:
    place = mapping.locate(name)
    if place is not None:
        return place
    column, visit = guess_column(name)
    return NdaColumn("", column, visit)


def _subject_key(subject: str) -> str:
    return "NDAR_INV" + hashlib.sha256(subject.encode()).hexdigest()[:8].upper()


class _Structures:
    """Rows of NDA structures being assembled: structure -> list of row dicts (column order kept)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, str]]] = {}
        self.columns: dict[str, list[str]] = {}

    def add(self, structure: str, rows: list[dict[str, str]]) -> None:
        self.rows.setdefault(structure, []).extend(rows)
        known = self.columns.setdefault(structure, list(COMMON))
        for row in rows[:1]:
            known.extend(c for c in row if c not in known)

    def write(self, package: Path) -> list[Path]:
        paths = []
        for structure, rows in sorted(self.rows.items()):
            columns = self.columns[structure]
            paths.append(write_structure(package, structure, columns, rows))
        return paths


def _visit_rows(
    frame: pd.DataFrame,
    visit: str,
    mapping: NdaMap,
    common: dict[str, dict[str, str]],
    default: str,
    *,
    structure_of: dict[str, str] | None = None,
    skip: Sequence[str] = (),
) -> dict[str, list[dict[str, str]]]:
    """One table's rows as rows of NDA structures (``structure_of``: column -> structure, else mapped)."""
    ids = frame[next(c for c in frame.columns if c.upper() == "ID")].tolist()
    per_structure: dict[str, list[dict[str, str]]] = {}
    placed: dict[str, list[tuple[str, str]]] = {}
    for name in frame.columns:
        if name.upper() in {"ID", *skip}:
            continue
        place = _nda_column(mapping, name.upper())
        structure = (structure_of or {}).get(name) or place.structure or default
        placed.setdefault(structure, []).append((name, place.column.lower()))
    for structure, cols in placed.items():
        rows = []
        cells = {name: frame[name].tolist() for name, _ in cols}
        for i, subject in enumerate(ids):
            row = {**common.get(subject, {}), "src_subject_id": subject, "visit": visit}
            for name, column in cols:
                value = _nda_cell(cells[name][i])
                if column == "interview_date" and not re.fullmatch(r"\d{2}/\d{2}/\d{4}", value):
                    value = ""
                row[column] = value
            rows.append(row)
        per_structure[structure] = rows
    return per_structure


def _family(name: str) -> str:
    column, _ = guess_column(name)
    for prefix, structure in FAMILY_STRUCTURES:
        if column.startswith(prefix):
            return structure
    return DEFAULT_CLINICAL_STRUCTURE


_NOT_CLINICAL = {"oai_enrollee01", "oai_kxrsemiquant01", "oai_outcome01", "*", ""}


def _clinical_structure(mapping: NdaMap, name: str) -> str:
    """The structure of an AllClinical column: as mapped when the map puts it in a clinical one."""
    mapped = _nda_column(mapping, name.upper()).structure
    return mapped if mapped not in _NOT_CLINICAL else _family(name)


def write_nda_package(root: Path, tables: dict[str, pd.DataFrame], *, legacy_names: bool = False) -> list[str]:
    """Write ``tables`` (the ASCII release, by file name) and the image index as an NDA package."""
    package = root / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    by_lower = {name.lower(): frame for name, frame in tables.items()}
    if not legacy_names:
        paths, common = write_structures(package, by_lower, _nda_cell, _subject_key)
        written = [p.relative_to(root).as_posix() for p in paths]
        contents = root / IMAGE_VISIT_DIR / "contents.csv"
        if contents.is_file():
            written += write_image03(package, contents, common, root, legacy_names=False)
        return written
    mapping = NdaMap.from_text(LEGACY_MAP, "legacy map")
    enrollees = by_lower["enrollees.txt"]
    sex = {s: {"1": "M", "2": "F"}.get(_nda_cell(c), "") for s, c in zip(enrollees["ID"], enrollees["P02SEX"])}
    common = {s: {"subjectkey": _subject_key(s), "sex": x} for s, x in sex.items()}
    out = _Structures()
    for structure, rows in _visit_rows(enrollees, "V00", mapping, common, "oai_enrollee01", skip=("P02SEX",)).items():
        out.add(structure, rows)
    for name in sorted(by_lower):
        frame = by_lower[name]
        m = re.fullmatch(r"(allclinical|kxr_sq_bu|subjectchar)(\d{2})\.txt", name)
        if name == "outcomes99.txt":
            for structure, rows in _visit_rows(frame, "V99", mapping, common, "oai_outcome01").items():
                out.add(structure, rows)
        elif m and m.group(1) == "kxr_sq_bu":
            for structure, rows in _visit_rows(frame, f"V{m.group(2)}", mapping, common, "oai_kxrsemiquant01").items():
                out.add(structure, rows)
        elif m and m.group(1) == "allclinical":
            visit = f"V{m.group(2)}"
            families = {c: _clinical_structure(mapping, c) for c in frame.columns}
            dates = [c for c in frame.columns if _nda_column(mapping, c.upper()).column == "INTERVIEW_DATE"]
            date = (
                frame[dates[0]].map(_nda_cell).where(lambda s: s.str.fullmatch(r"\d{2}/\d{2}/\d{4}"), "")
                if dates
                else pd.Series([""] * len(frame))
            )
            ages = [c for c in frame.columns if re.fullmatch(r"V\d{2}AGE", c.upper())]
            age = frame[ages[0]].map(_nda_cell) if ages else pd.Series([""] * len(frame))
            months = [str(int(float(a) * 12)) if re.fullmatch(r"\d+(\.\d+)?", a) else "" for a in age]
            visit_common = {
                s: {**common.get(s, {}), "interview_date": d, "interview_age": a}
                for s, d, a in zip(frame["ID"], date, months)
            }
            rows_of = _visit_rows(
                frame, visit, mapping, visit_common, DEFAULT_CLINICAL_STRUCTURE, structure_of=families
            )
            for structure, rows in rows_of.items():
                out.add(structure, rows)
        elif m:
            own = {c: "oai_subjectchar01" for c in frame.columns}
            for structure, rows in _visit_rows(frame, "V00", mapping, common, "", structure_of=own).items():
                out.add(structure, rows)
    written = [p.relative_to(root).as_posix() for p in out.write(package)]
    contents = root / IMAGE_VISIT_DIR / "contents.csv"
    if contents.is_file():
        written += write_image03(package, contents, common, root)
    return written


def _tar_gz(series: Path, target: Path) -> None:
    """One series folder as a reproducible ``.tar.gz`` (sorted names, no times or owners)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in series.iterdir() if p.is_file()):
            info = tarfile.TarInfo(f"{series.name}/{path.name}")
            info.size = path.stat().st_size
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buffer.getvalue())


def write_image03(
    package: Path, contents: Path, common: dict[str, dict[str, str]], root: Path, *, legacy_names: bool = True
) -> list[str]:
    """``image03.txt`` from a visit folder's ``contents.csv`` (every row, in order), and each
    series folder present as ``image03/<s3 key with %2F>.tar.gz``, as ``downloadcmd`` saves them.
    Without ``legacy_names`` as real exports are: quoted fields, no ``visit`` column, and an
    ``interview_date`` one day before the study date."""
    frame = pd.read_csv(contents, dtype=str, keep_default_na=False, na_filter=False)
    columns = [
        *COMMON,
        "image_file",
        "image_description",
        "scan_type",
        "image_modality",
        "image_file_format",
        "accession_number",
        "study",
        "image_thumbnail_file",
    ]
    if not legacy_names:
        columns.remove("visit")
    written = []
    path = package / "image03.txt"

    def line(fields: list[str]) -> str:
        return "\t".join(fields if legacy_names else [f'"{f}"' for f in fields]) + "\n"

    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(line(columns))
        fh.write(line([f"Description of {c}" for c in columns]))
        for rec in frame.to_dict("records"):
            folder = rec["Folder"].strip().strip("/")
            code = folder.split("/", 1)[0]
            visit = release_visit(code)
            key = f"{S3_PREFIX}/{IMAGE_VISIT_DIR}/{folder}.tar.gz"
            series = contents.parent / folder
            if series.is_dir():
                local = package / "image03" / (key.split("://", 1)[1].split("/", 1)[1].replace("/", "%2F"))
                _tar_gz(series, local)
                written.append(local.relative_to(root).as_posix())
            date = rec.get("StudyDate", "").strip()
            subject = rec["ParticipantID"].strip()
            if len(date) == 8 and not legacy_names:  # real image03 rows: a day before the study date
                date = (pd.Timestamp(date) - pd.Timedelta(days=1)).strftime("%Y%m%d")
            row = {
                **common.get(subject, {}),
                "src_subject_id": subject,
                "interview_date": f"{date[4:6]}/{date[6:8]}/{date[:4]}" if len(date) == 8 else "",
                "visit": f"V{visit:02d}" if visit is not None else "",
                "image_file": key,
                "image_description": rec["SeriesDescription"],
                "scan_type": "MR structural",
                "image_modality": "MRI",
                "image_file_format": "DICOM",
                "accession_number": rec.get("Barcode", ""),
                "study": f"OAI Image Release {code}",
            }
            fh.write(line([row.get(c, "") for c in columns]))
    written.append(path.relative_to(root).as_posix())
    return written


__all__ = ["DISTRIBUTIONS", "clear_distributions", "convert_release", "np"]
