"""The intensity normalisation of a model input, per kind of image, as the reference applies it.

After each volume (or radiograph ROI) is scaled to [0, 1], the reference subtracts a mean and
divides by a standard deviation of its modality (``oaprmr/datasets/_data_provider.py``,
``prepare_datasets_loaders``: ``PTNormalize(mean=[0.257], std=[0.235])`` for ``sag_3d_dess``,
``PTNormalize(mean=[0.543], std=[0.296])`` for ``xr_pa``, in every regime). A run records the
pair it used in its input layout, so evaluating or explaining it later normalises the same way;
runs recorded before the layout held it used the MRI pair (:data:`LEGACY`).
"""

from __future__ import annotations

from oaicohort.vocabulary import XRAY_VIEW

MRI_NORMALISATION: tuple[float, float] = (0.257, 0.235)
XRAY_NORMALISATION: tuple[float, float] = (0.543, 0.296)
LEGACY = MRI_NORMALISATION  # every run before issue 21 (the X-ray ones too)

SOURCES: dict[str, str] = {
    "mri": "OAProgressionMR oaprmr/datasets/_data_provider.py:261-263 (PTNormalize mean 0.257, std 0.235 "
    "for sag_3d_dess)",
    XRAY_VIEW: "OAProgressionMR oaprmr/datasets/_data_provider.py:264-266 (PTNormalize mean 0.543, std 0.296 "
    "for xr_pa)",
}


def normalisation_for(view: str) -> tuple[float, float]:
    """(mean, std) of the reference for inputs read from the stored ``view``."""
    return XRAY_NORMALISATION if view == XRAY_VIEW else MRI_NORMALISATION


def normalisation_source(view: str) -> str:
    return SOURCES[XRAY_VIEW if view == XRAY_VIEW else "mri"]
