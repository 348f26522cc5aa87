"""Sources must agree before an image series is stored or scored.

Three sources describe each series: the image index (``contents.csv``: its ``Folder`` path, its
``ParticipantID`` and ``SeriesDescription``, as ingested) or, for a folder given to ``oai predict``,
what it was given as (the run's sequence, ``--side``), and the DICOM headers of the series
(``PatientID``, ``SeriesDescription``, ``ImageOrientationPatient``, ``PixelSpacing``, the pixel
depth). A series where they disagree is not guessed at: it becomes a recorded failure (or a
refusal) naming both values, and nothing of it reaches the store or the model. Checked here (all
together by ``oaicohort.imaging.series.load``):

- the participant: every participant-like folder name (seven digits, OAI ids are 9xxxxxx) in the
  index ``Folder`` path, the ingested ``ParticipantID`` and the DICOM ``PatientID``;
- the sequence and knee side: the index ``SeriesDescription`` and the DICOM one; a DICOM one named
  the OAI way (sequence + ``_RIGHT``/``_LEFT``) and the sequence and side it was given as;
- the slice orientation and the view the sequence is stored as (``SAG_...`` slices are sagittal:
  their normal runs left-right; ``COR_`` anterior-posterior; ``AX_`` head-foot);
- the geometry: pixel and slice spacing positive and finite;
- the pixel depth: 8 or 16 bits allocated, at most 16 stored, values that fit 16 bits unsigned;
  anything else would be wrapped or truncated on the way to ``uint16``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.errors import InputFileError
from oaicohort.release.image_index import split_series_description  # the one home of this rule

_PARTICIPANT_DIR = re.compile(r"9\d{6}")
# the patient axis (x left-right, y anterior-posterior, z head-foot) a plane's normal runs along
_PLANE_AXIS = {"SAG": 0, "COR": 1, "AX": 2}
_AXIS_PLANE = {0: "sagittal", 1: "coronal", 2: "axial"}
# a normal within ~35 degrees of its axis (cos 35 deg ~ 0.82): oblique planning is fine, a swap is not
_PLANE_COSINE = 0.8
SUPPORTED_BITS_ALLOCATED = (8, 16)
_SIDE_WORDS = {"R": "right", "L": "left"}


class SeriesDisagreement(InputFileError):
    """The index and the DICOM headers describe a series differently."""


def folder_participants(folder: str | Path) -> set[int]:
    """Participant ids named by the folders of an index ``Folder`` path."""
    return {int(part) for part in Path(folder).parts if _PARTICIPANT_DIR.fullmatch(part)}


def check_participant(path: Path, index_folder: str | None, participant_id: int | None, patient_id: str | None) -> None:
    """The index Folder path, the ingested ParticipantID and the DICOM PatientID name one participant
    (a series given without an index names whoever its PatientID says)."""
    if participant_id is None:
        return
    if index_folder is not None:
        named = folder_participants(index_folder)
        if named and named != {participant_id}:
            shown = ", ".join(str(p) for p in sorted(named))
            raise SeriesDisagreement(
                path, f"the index Folder path names participant {shown} but its ParticipantID is {participant_id}"
            )
    if patient_id is None or not patient_id.strip():
        return
    text = patient_id.strip()
    if not text.isdigit() or int(text) != participant_id:
        raise SeriesDisagreement(path, f"DICOM PatientID is {text!r} but the index says participant {participant_id}")


def check_description(path: Path, index_description: str | None, dicom_description: str | None) -> None:
    """The sequence and side of the index agree with the DICOM SeriesDescription."""
    if index_description is None or dicom_description is None:
        return
    index_text, dicom_text = index_description.strip().upper(), dicom_description.strip().upper()
    if index_text and index_text != dicom_text:
        raise SeriesDisagreement(
            path,
            f"DICOM SeriesDescription is {dicom_description.strip()!r} but the index says {index_description.strip()!r}",
        )


def check_given(
    path: Path, dicom_description: str | None, *, sequence: str | None, side: str | None, given_by: str
) -> None:
    """A DICOM description named the OAI way (``SAG_3D_DESS_LEFT``) names the sequence and knee the
    series was given as (``given_by`` says by whom); a description without a side suffix says
    neither, and is not guessed at."""
    if not dicom_description or (sequence is None and side is None):
        return
    found_sequence, found_side = split_series_description(dicom_description)
    if not found_side:
        return
    if (sequence is None or found_sequence == sequence.upper()) and (side is None or found_side == side):
        return
    given = " ".join(word for word in (_SIDE_WORDS.get(side or ""), sequence) if word)
    raise SeriesDisagreement(
        path,
        f"DICOM SeriesDescription {dicom_description.strip()!r} is a {found_sequence} series of the "
        f"{_SIDE_WORDS[found_side]} knee, but it was given as a {given} knee ({given_by})",
    )


def normal_axis(orientation: Any) -> tuple[int, float]:
    """The patient axis the slice normal runs along most, and the cosine with it."""
    values = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if not math.isfinite(length) or length == 0:
        return -1, 0.0
    normal = np.abs(normal / length)
    axis = int(np.argmax(normal))
    return axis, float(normal[axis])


def check_orientation(path: Path, description: str | None, orientation: Any) -> None:
    """A ``SAG_``/``COR_``/``AX_`` series has slices in that plane."""
    if description is None or orientation is None:
        return
    plane = description.strip().upper().split("_", 1)[0]
    expected = _PLANE_AXIS.get(plane)
    if expected is None:
        return
    axis, cosine = normal_axis(orientation)
    if axis != expected or cosine < _PLANE_COSINE:
        found = _AXIS_PLANE.get(axis, "undefined")
        raise SeriesDisagreement(
            path,
            f"slices are {found} (ImageOrientationPatient {[round(float(v), 4) for v in orientation]}) "
            f"but the series {description.strip()!r} is stored as {_AXIS_PLANE[expected]}",
        )


def check_spacing(path: Path, spacing_mm: Any) -> None:
    values = [float(v) for v in spacing_mm]
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise SeriesDisagreement(path, f"voxel spacing {values} mm: every spacing must be positive and finite")


def check_pixel_depth(path: Path, bits_allocated: int, bits_stored: int) -> None:
    """An unsupported depth is a failure, never a silent wrap into 16 bits."""
    if bits_allocated not in SUPPORTED_BITS_ALLOCATED:
        raise SeriesDisagreement(path, f"unsupported pixel depth: BitsAllocated {bits_allocated} (supported: 8 or 16)")
    if not 1 <= bits_stored <= bits_allocated:
        raise SeriesDisagreement(
            path, f"unsupported pixel depth: BitsStored {bits_stored} with BitsAllocated {bits_allocated}"
        )


def check_value_range(path: Path, image: np.ndarray) -> None:
    """Decoded pixel values must fit ``uint16`` exactly (a 32-bit decoder output would wrap)."""
    if image.dtype.kind == "f":
        raise SeriesDisagreement(path, f"floating-point pixel data ({image.dtype}) is not supported")
    if image.dtype.itemsize > 2 and image.size and int(image.max()) > np.iinfo(np.uint16).max:
        raise SeriesDisagreement(
            path, f"pixel value {int(image.max())} does not fit 16 bits; unsupported pixel depth ({image.dtype})"
        )
