"""The recipe's rotation, always in the sagittal plane, for every stored view.

The reference rotates the cropped sagittal volume in its slice plane (rows x columns) and only
then reslices it into coronal or axial stacks. A single-view coronal or axial model reads its own
stored array, (cols, rows, left-right) or (rows, cols, left-right); rotating those in their own
slice plane would turn the knee about another axis. Here such a batch is permuted so that its
sagittal plane is the image plane, rotated rigidly in millimetres (its two in-plane axes have
different spacings: the re-projection blocks are 4 and 2 voxels), and permuted back.
"""

from __future__ import annotations

import torch

from .data import rotate_in_slice

# stored (D, H, W) -> permutation giving (left-right, rows, cols), and its inverse
_TO_SAGITTAL = {"sag": (0, 1, 2, 3), "cor": (0, 3, 2, 1), "ax": (0, 3, 1, 2), "xray": (0, 1, 2, 3)}


def sagittal_extent_ratio(view: str, shape: tuple[int, ...], spacing_ratio: float) -> float | None:
    """Physical height / width of the sagittal image of a ``(B, D, H, W)`` batch of ``view``.

    ``spacing_ratio`` is the stored D spacing over the stored H spacing (1 for sagittal).
    """
    _b, d, h, _w = shape
    if view in ("sag", "xray"):
        return None  # square pixels: the plain pixel-unit rotation (the radiograph ROI in its plane)
    if view == "cor":  # image rows = H (rows), cols = D (cols)
        return h / (d * spacing_ratio)
    if view == "ax":  # image rows = D (rows), cols = H (cols)
        return (d * spacing_ratio) / h
    raise ValueError(f"unknown view {view!r}")


def rotate_sagittal(x: torch.Tensor, angles_deg: torch.Tensor, view: str, spacing_ratio: float = 1.0) -> torch.Tensor:
    """Rotate each ``(B, D, H, W)`` volume of ``view`` by its angle in the sagittal plane."""
    order = _TO_SAGITTAL[view]
    ratio = sagittal_extent_ratio(view, tuple(x.shape), spacing_ratio)
    sagittal = x.permute(order)
    rotated = rotate_in_slice(sagittal.contiguous(), angles_deg, extent_ratio=ratio)
    inverse = [order.index(i) for i in range(4)]
    return rotated.permute(inverse).contiguous()
