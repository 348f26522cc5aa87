"""Image indexes: which MR series exist, for which participant, visit and knee, and where."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from oaicohort.release.image03_paths import date_note, path_facts
from oaicohort.release.image_files import series_key
from oaicohort.release.table import Table, shown
from oaicohort.release.text import FileBytes, read_table
from oaicohort.release.values import dates, subject_ids, text_or_none
from oaicohort.release.visit_paths import is_screening_study, release_visit
from oaicohort.visits import SCREENING_VISIT, VISIT_MONTHS

log = logging.getLogger(__name__)

# the columns of an image-series row, whether an index file or the image headers gave it
SERIES_COLUMNS = (
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


# The knee of an MR series is the suffix of its SeriesDescription (SAG_3D_DESS_RIGHT); thigh and
# other series have none. The one place that reads it: imaging and synth import it from here.
SIDE_SUFFIXES = (("_RIGHT", "R"), ("_LEFT", "L"))


def split_series_description(description: str) -> tuple[str, str]:
    """``" sag_3d_dess_right "`` -> ``("SAG_3D_DESS", "R")``; no side suffix -> ``(DESCRIPTION, "")``.

    Case and padding spaces are ignored (real indexes carry both)."""
    text = description.strip().upper()
    for suffix, letter in SIDE_SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)], letter
    return text, ""


def series_side(description: str) -> str | None:
    """``"R"``/``"L"`` from an OAI series description's suffix, else None."""
    return split_series_description(description)[1] or None


def _arrow(values: pd.Series) -> pa.Array:
    return pa.array(values, type=pa.large_string(), from_pandas=True)


def _check_folders(t: Table, folder: pd.Series) -> None:
    """Series folders must lie below the folder of their contents.csv: an entry that climbs out
    (``..``) is refused, so nothing outside the release the user named is ever read."""
    empty = (folder == "").to_numpy(dtype=bool)
    climbs = pc.match_substring_regex(_arrow(folder), r"(^|/)\.\.(/|$)").to_numpy(zero_copy_only=False)
    for bad, reason in ((empty, "empty Folder"), (climbs, "Folder leaves the image package ('..')")):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise t.error(
                f"{reason}: {shown(t.frame['FOLDER'].iloc[row])}; series are only read below the "
                "folder of this contents.csv",
                row=row,
                column="FOLDER",
            )


def _check_length(t: Table, values: pd.Series, column: str, limit: int, what: str | None = None) -> None:
    lengths = pc.utf8_length(_arrow(values).fill_null("")).to_numpy(zero_copy_only=False)
    if (lengths > limit).any():
        row = int(np.flatnonzero(lengths > limit)[0])
        raise t.error(
            f"{what or column} has {lengths[row]} characters, more than the {limit} the database "
            f"holds: {shown(values.iloc[row])}",
            row=row,
            column=column,
        )


def _visit_dir(raw: FileBytes) -> str:
    """The folder series paths of an index are relative to: the index's folder (its parent for a
    ``contents/`` folder of per-release indexes); for an archive member, ``archive.zip!folder``."""
    if raw.source.member is not None:
        inside = PurePosixPath(raw.source.member).parent
        return f"{raw.source.path.resolve()}!{inside.as_posix()}"
    parent = raw.source.path.parent
    if parent.name.lower() == "contents" and raw.source.path.name.lower() != "contents.csv":
        parent = parent.parent
    return str(parent.resolve())


def _code_visits(first: pd.Series) -> pd.Series:
    """Visit of each Folder's first component when it is a release code; NaN otherwise."""
    cache = {c: release_visit(c) for c in first.unique().tolist()}
    return first.map(cache).astype("float64")


def _screening(visit: pd.Series, dir_visit: int | None, f: pd.DataFrame) -> pd.Series:
    """The screening visit for an index in the screening package (``P001``) or rows of a
    ``^SCREENING^`` study, whatever their release code says (it is a baseline one)."""
    if dir_visit == SCREENING_VISIT:
        return pd.Series(float(SCREENING_VISIT), index=visit.index)
    if "STUDYDESCRIPTION" in f.columns:
        studies = {d: is_screening_study(d) for d in f["STUDYDESCRIPTION"].unique().tolist()}
        return visit.mask(f["STUDYDESCRIPTION"].map(studies).astype(bool), float(SCREENING_VISIT))
    return visit


def _skip_rows(t: Table, keep: np.ndarray, reason: str, warnings: list[str] | None) -> None:
    skipped = np.flatnonzero(~keep)
    if not skipped.size:
        return
    message = (
        f"{t.source.relative_path}: {skipped.size} series row(s) not read: {reason} "
        f"(first at line {int(t.lines[skipped[0]])})"
    )
    log.warning("%s", message)
    if warnings is not None:
        warnings.append(message)


def read_contents(raw: FileBytes, warnings: list[str] | None = None, listed: set[str] | None = None) -> pd.DataFrame:
    """An image package's ``contents.csv`` (or ``contents.<code>.csv``): one row per series,
    rescans collapsed to the last.

    Columns: ``subject_id, visit, side ("R"/"L"/""), sequence, series_description,
    study_description, folder, visit_dir, study_date, barcode, source_file, source_row``.
    The visit comes from the release code that starts ``Folder`` (``0.C.2/...``, every code of
    OAI_DISTRIBUTIONS.md section 3), else from the index's name or visit folder (``00m``,
    ``OAI_18m``, ``OAIBaselineImages``); series of the screening package (``P001``,
    ``OAIScreeningImages``) or of a ``^SCREENING^`` study are the screening visit ``P01``. Rows whose visit cannot be told are not read: each index
    with such rows adds one message to ``warnings`` (the ingest records and counts them).
    ``listed`` receives the place of every series the index names, rescans included (``series_key``).
    """
    t = read_table(
        raw,
        ["FOLDER", "PARTICIPANTID", "STUDYDATE", "BARCODE", "ACCESSIONNUMBER", "STUDYDESCRIPTION", "SERIESDESCRIPTION"],
        required=["FOLDER", "PARTICIPANTID", "SERIESDESCRIPTION"],
        sep=",",
    )
    f = t.frame
    slashed = pc.utf8_trim(pc.replace_substring(_arrow(f["FOLDER"]), "\\", "/"), "/")
    folder = pd.Series(slashed.to_numpy(zero_copy_only=False), dtype=object)
    _check_folders(t, folder)
    first = pd.Series(
        pc.struct_field(pc.extract_regex(_arrow(folder), r"^(?P<c>[^/]*)"), [0]).to_numpy(zero_copy_only=False),
        dtype=object,
    )
    visit = _code_visits(first)
    dir_visit = raw.source.visit
    if dir_visit is not None:
        visit = visit.fillna(dir_visit)
    visit = _screening(visit, dir_visit, f)
    known = visit.notna().to_numpy()
    if not known.all():
        codes = sorted(set(first[~known].tolist()))[:3]
        _skip_rows(
            t,
            known,
            f"cannot tell the visit: Folder starts with {', '.join(map(repr, codes))}, not a known release code "
            "(0.C.2, 2.D.2, 4.G.1 ...), and the index is not in a visit folder (00m, OAI_18m ...)",
            warnings,
        )
        t = Table(t.source, f[known].reset_index(drop=True), t.lines[known], t.header, t.column_names)
        f, folder, visit = t.frame, folder[known].reset_index(drop=True), visit[known].reset_index(drop=True)
    description = f["SERIESDESCRIPTION"]  # already stripped of its padding
    if (description == "").any():
        row = int(np.flatnonzero((description == "").to_numpy())[0])
        raise t.error("empty SeriesDescription", row=row, column="SERIESDESCRIPTION")
    barcode = "BARCODE" if "BARCODE" in f.columns else "ACCESSIONNUMBER"
    return _series_frame(
        t,
        raw,
        subject=subject_ids(t, "PARTICIPANTID"),
        visit=visit.astype("int64").to_numpy(),
        description=description,
        description_column="SERIESDESCRIPTION",
        study_description=text_or_none(t, "STUDYDESCRIPTION"),
        folder=folder,
        visit_dir=_visit_dir(raw),
        study_date=dates(t, "STUDYDATE", fmt="%Y%m%d"),
        barcode_column=barcode,
        listed=listed,
    )


def _series_frame(
    t: Table,
    raw: FileBytes,
    *,
    subject: np.ndarray,
    visit: np.ndarray,
    description: pd.Series,
    description_column: str,
    study_description: pd.Series,
    folder: pd.Series,
    visit_dir: str,
    study_date: pd.Series,
    barcode_column: str,
    listed: set[str] | None = None,
) -> pd.DataFrame:
    # few distinct descriptions (one per sequence and knee): split each once
    split = {d: split_series_description(d) for d in description.unique().tolist()}
    sequence = description.map({d: seq for d, (seq, _) in split.items()}).to_numpy(dtype=object)
    side = description.map({d: letter for d, (_, letter) in split.items()}).to_numpy(dtype=object)
    # the database's column sizes (PostgreSQL enforces them; SQLite would store anything)
    _check_length(t, description, description_column, 128)
    _check_length(t, pd.Series(sequence), description_column, 64, "the sequence name (without _RIGHT/_LEFT)")
    for column, limit in (("STUDYDESCRIPTION", 128), (barcode_column, 32)):
        if column in t.frame.columns:
            _check_length(t, t.frame[column], column, limit)
    frame = pd.DataFrame(
        {
            "subject_id": subject,
            "visit": visit,
            "side": side,
            "sequence": sequence,
            "series_description": description.to_numpy(dtype=object),
            "study_description": study_description,
            "folder": folder.to_numpy(dtype=object),
            "visit_dir": visit_dir,
            "study_date": study_date,
            # kept as written: some releases lost the leading zeros (compare with lstrip("0"))
            "barcode": text_or_none(t, barcode_column),
            "source_file": raw.source.relative_path,
            "source_row": t.lines,
        }
    )
    if listed is not None:  # rescans too: their folders are listed, not unknown
        listed.update(series_key(visit_dir, f) for f in frame["folder"])
    # a rescan is listed after the series it replaces
    return frame.drop_duplicates(["subject_id", "visit", "side", "sequence"], keep="last")


# --------------------------------------------------------------------------- NDA image03

_NDA_VISIT = re.compile(r"V(\d{2})", re.IGNORECASE)
_STUDY_CODE = re.compile(r"(\d{1,2}\.[A-Za-z]\.\d{1,2})")
_SERIES_ARCHIVE = re.compile(r".*\.(tar\.gz|tgz|tar)$", re.IGNORECASE)


_URL_PREFIX = r"^\s*[A-Za-z][A-Za-z0-9+.-]*://[^/]*"


def _few(values: pd.Series, pattern: re.Pattern[str]) -> pd.Series:
    """The first group of ``pattern`` in each value (NaN where none), for a column of few
    distinct values (each matched once)."""
    found = {}
    for value in values.unique().tolist():
        m = pattern.search(value)
        found[value] = m.group(1) if m else np.nan
    return values.map(found)


def _archive_keys(image_file: pd.Series) -> pd.Series:
    """The path part of each ``image_file`` (``s3://bucket/a/b.tar.gz`` -> ``a/b.tar.gz``),
    unquoted (``%2F`` -> ``/``); vectorised, with the rare quoted ones unquoted one by one."""
    path = pc.replace_substring_regex(_arrow(image_file), _URL_PREFIX, "")
    path = pc.utf8_trim(pc.replace_substring(path, "\\", "/"), "/ ")
    keys = pd.Series(path.to_numpy(zero_copy_only=False), dtype=object)
    quoted = keys.str.contains("%", regex=False).to_numpy(dtype=bool)
    if quoted.any():
        keys[quoted] = [unquote(k).strip("/") for k in keys[quoted]]
    return keys


def _package_archives(package: Path) -> dict[str, str]:
    """Series archives below an NDA package folder, by their unquoted relative path (``%2F`` -> ``/``)."""
    found: dict[str, str] = {}
    for dirpath, _, files in os.walk(package):
        for name in files:
            if _SERIES_ARCHIVE.fullmatch(name):
                relative = (Path(dirpath) / name).relative_to(package).as_posix()
                found[unquote(relative)] = relative
    return found


def _locate_archives(keys: pd.Series, package: Path | None) -> pd.Series:
    """Each ``image_file`` key as the relative path of the file in the package (matched by whole
    path, by path suffix, or by a unique file name); the key itself where no file is there."""
    on_disk = _package_archives(package) if package is not None else {}
    if not on_disk:
        return keys
    by_name: dict[str, list[str]] = {}
    for key in on_disk:
        by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)

    def locate(key: str) -> str:
        if key in on_disk:
            return on_disk[key]
        named = by_name.get(key.rsplit("/", 1)[-1], [])
        for candidate in named:
            if key.endswith("/" + candidate) or candidate.endswith("/" + key):
                return on_disk[candidate]
        return on_disk[named[0]] if len(named) == 1 else key

    return keys.map(locate)


def read_image03(raw: FileBytes, warnings: list[str] | None = None, listed: set[str] | None = None) -> pd.DataFrame:
    """An NDA package's ``image03.txt`` (tab-delimited, a ``.csv`` export comma-separated; fields
    may be quoted; description row 2): one row per series archive, as ``read_contents`` returns
    them. ``folder`` is the series' ``.tar.gz`` relative to the package folder (``visit_dir``),
    ``barcode`` the ``accession_number``. The visit comes from ``visit`` (``V00``), else from
    ``image_file``'s path (``.../00m/0.C.2/<id>/<date>/...``), else from the release code in
    ``study`` (``OAI Image Release 0.C.2``); rows with none are not read (one warning). The study
    date is the path's where it has one (real ``interview_date`` values are a day early; when
    they differ, one warning says so), else ``interview_date``."""
    t = read_table(
        raw,
        [
            "SRC_SUBJECT_ID",
            "VISIT",
            "STUDY",
            "IMAGE_DESCRIPTION",
            "IMAGE_FILE",
            "INTERVIEW_DATE",
            "ACCESSION_NUMBER",
        ],
        required=["SRC_SUBJECT_ID", "IMAGE_DESCRIPTION", "IMAGE_FILE"],
        sep=raw.source.delimiter,
        description_row=True,
    )
    f = t.frame
    facts = path_facts(_archive_keys(f["IMAGE_FILE"]))
    visit = pd.Series(np.nan, index=f.index)
    if "VISIT" in f.columns:
        code = _few(f["VISIT"], _NDA_VISIT).astype("float64")
        visit = code.where(code.isin(list(VISIT_MONTHS)))
    visit = visit.fillna(facts["visit"])
    if "STUDY" in f.columns:
        studies = _few(f["STUDY"], _STUDY_CODE)
        codes = {c: release_visit(c) for c in studies.dropna().unique().tolist()}
        visit = visit.fillna(studies.map(codes).astype("float64"))
    known = visit.notna().to_numpy()
    if not known.all():
        _skip_rows(
            t,
            known,
            "cannot tell the visit: no OAI visit (V00 ...), no visit folder or release code in image_file's path "
            "(.../00m/0.C.2/...) and no known release code in 'study'",
            warnings,
        )
        t = Table(t.source, f[known].reset_index(drop=True), t.lines[known], t.header, t.column_names)
        f, visit = t.frame, visit[known].reset_index(drop=True)
        facts = facts[known].reset_index(drop=True)
    description = f["IMAGE_DESCRIPTION"]
    if (description == "").any():
        row = int(np.flatnonzero((description == "").to_numpy())[0])
        raise t.error("empty image_description", row=row, column="IMAGE_DESCRIPTION")
    keys = _archive_keys(f["IMAGE_FILE"])
    if (keys == "").any():
        row = int(np.flatnonzero((keys == "").to_numpy())[0])
        raise t.error("empty image_file", row=row, column="IMAGE_FILE")
    climbs = pc.match_substring_regex(_arrow(keys), r"(^|/)\.\.(/|$)").to_numpy(zero_copy_only=False)
    if climbs.any():
        row = int(np.flatnonzero(climbs)[0])
        raise t.error(
            f"image_file leaves the package ('..'): {shown(f['IMAGE_FILE'].iloc[row])}", row=row, column="IMAGE_FILE"
        )
    package = None if raw.source.member is not None else raw.source.path.parent
    return _series_frame(
        t,
        raw,
        subject=subject_ids(t, "SRC_SUBJECT_ID"),
        visit=visit.astype("int64").to_numpy(),
        description=description,
        description_column="IMAGE_DESCRIPTION",
        study_description=pd.Series([None] * len(t), dtype=object),
        folder=_locate_archives(keys, package),
        visit_dir=_visit_dir(raw),
        study_date=_study_dates(t, facts["study_date"], warnings),
        barcode_column="ACCESSION_NUMBER",
        listed=listed,
    )


def _study_dates(t: Table, from_paths: pd.Series, warnings: list[str] | None) -> pd.Series:
    """The date in each row's ``image_file`` path, else its ``interview_date``."""
    interview = dates(t, "INTERVIEW_DATE")
    note = date_note(t.source.relative_path, from_paths, interview)
    if note is not None:
        log.warning("%s", note)
        if warnings is not None:
            warnings.append(note)
    return from_paths.where(from_paths.notna(), interview).astype(object)
