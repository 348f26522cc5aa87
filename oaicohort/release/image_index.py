"""Image indexes: which MR series exist, for which participant, visit and knee, and where."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from oaicohort.release.text import FileBytes, Table, read_table, shown
from oaicohort.release.values import dates, subject_ids, text_or_none
from oaicohort.visits import RELEASE_VISITS

log = logging.getLogger(__name__)


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


def _check_folders(t: Table, folder: pd.Series) -> None:
    """Series folders must lie below the folder of their contents.csv: an entry that climbs out
    (``..``) is refused, so nothing outside the release the user named is ever read."""
    empty = (folder == "").to_numpy(dtype=bool)
    climbs = folder.str.split("/").map(lambda parts: ".." in parts).to_numpy(dtype=bool)
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
    lengths = values.map(lambda v: len(v) if isinstance(v, str) else 0).to_numpy()
    if (lengths > limit).any():
        row = int(np.flatnonzero(lengths > limit)[0])
        raise t.error(
            f"{what or column} has {lengths[row]} characters, more than the {limit} the database "
            f"holds: {shown(values.iloc[row])}",
            row=row,
            column=column,
        )


def read_contents(raw: FileBytes) -> pd.DataFrame:
    """An image package's ``contents.csv``: one row per series, rescans collapsed to the last.

    Columns: ``subject_id, visit, side ("R"/"L"/""), sequence, series_description,
    study_description, folder, visit_dir, study_date, barcode, source_file, source_row``.
    The visit comes from the release code that starts ``Folder`` (``0.C.2/...``), else from the
    visit dir's name (``00m``).
    """
    t = read_table(
        raw,
        ["FOLDER", "PARTICIPANTID", "STUDYDATE", "BARCODE", "ACCESSIONNUMBER", "STUDYDESCRIPTION", "SERIESDESCRIPTION"],
        required=["FOLDER", "PARTICIPANTID", "SERIESDESCRIPTION"],
        sep=",",
    )
    f = t.frame
    folder = f["FOLDER"].str.replace("\\", "/", regex=False).str.strip("/")
    _check_folders(t, folder)
    # the release code's first component ("0" of "0.C.2/9000001/...") names the visit
    code = pc.struct_field(pc.extract_regex(pa.array(folder, type=pa.large_string()), r"^(?P<c>[^/.]*)"), [0])
    visit = pd.Series(code.to_numpy(zero_copy_only=False), dtype=object).map(RELEASE_VISITS)
    dir_visit = raw.source.visit
    if dir_visit is not None:
        visit = visit.fillna(dir_visit)
    if visit.isna().any():
        row = int(np.flatnonzero(visit.isna().to_numpy())[0])
        raise t.error(
            f"cannot tell the visit: Folder {shown(f['FOLDER'].iloc[row])} does not start with a "
            "release code (0.C.2, 1.E.1 ...) and the folder is not a visit dir (00m, 12m ...)",
            row=row,
            column="FOLDER",
        )
    description = f["SERIESDESCRIPTION"]  # already stripped of its padding
    if (description == "").any():
        row = int(np.flatnonzero((description == "").to_numpy())[0])
        raise t.error("empty SeriesDescription", row=row, column="SERIESDESCRIPTION")
    split = [split_series_description(d) for d in description.tolist()]
    sequence = np.array([seq for seq, _ in split], dtype=object)
    side = np.array([letter for _, letter in split], dtype=object)
    barcode = "BARCODE" if "BARCODE" in f.columns else "ACCESSIONNUMBER"
    # the database's column sizes (PostgreSQL enforces them; SQLite would store anything)
    _check_length(t, description, "SERIESDESCRIPTION", 128)
    _check_length(t, pd.Series(sequence), "SERIESDESCRIPTION", 64, "the sequence name (without _RIGHT/_LEFT)")
    for column, limit in (("STUDYDESCRIPTION", 128), (barcode, 32)):
        if column in f.columns:
            _check_length(t, f[column], column, limit)
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t, "PARTICIPANTID"),
            "visit": visit.astype("int64").to_numpy(),
            "side": side,
            "sequence": sequence,
            "series_description": description.to_numpy(dtype=object),
            "study_description": text_or_none(t, "STUDYDESCRIPTION"),
            "folder": folder.to_numpy(dtype=object),
            "visit_dir": str(raw.source.path.parent.resolve()),
            "study_date": dates(t, "STUDYDATE", fmt="%Y%m%d"),
            # kept as written: some releases lost the leading zeros (compare with lstrip("0"))
            "barcode": text_or_none(t, barcode),
            "source_file": raw.source.relative_path,
            "source_row": t.lines,
        }
    )
    # a rescan is listed after the series it replaces
    return frame.drop_duplicates(["subject_id", "visit", "side", "sequence"], keep="last")
