"""Reorienting a read series to one canonical voxel order, from ``ImageOrientationPatient``.

The reference reorients every series (through dicom2nifti) before anything else. A series read by
``oaicohort.imaging.series.dicom`` is (slices, rows, cols) with slices sorted along the normal,
but its rows and columns run as stored: a series written with reversed row or column cosines (or
a transposed in-plane matrix) would otherwise be stored mirrored or rotated.

The canonical order is the OAI sagittal DESS as acquired, in DICOM patient coordinates (LPS: +x
towards the patient's left, +y posterior, +z superior):

- axis 0 (slices) runs towards the patient's right (-x),
- axis 1 (rows) runs inferior (-z),
- axis 2 (cols) runs posterior (+y),

i.e. ``ImageOrientationPatient = [0, 1, 0, 0, 0, -1]`` with slices sorted along its normal. Each
volume axis is matched to the patient axis its direction is closest to, then the axes are
permuted and flipped (never interpolated): an oblique acquisition keeps its small obliquity and
the recorded orientation is the exact permuted/flipped one. A series whose axes cannot be matched
one-to-one (about 45 degrees oblique) is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from oaicohort.imaging.series.dicom import SeriesError

# volume axis -> (patient axis index, sign): slices -x, rows -z, cols +y
CANONICAL_AXES: tuple[tuple[int, int], ...] = ((0, -1), (2, -1), (1, +1))
CANONICAL_ORIENTATION: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
_PATIENT_AXES = "xyz"


def axis_directions(orientation: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Unit directions (3x3, one row per volume axis: slice, row, col) of a read series."""
    cosines = np.asarray(orientation, dtype=np.float64)
    col_direction = cosines[:3] / np.linalg.norm(cosines[:3])  # along a row: increasing column index
    row_direction = cosines[3:] / np.linalg.norm(cosines[3:])  # down a column: increasing row index
    normal = np.cross(col_direction, row_direction)
    normal /= np.linalg.norm(normal)
    return np.stack([normal, row_direction, col_direction])


@dataclasses.dataclass(frozen=True)
class Reorientation:
    """How to bring a (slices, rows, cols) volume to the canonical order."""

    permutation: tuple[int, int, int]  # output axis j takes input axis permutation[j]
    flips: tuple[bool, bool, bool]  # per output axis, after the permutation

    @property
    def is_identity(self) -> bool:
        return self.permutation == (0, 1, 2) and not any(self.flips)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        out = np.transpose(pixels, self.permutation)
        index = tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)
        return np.ascontiguousarray(out[index])

    def describe(self) -> dict[str, Any]:
        return {"permutation": list(self.permutation), "flips": [int(f) for f in self.flips]}


def reorientation(orientation: tuple[float, ...] | np.ndarray, where: Any = "series") -> Reorientation:
    """The permutation and flips that bring a series of ``orientation`` to the canonical order."""
    directions = axis_directions(orientation)
    dominant = np.argmax(np.abs(directions), axis=1)  # patient axis of each volume axis
    if len(set(dominant.tolist())) != 3:
        raise SeriesError(
            where,
            f"ImageOrientationPatient {list(np.round(np.asarray(orientation, dtype=float), 4))} is too oblique "
            "to match the volume axes to patient axes",
        )
    permutation, flips = [], []
    for patient_axis, sign in CANONICAL_AXES:
        source = int(np.flatnonzero(dominant == patient_axis)[0])
        permutation.append(source)
        flips.append(bool(np.sign(directions[source, patient_axis]) != sign))
    return Reorientation(tuple(permutation), tuple(flips))  # type: ignore[arg-type]


def to_canonical(series: Any) -> Any:
    """``series`` (a ``DicomVolume``) with pixels, spacing, orientation and origin in canonical order.

    Returns ``series`` itself when it is already canonical; otherwise a copy whose notes say
    what was done. The side, files and header facts are unchanged.
    """
    change = reorientation(series.orientation, series.folder)
    if change.is_identity:
        return series
    directions = axis_directions(series.orientation)
    spacing = np.asarray(series.spacing_mm, dtype=np.float64)
    shape = np.asarray(series.pixels.shape)
    origin = np.asarray(series.origin_mm, dtype=np.float64)
    new_directions = []
    for source, flip in zip(change.permutation, change.flips):
        direction = directions[source]
        if flip:
            origin = origin + direction * spacing[source] * (shape[source] - 1)
            direction = -direction
        new_directions.append(direction)
    _, row_direction, col_direction = new_directions
    permuted = [series.spacing_mm[i] for i in change.permutation]
    note = (
        "reoriented to the canonical sagittal order (slices -x, rows -z, cols +y): "
        f"axes {list(change.permutation)}, flipped {[a for a, f in zip('src', change.flips) if f]}"
    )
    return dataclasses.replace(
        series,
        pixels=change.apply(series.pixels),
        spacing_mm=tuple(float(v) for v in permuted),
        orientation=tuple(float(v) for v in (*col_direction, *row_direction)),
        origin_mm=tuple(float(v) for v in origin),
        notes=sorted([*series.notes, note]),
    )
