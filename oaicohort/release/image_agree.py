"""An image index and the images' own headers must agree before a series is stored.

Where a series is both listed by an index (``contents.csv``, ``image03.txt``) and scanned from its
DICOM header (``oaicohort.release.image_scan``), the two are compared; a disagreement stops the
ingest with an ``InputFileError`` naming the index file and line, the header file and both values,
never a silent choice of one of them:

- the same folder: participant, visit, knee, sequence, ``StudyDate``, barcode and
  ``StudyDescription`` must be the same (empty values are not compared; barcodes without their
  leading zeros, descriptions without case and padding);
- the same participant, visit, knee and sequence in two places (an NDA ``image03.txt`` names the
  ``.tar.gz`` of a series whose folder the image download holds): the series' own folder name
  must be the same, and so must date, barcode and study description. The index row is kept when
  its files are there, else the scanned one, whose files are.

Scanned series that no index lists are added as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.release.image_files import series_id, series_key
from oaicohort.visits import visit_name

KEY = ["subject_id", "visit", "side", "sequence"]
_COMPARED = ("study_date", "barcode", "study_description")
# what messages call each column: the header's element, or what the index calls it
_NAMES = {
    "subject_id": "participant (PatientID)",
    "visit": "visit",
    "side": "knee (SeriesDescription)",
    "sequence": "sequence (SeriesDescription)",
    "study_date": "StudyDate",
    "barcode": "barcode (AccessionNumber)",
    "study_description": "StudyDescription",
}


@dataclass
class Agreement:
    """The series to store, and how index and scan met."""

    series: list[pd.DataFrame]  # the index frames (less rows a scan replaced) and the scanned rows to add
    confirmed: int = 0  # listed series whose header agreed
    replaced: int = 0  # listed series whose files are not there, stored as scanned (same series)
    added: int = 0  # scanned series no index lists


def _normal(column: str, values: pd.Series) -> pd.Series:
    if column == "barcode":
        return values.map(lambda v: None if v is None or pd.isna(v) else str(v).strip().lstrip("0"))
    if column == "study_description":
        return values.map(lambda v: None if v is None or pd.isna(v) else " ".join(str(v).upper().split()))
    return values


def _differ(index: pd.DataFrame, scan: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Per column, which pairs (row i of ``index`` with row i of ``scan``) hold two different values."""
    out = {}
    for column in columns:
        a = _normal(column, index[column].reset_index(drop=True))
        b = _normal(column, scan[column].reset_index(drop=True))
        both = a.notna().to_numpy() & b.notna().to_numpy()
        differ = np.zeros(len(a), dtype=bool)
        differ[both] = a[both].to_numpy(dtype=object) != b[both].to_numpy(dtype=object)
        out[column] = differ
    return out


def _what(row: pd.Series) -> str:
    side = {"R": "_RIGHT", "L": "_LEFT"}.get(str(row["side"]), "")
    return f"participant {row['subject_id']}, visit {visit_name(int(row['visit']))}, {row['sequence']}{side}"


def _shown(column: str, value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    return repr(visit_name(int(value))) if column == "visit" else repr(str(value))


def _disagree(root: Path, index: pd.Series, scan: pd.Series, listed_as: str, says: str) -> InputFileError:
    return InputFileError(
        root / str(index["source_file"]),
        f"{listed_as}; its DICOM header {root / str(scan['source_file'])} says {says}. The image index and the "
        "images disagree: correct or remove the wrong one (nothing was changed)",
        line=int(index["source_row"]),
    )


def _check(root: Path, index: pd.DataFrame, scan: pd.DataFrame, columns: Sequence[str], same_place: bool) -> None:
    differs = _differ(index, scan, columns)
    bad = np.logical_or.reduce(list(differs.values()))
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    a, b = index.iloc[i], scan.iloc[i]
    says = "; ".join(
        f"{_NAMES[column]} {_shown(column, b[column])} where the index has {_shown(column, a[column])}"
        for column in columns
        if differs[column][i]
    )
    where = "the series folder" if same_place else "the series"
    raise _disagree(root, a, b, f"lists {where} {a['folder']} as {_what(a)}", says)


def _side(merged: pd.DataFrame, columns: Sequence[str], suffix: str) -> pd.DataFrame:
    """One source's columns of a merge (``suffix``: the other source's columns carry it)."""
    return pd.DataFrame({c: merged[c + suffix if c + suffix in merged.columns else c].to_numpy() for c in columns})


def _exists(visit_dir: str, folder: str) -> bool:
    outer, bang, _ = str(visit_dir).partition("!")
    return os.path.exists(outer if bang else series_key(visit_dir, folder))


def agree(root: Path, indexed: Sequence[pd.DataFrame], scanned: pd.DataFrame) -> Agreement:
    """Check ``scanned`` rows against the ``indexed`` frames (module docstring) and return what to store."""
    frames = [f for f in indexed if len(f)]
    if scanned.empty or not frames:
        return Agreement([*indexed, scanned] if len(scanned) else list(indexed), added=len(scanned))
    index = pd.concat(
        [f.assign(_frame=k, _pos=np.arange(len(f))) for k, f in enumerate(frames)], ignore_index=True
    ).drop_duplicates(KEY, keep="last")  # as the writer stores them: a later index wins
    index["_key"] = [series_key(v, f) for v, f in zip(index["visit_dir"], index["folder"])]
    scan = scanned.assign(_key=[series_key(v, f) for v, f in zip(scanned["visit_dir"], scanned["folder"])])

    # the same folder, listed and scanned
    columns = list(scanned.columns)
    placed = scan.merge(index, on="_key", suffixes=("", "_index"))
    _check(root, _side(placed, columns, "_index"), _side(placed, columns, ""), [*KEY, *_COMPARED], same_place=True)
    rest = scan[~scan["_key"].isin(placed["_key"])]
    free = index[~index["_key"].isin(placed["_key"])]

    # the same knee and sequence elsewhere: the same series, or a conflict
    pairs = rest.reset_index(names="_scan_row").merge(free, on=KEY, suffixes=("", "_index"))
    drop_scan: set[int] = set()
    replaced: list[tuple[int, int]] = []
    if len(pairs):
        listed, found = _side(pairs, columns, "_index"), _side(pairs, columns, "")
        other = [series_id(a) != series_id(b) for a, b in zip(listed["folder"], found["folder"])]
        if any(other):
            i = other.index(True)
            a, b = listed.iloc[i], found.iloc[i]
            says = f"another series of that knee and sequence is {b['folder']}"
            raise _disagree(root, a, b, f"lists the series {a['folder']} as {_what(a)}", says)
        _check(root, listed, found, _COMPARED, same_place=False)
        for scan_row, vd, folder, frame, pos in zip(
            pairs["_scan_row"], listed["visit_dir"], listed["folder"], pairs["_frame"], pairs["_pos"]
        ):
            if _exists(vd, folder):
                drop_scan.add(int(scan_row))
            else:
                replaced.append((int(frame), int(pos)))
    kept_frames = []
    for k, frame in enumerate(frames):
        gone = [pos for f, pos in replaced if f == k]
        kept_frames.append(frame.drop(index=frame.index[gone]) if gone else frame)
    added = rest.drop(index=list(drop_scan)).drop(columns=["_key"])
    return Agreement(
        [*kept_frames, added] if len(added) else kept_frames,
        confirmed=len(placed) + len(drop_scan),
        replaced=len(replaced),
        added=len(added) - len(replaced),
    )
