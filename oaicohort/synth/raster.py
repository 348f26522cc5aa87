"""A small signed-distance rasteriser for the synthetic phantoms.

Shapes (ellipsoids, rounded boxes, elliptic cylinders and their unions, intersections and grown
versions) give approximate signed distances in mm (negative inside) with a bounding box;
``Canvas`` maps a voxel grid (``ImageGeometry``) to a posed local frame (scale, shift, tilt) and
blends each shape's value into the voxels inside it with one-voxel soft edges (partial-volume
blending at any resolution). Nothing here knows about knees: anatomy lives in
``oaicohort.synth.mri_anatomy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

MAX_VALUE = 4095  # BitsStored 12


@dataclass(frozen=True)
class ImageGeometry:
    """Voxel grid of a series: counts and spacings in mm along (slice, row, column)."""

    slices: int
    rows: int
    cols: int
    slice_spacing_mm: float
    row_spacing_mm: float
    col_spacing_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, self.rows, self.cols)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return (self.slice_spacing_mm, self.row_spacing_mm, self.col_spacing_mm)


IMAGE_SIZES: dict[str, ImageGeometry] = {
    "full": ImageGeometry(160, 384, 384, 0.7, 0.365, 0.365),
    "small": ImageGeometry(40, 96, 96, 2.8, 1.46, 1.46),
}


def image_geometry(size: str | ImageGeometry) -> ImageGeometry:
    """The geometry named ``size`` (``full`` or ``small``), or ``size`` itself."""
    if isinstance(size, ImageGeometry):
        return size
    try:
        return IMAGE_SIZES[size]
    except KeyError:
        raise ValueError(f"unknown image size {size!r}; choose one of {sorted(IMAGE_SIZES)}") from None


# --------------------------------------------------------------------------------------------
# Shapes: approximate signed distances (mm, negative inside) with a bounding box, evaluated on
# broadcast coordinate arrays X (n,1,1), Y and Z (1,r,c).


class Shape(Protocol):
    lo: np.ndarray
    hi: np.ndarray

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray: ...


# Shape parameters are kept as Python floats: a NumPy float64 scalar would promote the float32
# coordinate arrays to float64 and double the cost of every operation.


class Ellipsoid:
    def __init__(self, center: Sequence[float], semi_axes: Sequence[float]) -> None:
        self.c = tuple(float(v) for v in center)
        self.a = tuple(float(v) for v in semi_axes)
        self.lo = np.subtract(self.c, self.a)
        self.hi = np.add(self.c, self.a)

    def sdf(self, x, y, z):
        (cx, cy, cz), (ax, ay, az) = self.c, self.a
        q = ((x - cx) / ax) ** 2 + (((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
        return (np.sqrt(q) - 1.0) * min(self.a)


class Box:
    """Axis-aligned box with rounded edges (radius 0 gives sharp edges)."""

    def __init__(self, center: Sequence[float], half: Sequence[float], radius: float = 0.0) -> None:
        self.c = tuple(float(v) for v in center)
        self.h = tuple(float(v) for v in half)
        self.r = float(radius)
        self.lo = np.subtract(self.c, self.h)
        self.hi = np.add(self.c, self.h)

    def sdf(self, x, y, z):
        (cx, cy, cz), r = self.c, self.r
        hx, hy, hz = (h - r for h in self.h)
        qx = np.abs(x - cx) - hx
        qy = np.abs(y - cy) - hy
        qz = np.abs(z - cz) - hz
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + (np.maximum(qy, 0) ** 2 + np.maximum(qz, 0) ** 2))
        inside = np.minimum(np.maximum(qx, np.maximum(qy, qz)), 0)
        return outside + inside - r


class CylinderZ:
    """Elliptic cylinder along z between z_lo and z_hi."""

    def __init__(self, cx: float, cy: float, ax: float, ay: float, z_lo: float, z_hi: float) -> None:
        self.cx, self.cy, self.ax, self.ay = float(cx), float(cy), float(ax), float(ay)
        self.z_lo, self.z_hi = float(z_lo), float(z_hi)
        self.lo = np.array([cx - ax, cy - ay, z_lo])
        self.hi = np.array([cx + ax, cy + ay, z_hi])

    def sdf(self, x, y, z):
        q = ((x - self.cx) / self.ax) ** 2 + ((y - self.cy) / self.ay) ** 2
        radial = (np.sqrt(q) - 1.0) * min(self.ax, self.ay)
        return np.maximum(radial, np.maximum(self.z_lo - z, z - self.z_hi))


class Union:
    def __init__(self, *shapes: Shape) -> None:
        self.shapes = shapes
        self.lo = np.min([s.lo for s in shapes], axis=0)
        self.hi = np.max([s.hi for s in shapes], axis=0)

    def sdf(self, x, y, z):
        out = self.shapes[0].sdf(x, y, z)
        for shape in self.shapes[1:]:
            out = np.minimum(out, shape.sdf(x, y, z))
        return out


class Intersection:
    def __init__(self, *shapes: Shape) -> None:
        self.shapes = shapes
        self.lo = np.max([s.lo for s in shapes], axis=0)
        self.hi = np.min([s.hi for s in shapes], axis=0)

    def sdf(self, x, y, z):
        out = self.shapes[0].sdf(x, y, z)
        for shape in self.shapes[1:]:
            out = np.maximum(out, shape.sdf(x, y, z))
        return out


class Grown:
    """A shape grown outward by ``by`` mm (approximate for approximate distances)."""

    def __init__(self, shape: Shape, by: float) -> None:
        self.shape, self.by = shape, by
        self.lo, self.hi = shape.lo - by, shape.hi + by

    def sdf(self, x, y, z):
        return self.shape.sdf(x, y, z) - self.by


Layer = tuple[Shape, float]


class Pose(Protocol):
    """Where a phantom sits in the grid: isotropic scale, shift (mm) and tilt about x (degrees).

    Read-only members, so frozen dataclasses (``KneeAnatomy``) satisfy it.
    """

    @property
    def scale(self) -> float: ...
    @property
    def shift_mm(self) -> tuple[float, float, float]: ...
    @property
    def tilt_deg(self) -> float: ...


class Canvas:
    """The voxel grid of one series with the knee-local coordinates of every voxel."""

    def __init__(self, geometry: ImageGeometry, anatomy: Pose) -> None:
        self.geometry = geometry
        s, r, c = geometry.shape
        ds, dr, dc = geometry.spacing_mm
        self.scale = anatomy.scale
        sx, sy, sz = anatomy.shift_mm
        theta = math.radians(anatomy.tilt_deg)
        self.cos, self.sin = math.cos(theta), math.sin(theta)
        self.shift = np.array([sx, sy, sz])
        x_img = (np.arange(s) - (s - 1) / 2) * ds
        z_img = -(np.arange(r) - (r - 1) / 2) * dr  # row 0 is superior
        y_img = (np.arange(c) - (c - 1) / 2) * dc  # column 0 is anterior
        self.x_local = ((x_img - sx) / self.scale).astype(np.float32)
        yy = (y_img[None, :] - sy).astype(np.float64)
        zz = (z_img[:, None] - sz).astype(np.float64)
        self.y_local = ((self.cos * yy + self.sin * zz) / self.scale).astype(np.float32)
        self.z_local = ((-self.sin * yy + self.cos * zz) / self.scale).astype(np.float32)
        # soft edges one voxel wide give partial-volume blending at any resolution
        self.edge_mm = float(np.mean(geometry.spacing_mm))

    def _index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        if np.any(lo > hi):
            return None
        s, r, c = self.geometry.shape
        ds, dr, dc = self.geometry.spacing_mm
        margin = self.edge_mm / self.scale + 1e-3
        lo, hi = lo - margin, hi + margin
        x = np.array([lo[0], hi[0]]) * self.scale + self.shift[0]
        corners = np.array([[yl, zl] for yl in (lo[1], hi[1]) for zl in (lo[2], hi[2])]) * self.scale
        y_img = self.cos * corners[:, 0] - self.sin * corners[:, 1] + self.shift[1]
        z_img = self.sin * corners[:, 0] + self.cos * corners[:, 1] + self.shift[2]

        def span(values_mm: np.ndarray, spacing: float, count: int, sign: float) -> slice:
            idx = sign * values_mm / spacing + (count - 1) / 2
            start = max(int(math.floor(idx.min())) - 1, 0)
            stop = min(int(math.ceil(idx.max())) + 2, count)
            return slice(start, max(start, stop))

        return (span(x, ds, s, 1.0), span(z_img, dr, r, -1.0), span(y_img, dc, c, 1.0))

    def row_section(self, ellipses: Sequence[tuple[tuple[float, float, float], float]]) -> np.ndarray:
        """Elliptic cross-sections ``((cy, ax, ay), value)`` painted in order as a (slices, cols) section.

        For structures that run along the image rows (the tilt only turns the phantom inside
        them): the section is the same in every row, so painting it in 2D and broadcasting is
        far cheaper than in 3D.
        """
        s, _, c = self.geometry.shape
        ds, _, dc = self.geometry.spacing_mm
        x = ((np.arange(s) - (s - 1) / 2) * ds - self.shift[0]) / self.scale
        y = ((np.arange(c) - (c - 1) / 2) * dc - self.shift[1]) / self.scale
        section = np.zeros((s, c), dtype=np.float32)
        for (cy, ax, ay), value in ellipses:
            radial = np.sqrt((x[:, None] / ax) ** 2 + ((y[None, :] - cy) / ay) ** 2) - 1.0
            alpha = np.clip(0.5 - radial * min(ax, ay) * (self.scale / self.edge_mm), 0.0, 1.0)
            section += (alpha * (value - section)).astype(np.float32)
        return section

    def paint(self, slab: np.ndarray, first: int, layers: Sequence[Layer]) -> None:
        """Blend each layer's value into the voxels inside its shape (painter's algorithm).

        ``slab`` holds slices ``first, first + 1, ...`` of the volume.
        """
        for shape, value in layers:
            box = self._index_box(shape.lo, shape.hi)
            if box is None:
                continue
            ks, rs, cs = box
            k0, k1 = max(ks.start, first), min(ks.stop, first + slab.shape[0])
            if k1 <= k0 or rs.stop <= rs.start or cs.stop <= cs.start:
                continue
            x = self.x_local[k0:k1, None, None]
            y = self.y_local[None, rs, cs]
            z = self.z_local[None, rs, cs]
            distance = shape.sdf(x, y, z)
            alpha = np.clip(0.5 - distance * (self.scale / self.edge_mm), 0.0, 1.0, dtype=np.float32)
            block = slab[k0 - first : k1 - first, rs, cs]
            block += alpha * (np.float32(value) - block)
