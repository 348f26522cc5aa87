"""Where a stored voxel lies in the scanner: the affine of a stored volume (NIfTI export).

``oai preprocess`` records each series' geometry in its volumes' notes (``series_geometry``):
ImageOrientationPatient (row and column direction cosines), the position of the first slice
(the one with the smallest position along the slice normal, index 0 of the read series) and the
(slice, row, column) spacing. From that and the store's :class:`PreprocessParams`,
:func:`stored_affine` composes, for one stored volume of a view:

1. stored voxel ``(d, h, w)`` -> full-resolution region voxel: the centre of the block it is the
   mean of (``views_of_region``: sag blocks ``f x f x f``; cor/ax transposed block means);
2. region voxel -> read-series voxel: the margin cut and centre pad/crop (the same plan as
   ``volume_transforms.region_plan``), and the flip of right knees along the slice axis;
3. series voxel ``(k, r, c)`` -> DICOM patient coordinates (LPS, mm):
   ``origin + k*ds*normal + r*dr*col_cosines + c*dc*row_cosines``;
4. LPS -> the RAS+ coordinates NIfTI uses (x and y negated).

So an exported volume overlays the original series in any viewer, right knees included (their
affine has the opposite handedness, because the stored array is mirrored).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oaicohort.imaging.recipe.mri import region_plan
from oaicohort.imaging.recipe.params import PreprocessParams

GEOMETRY_NOTE = "geometry"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryMissing(ValueError):
    """A volume was preprocessed without recording its series geometry (an older toolkit)."""


def series_geometry(series: Any) -> dict[str, Any] | None:
    """The geometry note of a read series (``DicomVolume``), or None when it carries none."""
    orientation = getattr(series, "orientation", None)
    origin = getattr(series, "origin_mm", None)
    if orientation is None or origin is None:
        return None
    return {
        "orientation": [round(float(v), 8) for v in orientation],
        "origin_mm": [round(float(v), 6) for v in origin],
        "spacing_mm": [round(float(v), 8) for v in series.spacing_mm],
    }


def series_affine(geometry: dict[str, Any]) -> np.ndarray:
    """4x4 LPS affine of the read series' voxel index ``(k, r, c)`` (slice, row, column)."""
    orientation = np.asarray(geometry["orientation"], dtype=np.float64)
    row_cos, col_cos = orientation[:3], orientation[3:]
    normal = np.cross(row_cos, col_cos)
    ds, dr, dc = (float(v) for v in geometry["spacing_mm"])
    affine = np.eye(4)
    affine[:3, 0] = normal * ds
    affine[:3, 1] = col_cos * dr
    affine[:3, 2] = row_cos * dc
    affine[:3, 3] = geometry["origin_mm"]
    return affine


def region_to_series(params: PreprocessParams, source_shape: tuple[int, int, int], side: str) -> np.ndarray:
    """4x4 map of full-resolution region index ``(s, r, c)`` to read-series index ``(k, r, c)``."""
    src, dst, _notes = region_plan(tuple(source_shape), params)
    m = np.eye(4)
    for axis in range(3):
        m[axis, 3] = src[axis].start - dst[axis].start
    if side == "R" and params.flip_right:  # the region was cut from the series mirrored along k
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, source_shape[0] - 1
        m = flip @ m
    return m


def stored_to_region(params: PreprocessParams, view: str) -> np.ndarray:
    """4x4 map of stored index ``(d, h, w)`` to the region index of its block's centre."""
    if view == "sag":
        f = params.downsample
        blocks, order = (f, f, f), (0, 1, 2)
    elif view == "cor":  # stored (cols, rows, slices)
        through, inplane, lr = params.reprojection_blocks
        blocks, order = (lr, inplane, through), (2, 1, 0)
    elif view == "ax":  # stored (rows, cols, slices)
        through, inplane, lr = params.reprojection_blocks
        blocks, order = (lr, through, inplane), (1, 2, 0)
    else:
        raise ValueError(f"unknown view {view!r}")
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    # stored axis ``a`` is region axis ``order[a]``
    for stored_axis, region_axis in enumerate(order):
        b = blocks[region_axis]
        m[region_axis, stored_axis] = b
        m[region_axis, 3] = (b - 1) / 2
    return m


def stored_affine(params: PreprocessParams, view: str, side: str, notes: dict[str, Any]) -> np.ndarray:
    """4x4 RAS+ affine (NIfTI) of a stored ``view`` volume from its volumes-row ``notes``."""
    geometry = notes.get(GEOMETRY_NOTE) if notes else None
    if not geometry or "source_shape" not in notes:
        raise GeometryMissing(
            "the volume's series geometry was not recorded (preprocessed by an older toolkit); "
            "preprocess it again into a new store to export it with its position"
        )
    return (
        LPS_TO_RAS
        @ series_affine(geometry)
        @ region_to_series(params, tuple(notes["source_shape"]), side)
        @ stored_to_region(params, view)
    )
