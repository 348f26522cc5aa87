"""Synthetic sagittal 3D DESS knee MR series in the OAI package layout.

Each knee gets a numerical phantom (femur, tibia, patella, fibula, articular cartilage, menisci,
joint capsule, suprapatellar effusion, muscle, subcutaneous fat, Rician noise, coil shading)
whose osteoarthritis features follow the knee's latent progression factor from
``synth_truth.csv``: a higher latent means thinner cartilage and a narrower joint space
(medial more than lateral), more bone-marrow-lesion-like bright blobs, more osteophyte-like bone
bumps and more effusion. The phantom is written as one DICOM file per slice, like the real
release.

Sizes (``IMAGE_SIZES``), both covering the same field of view (140 x 140 mm in-plane, 112 mm
across slices):

- ``full``: 160 slices of 384 x 384 at 0.7 mm x 0.365 mm x 0.365 mm (the OAI DESS protocol).
- ``small``: 40 slices of 96 x 96 at 2.8 mm x 1.46 mm x 1.46 mm (every spacing x4); for tests
  and the demo. Preprocessing scales its pixel margins and crops by 4 for it.

Geometry: sagittal slices, ImageOrientationPatient ``[0, 1, 0, 0, 0, -1]`` (rows run anterior ->
posterior, columns superior -> inferior), so the slice normal (row x column cosine) is -x and
ImagePositionPatient moves along it by the slice spacing. Right knees are the mirror image of
left knees along the slice axis, as in real scans, so preprocessing must flip them.

Determinism: every series draws from ``SeedSequence([seed, subject, side, crc32(folder)])`` and
all UIDs are derived from the same inputs, so the same seed gives the same bytes whatever the
number of workers.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import math
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from oaicohort.errors import InputFileError
from oaicohort.progress import ProgressCallback, no_progress

log = logging.getLogger(__name__)

DESS_DESCRIPTIONS = {"SAG_3D_DESS_LEFT": "L", "SAG_3D_DESS_RIGHT": "R"}
SAGITTAL_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
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
# Anatomy: parameters of one knee, in a knee-local frame (mm): x medial(-)/lateral(+) of a left
# knee, y anterior(-)/posterior(+), z inferior(-)/superior(+), origin on the tibial plateau.


@dataclass(frozen=True)
class Blob:
    """An ellipsoidal feature (lesion, osteophyte) in the knee-local frame."""

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]


@dataclass(frozen=True)
class KneeAnatomy:
    """Everything that makes one synthetic knee, drawn by ``knee_anatomy``."""

    latent: float
    scale: float
    shift_mm: tuple[float, float, float]
    tilt_deg: float
    intensity_scale: float
    noise_sigma: float
    shading: tuple[float, float, float]
    # cartilage thickness (mm) per plate and joint-space gap (mm) per compartment
    femoral_cartilage_mm: tuple[float, float]  # (medial, lateral), as every pair below
    tibial_cartilage_mm: tuple[float, float]
    gap_mm: tuple[float, float]  # between the femoral and tibial cartilage
    patellar_cartilage_mm: float
    effusion: float
    marrow_lesions: tuple[Blob, ...] = field(default_factory=tuple)
    osteophytes: tuple[Blob, ...] = field(default_factory=tuple)

    @property
    def joint_space_mm(self) -> tuple[float, float]:
        """Bone-to-bone distance per compartment (medial, lateral)."""
        return tuple(  # type: ignore[return-value]
            f + t + g for f, t, g in zip(self.femoral_cartilage_mm, self.tibial_cartilage_mm, self.gap_mm)
        )


# Compartment centres (x, mm) and plateau geometry in the local frame.
_MEDIAL_X, _LATERAL_X = -20.0, 20.0
_CONDYLE_HALF_WIDTH = 15.0
_CONDYLE_RADIUS = 21.0
_CONDYLE_Y = 4.0
_PLATEAU_HALF = (38.0, 24.0)  # x, y
_PLATEAU_Y = 2.0


def knee_anatomy(latent: float, rng: np.random.Generator) -> KneeAnatomy:
    """Draw one knee: subject variation from ``rng``, OA features from ``latent``.

    Subject variation is drawn first with a fixed number of draws, so for the same generator
    state two latents give the same knee apart from its OA features.
    """
    z = float(np.clip(latent, -3.0, 3.0))
    subject = rng.spawn(1)[0]
    scale = float(subject.uniform(0.9, 1.1))
    shift = tuple(float(v) for v in np.clip(subject.normal(0.0, 3.0, size=3), -6.0, 6.0))
    tilt = float(subject.uniform(-5.0, 5.0))
    intensity_scale = float(subject.uniform(0.85, 1.15))
    noise_sigma = float(subject.uniform(22.0, 38.0))
    shading = tuple(float(v) for v in subject.uniform(-0.12, 0.12, size=3))
    cartilage_base = float(subject.normal(2.5, 0.15))
    gap_base = float(subject.normal(1.0, 0.1))
    jitter = subject.normal(0.0, 0.1, size=6)

    # OA is medial-predominant: the medial compartment loses cartilage three times as fast.
    def thickness(loss_per_sd: float, noise: float) -> float:
        return float(np.clip(cartilage_base - loss_per_sd * z + noise, 0.4, 4.0))

    femoral = (thickness(0.45, jitter[0]), thickness(0.15, jitter[1]))
    tibial = (thickness(0.45, jitter[2]), thickness(0.15, jitter[3]))
    gaps = (
        float(np.clip(gap_base - 0.3 * z + jitter[4], 0.15, 2.5)),
        float(np.clip(gap_base - 0.1 * z + jitter[5], 0.15, 2.5)),
    )
    patellar = float(np.clip(cartilage_base + 0.3 - 0.2 * z + subject.normal(0.0, 0.1), 0.8, 4.0))
    effusion = float(np.clip(1.0 + 0.3 * z + subject.normal(0.0, 0.15), 0.4, 2.0))

    features = rng.spawn(1)[0]
    lesions = tuple(
        _marrow_lesion(features, femoral, tibial, gaps) for _ in range(int(features.poisson(0.5 * math.exp(0.9 * z))))
    )
    osteophytes = tuple(
        _osteophyte(features, femoral, tibial, gaps) for _ in range(int(features.poisson(0.7 * math.exp(0.8 * z))))
    )
    return KneeAnatomy(
        latent=float(latent),
        scale=scale,
        shift_mm=shift,  # type: ignore[arg-type]
        tilt_deg=tilt,
        intensity_scale=intensity_scale,
        noise_sigma=noise_sigma,
        shading=shading,  # type: ignore[arg-type]
        femoral_cartilage_mm=femoral,
        tibial_cartilage_mm=tibial,
        gap_mm=gaps,
        patellar_cartilage_mm=patellar,
        effusion=effusion,
        marrow_lesions=lesions,
        osteophytes=osteophytes,
    )


Pair = tuple[float, float]  # (medial, lateral)


def _condyle_bottom(compartment: int, femoral: Pair, tibial: Pair, gaps: Pair) -> float:
    """Height of a femoral condyle's lowest bone point above the tibial plateau (mm)."""
    return tibial[compartment] + gaps[compartment] + femoral[compartment]


def _marrow_lesion(rng: np.random.Generator, femoral: Pair, tibial: Pair, gaps: Pair) -> Blob:
    # Lesions sit just under the articular surface, mostly in the medial compartment.
    compartment = 0 if rng.random() < 0.7 else 1
    x = (_MEDIAL_X, _LATERAL_X)[compartment] + rng.uniform(-9.0, 9.0)
    y = _PLATEAU_Y + rng.uniform(-14.0, 14.0)
    radius = rng.uniform(3.0, 6.5)
    depth = radius * rng.uniform(0.5, 0.9)
    if rng.random() < 0.5:
        z = _condyle_bottom(compartment, femoral, tibial, gaps) + depth
    else:
        z = -depth
    return Blob((float(x), float(y), float(z)), (radius, radius * 1.3, radius * 0.8))


def _osteophyte(rng: np.random.Generator, femoral: Pair, tibial: Pair, gaps: Pair) -> Blob:
    # Bumps at the margins of the tibial plateau or of the femoral condyles.
    radius = float(rng.uniform(2.0, 5.0))
    site = int(rng.integers(0, 4))
    compartment = int(rng.integers(0, 2))
    cx = (_MEDIAL_X, _LATERAL_X)[compartment]
    if site == 0:  # medial/lateral edge of the plateau
        x = -_PLATEAU_HALF[0] if compartment == 0 else _PLATEAU_HALF[0]
        y = _PLATEAU_Y + rng.uniform(-15.0, 15.0)
        z = -1.5
    elif site == 1:  # anterior/posterior edge of the plateau
        x = cx + rng.uniform(-10.0, 10.0)
        y = _PLATEAU_Y + (_PLATEAU_HALF[1] if rng.random() < 0.5 else -_PLATEAU_HALF[1])
        z = -1.5
    else:  # posterior or anterior margin of a femoral condyle
        bottom = _condyle_bottom(compartment, femoral, tibial, gaps)
        angle = math.radians(rng.uniform(35.0, 80.0)) * (1 if site == 2 else -1)
        y = _CONDYLE_Y + _CONDYLE_RADIUS * math.sin(angle)
        z = bottom + _CONDYLE_RADIUS * (1 - math.cos(angle))
        x = cx + rng.uniform(-8.0, 8.0)
    return Blob((float(x), float(y), float(z)), (radius, radius, radius * 0.8))


# --------------------------------------------------------------------------------------------
# Shapes: approximate signed distances (mm, negative inside) with a bounding box, evaluated on
# broadcast coordinate arrays X (n,1,1), Y and Z (1,r,c).


class _Shape(Protocol):
    lo: np.ndarray
    hi: np.ndarray

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray: ...


# Shape parameters are kept as Python floats: a NumPy float64 scalar would promote the float32
# coordinate arrays to float64 and double the cost of every operation.


class _Ellipsoid:
    def __init__(self, center: Sequence[float], semi_axes: Sequence[float]) -> None:
        self.c = tuple(float(v) for v in center)
        self.a = tuple(float(v) for v in semi_axes)
        self.lo = np.subtract(self.c, self.a)
        self.hi = np.add(self.c, self.a)

    def sdf(self, x, y, z):
        (cx, cy, cz), (ax, ay, az) = self.c, self.a
        q = ((x - cx) / ax) ** 2 + (((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)
        return (np.sqrt(q) - 1.0) * min(self.a)


class _Box:
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


class _CylinderZ:
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


class _Union:
    def __init__(self, *shapes: _Shape) -> None:
        self.shapes = shapes
        self.lo = np.min([s.lo for s in shapes], axis=0)
        self.hi = np.max([s.hi for s in shapes], axis=0)

    def sdf(self, x, y, z):
        out = self.shapes[0].sdf(x, y, z)
        for shape in self.shapes[1:]:
            out = np.minimum(out, shape.sdf(x, y, z))
        return out


class _Intersection:
    def __init__(self, *shapes: _Shape) -> None:
        self.shapes = shapes
        self.lo = np.max([s.lo for s in shapes], axis=0)
        self.hi = np.min([s.hi for s in shapes], axis=0)

    def sdf(self, x, y, z):
        out = self.shapes[0].sdf(x, y, z)
        for shape in self.shapes[1:]:
            out = np.maximum(out, shape.sdf(x, y, z))
        return out


class _Grown:
    """A shape grown outward by ``by`` mm (approximate for approximate distances)."""

    def __init__(self, shape: _Shape, by: float) -> None:
        self.shape, self.by = shape, by
        self.lo, self.hi = shape.lo - by, shape.hi + by

    def sdf(self, x, y, z):
        return self.shape.sdf(x, y, z) - self.by


# Intensities on a 12-bit scale, roughly as water-excitation DESS shows the tissues.
AIR, FAT, MUSCLE, SYNOVIUM, FLUID = 0.0, 260.0, 520.0, 700.0, 1750.0
CARTILAGE, CORTEX, MARROW, LESION, MENISCUS, TENDON = 1300.0, 90.0, 380.0, 950.0, 140.0, 110.0


Layer = tuple[_Shape, float]

# Slabs of slices rendered at a time: temporaries stay in cache instead of churning 100 MB
# arrays through the page allocator (a full series renders ~4x faster this way).
_SLAB_VOXELS = 1 << 20
_NOISE_ROLL = 7919


class _Canvas:
    """The voxel grid of one series with the knee-local coordinates of every voxel."""

    def __init__(self, geometry: ImageGeometry, anatomy: KneeAnatomy) -> None:
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

    def leg_section(self) -> np.ndarray:
        """The leg, subcutaneous fat around muscle, as a (slices, cols) section.

        The leg runs along the image rows (the tilt only turns the knee inside it), so it is the
        same in every row: painting it in 2D and broadcasting is far cheaper than in 3D.
        """
        s, _, c = self.geometry.shape
        ds, _, dc = self.geometry.spacing_mm
        x = ((np.arange(s) - (s - 1) / 2) * ds - self.shift[0]) / self.scale
        y = ((np.arange(c) - (c - 1) / 2) * dc - self.shift[1]) / self.scale
        section = np.zeros((s, c), dtype=np.float32)
        for (cy, ax, ay), value in (((4.0, 74.0, 66.0), FAT), ((6.0, 66.0, 57.0), MUSCLE)):
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


def _knee_layers(knee: KneeAnatomy) -> list[Layer]:
    """The knee's tissues as (shape, intensity) layers, back to front."""
    femoral, tibial, gaps = knee.femoral_cartilage_mm, knee.tibial_cartilage_mm, knee.gap_mm
    bottoms = [_condyle_bottom(i, femoral, tibial, gaps) for i in range(2)]
    condyle_z = [b + _CONDYLE_RADIUS for b in bottoms]
    joint_top = max(condyle_z)
    compartments = (_MEDIAL_X, _LATERAL_X)
    e = knee.effusion
    layers: list[Layer] = [
        # (the leg itself, fat around muscle, is painted by _Canvas.leg_section)
        # joint capsule, and its fluid-filled suprapatellar pouch which grows with effusion
        (_Ellipsoid((0.0, 2.0, 8.0), (46.0, 33.0, 18.0)), SYNOVIUM),
        (_Ellipsoid((0.0, -23.0, joint_top + 10.0), (26.0, 3.0 + 4.0 * e, 10.0 + 9.0 * e)), FLUID),
        # patellar tendon, from the patella's apex to the tibial tuberosity
        (_Box((0.0, -31.0, -8.0), (13.0, 3.0, 22.0), 2.0), TENDON),
    ]

    # cartilage first: bone painted over it leaves the articular layers
    condyles = [
        _Ellipsoid((cx, _CONDYLE_Y, cz), (_CONDYLE_HALF_WIDTH, _CONDYLE_RADIUS, _CONDYLE_RADIUS))
        for cx, cz in zip(compartments, condyle_z)
    ]
    for condyle, thickness, cz in zip(condyles, femoral, condyle_z):
        grown = _Ellipsoid(condyle.c, np.add(condyle.a, (1.0, thickness, thickness)))
        articular = _Box((condyle.c[0], condyle.c[1], cz - 40.0), (30.0, 40.0, 40.0 + 0.3 * _CONDYLE_RADIUS))
        layers.append((_Intersection(grown, articular), CARTILAGE))
    for cx, thickness in zip(compartments, tibial):
        half = thickness / 2
        plate = _Box((cx, _PLATEAU_Y, half - 0.5), (16.0, 20.0, half + 0.5), min(half, 1.5))
        layers.append((plate, CARTILAGE))
    # menisci: dark wedges on the periphery of each compartment
    for cx, bottom in zip(compartments, bottoms):
        for y_edge in (_PLATEAU_Y - 19.0, _PLATEAU_Y + 19.0):
            layers.append((_Ellipsoid((cx, y_edge, bottom / 2), (14.0, 6.0, max(bottom / 2, 0.8) + 0.6)), MENISCUS))

    low = min(condyle_z)
    femur = _Union(
        *condyles,
        _Box((0.0, 2.0, low + 14.0), (36.0, 20.0, 16.0), 10.0),
        _CylinderZ(0.0, -1.0, 19.0, 14.0, low + 20.0, 200.0),
    )
    tibia = _Union(
        _Box((0.0, _PLATEAU_Y, -7.0), (_PLATEAU_HALF[0], _PLATEAU_HALF[1], 7.0), 4.0),
        _Ellipsoid((0.0, 4.0, -16.0), (30.0, 21.0, 26.0)),
        _CylinderZ(0.0, 5.0, 17.0, 14.0, -200.0, -25.0),
    )
    fibula = _CylinderZ(31.0, 20.0, 7.0, 7.0, -200.0, -14.0)
    patella = _Ellipsoid((0.0, -34.0, joint_top + 4.0), (20.0, 8.0, 17.0))
    patellar_cartilage = _Intersection(
        _Ellipsoid(patella.c, np.add(patella.a, knee.patellar_cartilage_mm)),
        _Box((0.0, patella.c[1] + 20.0, patella.c[2]), (40.0, 20.0, 40.0)),
    )
    layers.append((patellar_cartilage, CARTILAGE))

    spurs = [_Ellipsoid(b.center, b.semi_axes) for b in knee.osteophytes]
    bones = (femur, tibia, fibula, patella, *spurs)
    layers += [(bone, CORTEX) for bone in bones]
    layers += [(_Grown(bone, -1.2), MARROW) for bone in bones]
    # marrow lesions stay inside the femur and tibia
    marrow = _Union(_Grown(femur, -1.2), _Grown(tibia, -1.2))
    for blob in knee.marrow_lesions:
        layers.append((_Intersection(_Ellipsoid(blob.center, blob.semi_axes), marrow), LESION))
    return layers


def render_anatomy(knee: KneeAnatomy, side: str, rng: np.random.Generator, size: str | ImageGeometry) -> np.ndarray:
    """Render ``knee`` as a (slices, rows, cols) uint16 volume with noise drawn from ``rng``."""
    if side not in ("L", "R"):
        raise ValueError(f"side must be 'L' or 'R', not {side!r}")
    geometry = image_geometry(size)
    canvas = _Canvas(geometry, knee)
    layers = _knee_layers(knee)
    s, r, c = geometry.shape
    gx, gy, gz = knee.shading
    # coil shading: smooth multiplicative gradients across the field of view
    across_slices = knee.intensity_scale * (1.0 + gx * np.linspace(-1, 1, s, dtype=np.float32))
    ramp_cols = np.linspace(-1, 1, c, dtype=np.float32)[None, :]
    ramp_rows = np.linspace(-1, 1, r, dtype=np.float32)[:, None]
    in_plane = 1.0 + gy * ramp_cols + gz * ramp_rows
    sigma = np.float32(knee.noise_sigma)
    volume = np.empty(geometry.shape, dtype=np.uint16)
    leg = canvas.leg_section()
    step = max(1, _SLAB_VOXELS // (r * c))
    for first in range(0, s, step):
        n = min(step, s - first)
        slab = np.empty((n, r, c), dtype=np.float32)
        slab[...] = leg[first : first + n, None, :]
        canvas.paint(slab, first, layers)
        slab *= across_slices[first : first + n, None, None]
        slab *= in_plane
        # magnitude of a complex signal with Gaussian noise: Rician, Rayleigh in air
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        noise *= sigma
        real = noise + slab
        np.square(real, out=real)
        # the imaginary part reuses the draws rolled by an odd offset: still independent of the
        # real part voxel by voxel, and drawing normals is the most expensive step
        imag = np.roll(noise.reshape(-1), _NOISE_ROLL).reshape(slab.shape)
        np.square(imag, out=imag)
        real += imag
        np.sqrt(real, out=real)
        np.clip(real, 0.0, MAX_VALUE, out=real)
        real += 0.5
        volume[first : first + n] = real
    if side == "R":
        volume = np.ascontiguousarray(volume[::-1])
    return volume


def render_knee_volume(
    latent: float, side: str, rng: np.random.Generator, size: str | ImageGeometry = "small"
) -> np.ndarray:
    """A synthetic DESS volume (slices, rows, cols), uint16 12-bit, of a knee with ``latent``.

    ``side`` is ``"L"`` or ``"R"`` (mirrored along the slice axis); ``size`` a key of
    ``IMAGE_SIZES`` or an ``ImageGeometry``.
    """
    knee_rng, noise_rng = rng.spawn(2)
    return render_anatomy(knee_anatomy(latent, knee_rng), side, noise_rng, size)


# --------------------------------------------------------------------------------------------
# DICOM writing


@dataclass(frozen=True)
class SeriesMeta:
    """Header values of one series. Spacing is (slice, row, column) in mm."""

    patient_id: str
    series_description: str
    study_date: str = "20040101"
    study_description: str = "OAI^MR^ENROLLMENT"
    accession_number: str = ""
    series_uid: str | None = None
    study_uid: str | None = None
    spacing_mm: tuple[float, float, float] = (0.7, 0.365, 0.365)
    slice_thickness_mm: float | None = None
    orientation: tuple[float, float, float, float, float, float] = SAGITTAL_ORIENTATION
    series_number: int = 1


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _uid(*parts: object) -> str:
    """A deterministic UID under the UUID-derived root 2.25 (pydicom's own ignores entropy there)."""
    digest = hashlib.sha256("\x1f".join(["oaicohort.synth.images", *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _base_dataset(meta: SeriesMeta, shape: tuple[int, int, int], photometric: str) -> Dataset:
    _, rows, cols = shape
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Trio"
    ds.MagneticFieldStrength = "3"
    ds.PatientID = meta.patient_id
    ds.PatientName = meta.patient_id
    ds.StudyDate = meta.study_date
    ds.SeriesDate = meta.study_date
    ds.StudyDescription = meta.study_description
    ds.SeriesDescription = meta.series_description
    ds.AccessionNumber = meta.accession_number
    ds.StudyInstanceUID = meta.study_uid or _uid("study", meta.patient_id, meta.study_date)
    ds.SeriesInstanceUID = meta.series_uid or _uid("series", meta.patient_id, meta.study_date, meta.series_description)
    ds.FrameOfReferenceUID = _uid("frame", ds.SeriesInstanceUID)
    ds.SeriesNumber = meta.series_number
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SP", "OSP"]
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "16.32"
    ds.EchoTime = "4.71"
    ds.FlipAngle = "25"
    ds.BodyPartExamined = "KNEE"
    ds.SliceThickness = _ds(meta.slice_thickness_mm if meta.slice_thickness_mm is not None else meta.spacing_mm[0])
    ds.SpacingBetweenSlices = _ds(meta.spacing_mm[0])
    ds.PixelSpacing = [_ds(meta.spacing_mm[1]), _ds(meta.spacing_mm[2])]
    ds.ImageOrientationPatient = [_ds(v) for v in meta.orientation]
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def write_series(
    folder: Path,
    volume: np.ndarray,
    meta: SeriesMeta,
    *,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    positions_mm: Sequence[float] | None = None,
    file_names: Sequence[str] | None = None,
    force_pydicom: bool = False,
) -> list[Path]:
    """Write ``volume`` (slices, rows, cols) as one DICOM file per slice into ``folder``.

    Slice ``k`` goes to ``file_names[k]`` (default ``001``, ``002``, ...) at ``positions_mm[k]``
    along the slice normal (default ``k * spacing``). With ``MONOCHROME1`` the stored values are
    ``4095 - volume`` so a reader that inverts gets ``volume`` back. ``transfer_syntax`` may be
    any syntax pydicom can encode (RLE Lossless is used by the tests). Tests use the overrides to
    build unusual or corrupt series. Explicit VR Little Endian slices are encoded by a fast path
    that writes the same bytes as pydicom (``force_pydicom=True`` uses pydicom's writer for every
    slice). Returns the written paths in slice order.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (slices, rows, cols), got shape {volume.shape}")
    if volume.dtype != np.uint16:
        raise ValueError(f"volume must be uint16, got {volume.dtype}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    n, rows, cols = volume.shape
    positions = [k * meta.spacing_mm[0] for k in range(n)] if positions_mm is None else list(positions_mm)
    names = [f"{k + 1:03d}" for k in range(n)] if file_names is None else list(file_names)
    if len(positions) != n or len(names) != n:
        raise ValueError("positions_mm and file_names need one entry per slice")
    stored = (MAX_VALUE - np.minimum(volume, MAX_VALUE)).astype(np.uint16) if photometric == "MONOCHROME1" else volume
    stored = np.ascontiguousarray(stored, dtype="<u2")

    orientation = np.asarray(meta.orientation, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    ds_slice, ds_row, ds_col = meta.spacing_mm
    # centre the field of view on the isocentre: first pixel of the middle slice at the corner
    corner = -orientation[:3] * ds_col * (cols - 1) / 2 - orientation[3:] * ds_row * (rows - 1) / 2
    start = corner - normal * ds_slice * (n - 1) / 2

    folder.mkdir(parents=True, exist_ok=True)
    base = _base_dataset(meta, volume.shape, photometric)
    syntax = UID(transfer_syntax)
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = MRImageStorage
    file_meta.TransferSyntaxUID = syntax
    file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    fast = _SliceEncoder(base, file_meta) if syntax == ExplicitVRLittleEndian and not force_pydicom else None
    paths = []
    for k in range(n):
        path = folder / names[k]
        sop_uid = f"{base.SeriesInstanceUID}.{k + 1}"
        position = start + normal * positions[k]
        image_position = [_ds(v) for v in position]
        slice_location = _ds(float(np.dot(position, normal)))
        if fast is not None:
            path.write_bytes(fast.encode(sop_uid, k + 1, image_position, slice_location, stored[k]))
        else:
            ds = base.copy()
            ds.file_meta = FileMetaDataset(file_meta)
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = image_position
            ds.SliceLocation = slice_location
            if syntax.is_compressed:
                ds.compress(syntax, stored[k], encoding_plugin="pydicom")
            else:
                ds.PixelData = stored[k].tobytes()
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


IMPLEMENTATION_UID = _uid("implementation")
IMPLEMENTATION_VERSION = "OAICOHORT_SYNTH"

# Tags that change from slice to slice (in ascending order, as they appear in the file).
_SOP_INSTANCE_UID = 0x00080018
_INSTANCE_NUMBER = 0x00200013
_IMAGE_POSITION = 0x00200032
_SLICE_LOCATION = 0x00201041
_PIXEL_DATA = 0x7FE00010
_VARYING = (_SOP_INSTANCE_UID, _INSTANCE_NUMBER, _IMAGE_POSITION, _SLICE_LOCATION, _PIXEL_DATA)


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian element with a short (16-bit) length field."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _long_element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian element of a VR with a 32-bit length field (OB, OW, ...)."""
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value


def _text(value: str, pad: bytes = b" ") -> bytes:
    data = value.encode("ascii")
    return data + pad if len(data) % 2 else data


class _SliceEncoder:
    """Explicit VR Little Endian slices from a header encoded once by pydicom.

    pydicom re-validates and re-encodes every element of every file, which costs more than the
    phantom for small series; here only the elements that change per slice are encoded, and a
    test checks the bytes equal pydicom's own output.
    """

    def __init__(self, base: Dataset, file_meta: FileMetaDataset) -> None:
        self.meta_elements = [
            (tag, file_meta[tag].VR, file_meta[tag].value) for tag in sorted(file_meta.keys()) if tag != 0x00020003
        ]
        segments: list[bytes] = []
        bounds = (0, *_VARYING)
        for low, high in itertools.pairwise(bounds):
            part = Dataset()
            for element in base:
                if low < element.tag < high:
                    part.add(element)
            segments.append(_encode_dataset(part))
        self.segments = segments

    def _file_meta(self, sop_uid: str) -> bytes:
        body = [_long_element(0x00020001, "OB", b"\x00\x01")]  # file meta version 1
        for tag, vr, value in self.meta_elements:
            if tag in (0x00020000, 0x00020001):
                continue
            body.append(_element(tag, vr, _text(str(value), b"\x00" if vr == "UI" else b" ")))
            if tag == 0x00020002:
                body.append(_element(0x00020003, "UI", _text(sop_uid, b"\x00")))
        joined = b"".join(body)
        return b"\x00" * 128 + b"DICM" + _element(0x00020000, "UL", struct.pack("<I", len(joined))) + joined

    def encode(self, sop_uid: str, instance: int, position: list[str], location: str, pixels: np.ndarray) -> bytes:
        seg = self.segments
        return b"".join(
            (
                self._file_meta(sop_uid),
                seg[0],
                _element(_SOP_INSTANCE_UID, "UI", _text(sop_uid, b"\x00")),
                seg[1],
                _element(_INSTANCE_NUMBER, "IS", _text(str(instance))),
                seg[2],
                _element(_IMAGE_POSITION, "DS", _text("\\".join(position))),
                seg[3],
                _element(_SLICE_LOCATION, "DS", _text(location)),
                seg[4],
                _long_element(_PIXEL_DATA, "OW", pixels.tobytes()),
            )
        )


def _encode_dataset(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# A whole release


@dataclass(frozen=True)
class _SeriesTask:
    folder: str
    latent: float
    side: str
    entropy: tuple[int, ...]
    geometry: ImageGeometry
    meta: SeriesMeta


def _strip_row(row: dict[str | None, str | None]) -> dict[str, str]:
    return {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}


def _integer(path: Path, row: dict[str, str], column: str, line: int) -> int:
    try:
        return int(row[column])
    except ValueError:
        raise InputFileError(path, f"{column} {row[column]!r} is not an integer", line=line, column=column) from None


def _read_truth(path: Path) -> dict[tuple[int, str], float]:
    if not path.is_file():
        raise InputFileError(path, "synth_truth.csv not found (write the clinical synth first)")
    latents: dict[tuple[int, str], float] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"subject_id", "side", "latent"} - {(h or "").strip() for h in reader.fieldnames or []}
        if missing:
            raise InputFileError(path, f"missing column(s) {sorted(missing)}", line=1)
        for line, raw in enumerate(reader, start=2):
            row = _strip_row(raw)
            subject = _integer(path, row, "subject_id", line)
            side = row["side"].upper()[:1]
            if side not in ("L", "R"):
                raise InputFileError(path, f"side {row['side']!r} is not R or L", line=line, column="side")
            try:
                latent = float(row["latent"])
            except ValueError:
                latent = math.nan
            if not math.isfinite(latent):
                raise InputFileError(path, f"latent {row['latent']!r} is not a number", line=line, column="latent")
            latents[(subject, side)] = latent
    return latents


def _dess_tasks(release_root: Path, visit_dir: str, geometry: ImageGeometry, seed: int) -> list[_SeriesTask]:
    contents = release_root / visit_dir / "contents.csv"
    if not contents.is_file():
        raise InputFileError(contents, "contents.csv not found")
    latents = _read_truth(release_root / "synth_truth.csv")
    visit_root = (release_root / visit_dir).resolve()
    tasks = []
    with contents.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = {(h or "").strip() for h in reader.fieldnames or []}
        required = {"Folder", "ParticipantID", "StudyDate", "StudyDescription", "SeriesDescription"}
        if missing := required - header:
            raise InputFileError(contents, f"missing column(s) {sorted(missing)}", line=1)
        # the barcode column is called AccessionNumber in some releases
        barcode_column = next((c for c in ("Barcode", "AccessionNumber") if c in header), None)
        for line, raw in enumerate(reader, start=2):
            row = _strip_row(raw)
            description = row["SeriesDescription"].upper()
            if description not in DESS_DESCRIPTIONS:
                continue
            side = DESS_DESCRIPTIONS[description]
            subject = _integer(contents, row, "ParticipantID", line)
            folder = (visit_root / row["Folder"]).resolve()
            if not row["Folder"] or not folder.is_relative_to(visit_root):
                message = f"Folder {row['Folder']!r} is not inside {visit_dir}/"
                raise InputFileError(contents, message, line=line, column="Folder")
            if (subject, side) not in latents:
                message = f"no latent for subject {subject} side {side} (listed in {contents}, line {line})"
                raise InputFileError(release_root / "synth_truth.csv", message)
            series_key = row["Folder"].replace("\\", "/")
            entropy = (seed, subject, 1 if side == "R" else 2, zlib.crc32(series_key.encode()))
            meta = SeriesMeta(
                patient_id=str(subject),
                series_description=description,
                study_date=row["StudyDate"],
                study_description=row["StudyDescription"],
                accession_number=row.get(barcode_column, "") if barcode_column else "",
                series_uid=_uid("series", seed, subject, side, series_key),
                study_uid=_uid("study", seed, subject, row["StudyDate"]),
                spacing_mm=geometry.spacing_mm,
            )
            tasks.append(_SeriesTask(str(folder), latents[(subject, side)], side, entropy, geometry, meta))
    return tasks


def _write_task(task: _SeriesTask) -> str:
    rng = np.random.default_rng(np.random.SeedSequence(list(task.entropy)))
    volume = render_knee_volume(task.latent, task.side, rng, task.geometry)
    folder = Path(task.folder)
    if folder.is_dir():
        # a re-run replaces the series; slice files of an earlier, longer series must not linger
        for stale in folder.iterdir():
            if stale.is_file() and stale.name.isdigit():
                stale.unlink()
    write_series(folder, volume, task.meta)
    return task.folder


def write_images(
    release_root: Path,
    *,
    size: str = "full",
    seed: int = 0,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    visit_dir: str = "00m",
) -> int:
    """Write a DESS series for every ``SAG_3D_DESS_{LEFT,RIGHT}`` row of ``<visit_dir>/contents.csv``.

    Latents come from ``release_root/synth_truth.csv``. Each series goes to
    ``<visit_dir>/<Folder>/001, 002, ...``; ``workers > 1`` renders series in a process pool.
    Returns the number of series written.
    """
    release_root = Path(release_root)
    geometry = image_geometry(size)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    report = progress or no_progress
    tasks = _dess_tasks(release_root, visit_dir, geometry, seed)
    total = len(tasks)
    log.info("writing %d %s DESS series (seed %d, %d workers)", total, size, seed, workers)
    report("images", 0, total)
    if workers == 1 or total <= 1:
        for done, task in enumerate(tasks, start=1):
            _write_task(task)
            report("images", done, total)
        return total
    with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
        futures = [pool.submit(_write_task, task) for task in tasks]
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            report("images", done, total)
    return total
