"""The knees of one bilateral radiograph: joint centres (localiser or given) -> stored ROIs.

``preprocess_xray`` is the radiograph recipe's entry point, shared by ``oai preprocess --view
xray`` (``runs.xray``) and ``oai predict`` on radiographs (both load the image with
``oaicohort.imaging.series.load.load_radiograph``), so a knee scored straight from a DICOM file is
cropped exactly as the run's store was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.recipe.xray import KneeRoi, crop_knee
from oaicohort.imaging.recipe.xray_localiser import JointCentre, localise_knees

# a ROI more than half outside the image is a misplaced centre, not a knee at the image edge
MOST_OUTSIDE = 0.5


@dataclass(frozen=True)
class KneeCrop:
    """One knee's stored ROI, the joint centre it was cut around and the localiser's score."""

    roi: KneeRoi
    centre: tuple[float, float]  # (row, col) source pixels
    score: float | None  # None for a centre given by the caller (an ROI file)


class RadiographLike(Protocol):
    """What the recipe needs of a radiograph (``oaicohort.imaging.series.radiograph.Radiograph``)."""

    @property
    def pixels(self) -> np.ndarray: ...  # (rows, cols) uint16, bone bright

    @property
    def spacing_mm(self) -> float: ...


def preprocess_xray(
    radiograph: RadiographLike,
    params: PreprocessParams,
    sides: Iterable[str] = ("R", "L"),
    centres: dict[str, tuple[float, float]] | None = None,
) -> dict[str, KneeCrop | str]:
    """Each of ``sides`` cropped around its joint centre: the localiser's, or ``centres`` (row,
    col source pixels; every side must be there). A knee that cannot be cropped maps to the reason."""
    image, spacing_mm = radiograph.pixels, radiograph.spacing_mm
    found = localise_knees(image, spacing_mm) if centres is None else {}
    out: dict[str, KneeCrop | str] = {}
    for side in sides:
        try:
            score: float | None = None
            if centres is not None:
                centre = centres[side]
            else:
                result = found[side]
                if not isinstance(result, JointCentre):
                    raise ValueError(f"localiser: {result.reason}")
                centre, score = (result.row, result.col), result.score
            roi = crop_knee(image, spacing_mm, centre, side, params)
            if roi.notes.get("roi_outside_image", 0.0) > MOST_OUTSIDE:
                raise ValueError(f"ROI centred at {centre} lies mostly outside the {image.shape} image")
            out[side] = KneeCrop(roi, centre, score)
        except ValueError as exc:
            out[side] = str(exc)
    return out
