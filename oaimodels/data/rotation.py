"""In-slice rotation as one ``grid_sample`` per batch, and the recipe's rotation in the sagittal plane for every stored view."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (indices, per-volume parameters) on ``device``, without a stall.

    A blocking host-to-GPU copy waits for all work queued on the stream (and a non-blocking one
    from pageable memory may too), so a few of them per batch would keep the training loop from
    running ahead of the GPU. A pinned copy is queued like a kernel; the caching host allocator
    keeps its pinned block alive until the copy has run.
    """
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def rotation_grid(angles_deg: torch.Tensor, height: int, width: int, extent_ratio: float | None = None) -> torch.Tensor:
    """``affine_grid`` sampling grid that rotates (h, w) images by ``angles_deg`` about their centre.

    The rotation is built in physical units and converted to the normalised coordinates
    ``affine_grid`` uses, so non-square slices (coronal/axial 160x128) rotate rigidly instead of
    being sheared. ``extent_ratio`` is the image's physical height / width (default
    ``height / width``: square pixels).
    """
    ratio = height / width if extent_ratio is None else extent_ratio
    theta_rad = torch.deg2rad(angles_deg.float())
    c, s = torch.cos(theta_rad), torch.sin(theta_rad)
    zero = torch.zeros_like(c)
    theta = torch.stack(
        [
            torch.stack([c, -s * ratio, zero], dim=1),
            torch.stack([s / ratio, c, zero], dim=1),
        ],
        dim=1,
    )
    n = angles_deg.shape[0]
    return F.affine_grid(theta, [n, 1, height, width], align_corners=False)


def rotate_in_slice(x: torch.Tensor, angles_deg: torch.Tensor, extent_ratio: float | None = None) -> torch.Tensor:
    """Rotate every slice of each ``(B, D, H, W)`` volume by that volume's angle (bilinear, zero fill).

    The slices of a volume are the channels of one ``grid_sample`` call, so all of them share
    exactly one grid: the same angle for the whole volume, in one kernel for the whole batch.
    """
    _b, _d, h, w = x.shape
    grid = rotation_grid(to_device(angles_deg, x.device), h, w, extent_ratio).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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
