"""From a bilateral PA radiograph and a joint centre to the stored knee ROI (pure numpy/scipy).

As the Oulu pipeline of the reference (OAI_DISTRIBUTIONS.md section 4), with the parameters of
``PreprocessParams`` (``xray_*``, recorded in the store):

1. a square ROI of ``xray_roi_mm`` (136.5 mm) centred on the joint centre, resampled (bilinear)
   to ``xray_resample_mm`` (0.195 mm: 700 x 700 pixels, the reference's
   ``prepare_data_xr_mipt.py`` pixel spacing and ``runner.sh`` input size); parts outside the
   image are padded with the image's 1st percentile (air). Stores made before issue 21 used
   140 mm at 0.2 mm and record it;
2. downscaled by block means to the stored size, ``xray_size x xray_stored_scale``: x0.5 by 2x2
   means to 350 x 350 by default; at ``xray_stored_scale=2`` the 700 pixels are stored as they are
   and training downscales after its augmentations, as the reference
   (``oaimodels.data.transforms.Downscale``);
3. left knees flipped left-right so every knee looks like a right one (``xray_flip_left``);
4. intensities clipped to the ROI's [5th, 99th] percentiles and mapped onto 0..255 (uint8).

Stored as ``(1, 350, 350)`` (or ``(1, 700, 700)``) in the store's ``xray`` array (D = 1, so the
volume machinery of the store and the data loaders applies unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class KneeRoi:
    """The stored ROI of one knee and where it came from (source pixels)."""

    image: np.ndarray  # (1, size, size) uint8
    box: tuple[float, float, float, float]  # row0, col0, row1, col1 in source pixels
    source_spacing_mm: float
    notes: dict[str, Any]


def roi_box(centre: tuple[float, float], side_px: float) -> tuple[float, float, float, float]:
    """(row0, col0, row1, col1) of the square of ``side_px`` centred on ``centre`` (row, col)."""
    r, c = centre
    half = side_px / 2
    return (r - half, c - half, r + half, c + half)


def roi_iou(centre_a: tuple[float, float], centre_b: tuple[float, float], side_px: float) -> float:
    """Intersection over union of two equal squares of ``side_px`` centred on the two centres."""
    dr = max(0.0, side_px - abs(centre_a[0] - centre_b[0]))
    dc = max(0.0, side_px - abs(centre_a[1] - centre_b[1]))
    inter = dr * dc
    return inter / (2 * side_px * side_px - inter)


def crop_knee(image: np.ndarray, spacing_mm: float, centre: tuple[float, float], side: str, params: Any) -> KneeRoi:
    """The stored ROI of the knee at ``centre`` (row, col source pixels) of ``image``."""
    if side not in ("R", "L"):
        raise ValueError(f"knee side must be 'R' or 'L', not {side!r}")
    roi_mm, step_mm, size = float(params.xray_roi_mm), float(params.xray_resample_mm), int(params.xray_stored_size)
    fine = int(round(roi_mm / step_mm))  # 700
    if fine % size:
        raise ValueError(
            f"the resampled ROI ({fine} px) is not a multiple of the stored size {size} "
            f"(xray_size {params.xray_size} x xray_stored_scale {params.xray_stored_scale})"
        )
    factor = fine // size
    offsets = (np.arange(fine) - (fine - 1) / 2) * (step_mm / spacing_mm)  # source pixels
    rows = centre[0] + offsets
    cols = centre[1] + offsets
    air = float(np.percentile(image[:: max(1, image.shape[0] // 256), :: max(1, image.shape[1] // 256)], 1))
    resampled = ndimage.map_coordinates(
        image.astype(np.float32),
        np.meshgrid(rows, cols, indexing="ij"),
        order=1,
        mode="constant",
        cval=air,
        prefilter=False,
    )
    small = resampled.reshape(size, factor, size, factor).mean(axis=(1, 3))
    if side == "L" and params.xray_flip_left:
        small = small[:, ::-1]
    low_q, high_q = params.xray_percentiles
    low, high = (float(v) for v in np.percentile(small, [low_q, high_q]))
    scaled = (np.clip(small, low, high) - low) * (255.0 / max(high - low, 1e-6))
    stored = np.floor(scaled + 0.5).astype(np.uint8)[None]
    half = roi_mm / spacing_mm
    outside = _outside_fraction(roi_box(centre, half), image.shape)
    notes: dict[str, Any] = {"intensity_range": [round(low, 2), round(high, 2)]}
    if outside > 0:
        notes["roi_outside_image"] = round(outside, 4)
    if side == "L" and params.xray_flip_left:
        notes["flipped"] = True
    return KneeRoi(stored, roi_box(centre, half), float(spacing_mm), notes)


def _outside_fraction(box: tuple[float, float, float, float], shape: tuple[int, ...]) -> float:
    r0, c0, r1, c1 = box
    inside = max(0.0, min(r1, shape[0]) - max(r0, 0.0)) * max(0.0, min(c1, shape[1]) - max(c0, 0.0))
    return 1.0 - inside / ((r1 - r0) * (c1 - c0))
