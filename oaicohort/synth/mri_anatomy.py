"""Synthetic knee anatomy for the DESS MR phantom: parameters, tissue layers and rendering.

Each knee is a numerical phantom (femur, tibia, patella, fibula, articular cartilage, menisci,
joint capsule, suprapatellar effusion, muscle, subcutaneous fat, Rician noise, coil shading)
whose osteoarthritis features follow the knee's latent progression factor: a higher latent means
thinner cartilage and a narrower joint space (medial more than lateral), more bone-marrow-lesion-
like bright blobs, more osteophyte-like bone bumps and more effusion.

Sizes (``IMAGE_SIZES`` in ``oaicohort.synth.raster``), both covering the same field of view
(140 x 140 mm in-plane, 112 mm across slices):

- ``full``: 160 slices of 384 x 384 at 0.7 mm x 0.365 mm x 0.365 mm (the OAI DESS protocol).
- ``small``: 40 slices of 96 x 96 at 2.8 mm x 1.46 mm x 1.46 mm (every spacing x4); for tests
  and the demo. Preprocessing scales its pixel margins and crops by 4 for it.

Geometry: sagittal slices (rows run anterior -> posterior, columns superior -> inferior). Right
knees are the mirror image of left knees along the slice axis, as in real scans, so
preprocessing must flip them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oaicohort.synth.raster import (
    MAX_VALUE,
    Box,
    Canvas,
    CylinderZ,
    Ellipsoid,
    Grown,
    ImageGeometry,
    Intersection,
    Layer,
    Shape,
    Union,
    image_geometry,
)

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
        (femoral_m, femoral_l), (tibial_m, tibial_l) = self.femoral_cartilage_mm, self.tibial_cartilage_mm
        gap_m, gap_l = self.gap_mm
        return femoral_m + tibial_m + gap_m, femoral_l + tibial_l + gap_l


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
    shift = _triple(np.clip(subject.normal(0.0, 3.0, size=3), -6.0, 6.0))
    tilt = float(subject.uniform(-5.0, 5.0))
    intensity_scale = float(subject.uniform(0.85, 1.15))
    noise_sigma = float(subject.uniform(22.0, 38.0))
    shading = _triple(subject.uniform(-0.12, 0.12, size=3))
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
        shift_mm=shift,
        tilt_deg=tilt,
        intensity_scale=intensity_scale,
        noise_sigma=noise_sigma,
        shading=shading,
        femoral_cartilage_mm=femoral,
        tibial_cartilage_mm=tibial,
        gap_mm=gaps,
        patellar_cartilage_mm=patellar,
        effusion=effusion,
        marrow_lesions=lesions,
        osteophytes=osteophytes,
    )


Pair = tuple[float, float]  # (medial, lateral)


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    """Three draws as Python floats (a NumPy scalar would promote the float32 rendering to float64)."""
    x, y, z = (float(v) for v in values)
    return x, y, z


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


# Intensities on a 12-bit scale, roughly as water-excitation DESS shows the tissues.
AIR, FAT, MUSCLE, SYNOVIUM, FLUID = 0.0, 260.0, 520.0, 700.0, 1750.0
CARTILAGE, CORTEX, MARROW, LESION, MENISCUS, TENDON = 1300.0, 90.0, 380.0, 950.0, 140.0, 110.0


# Slabs of slices rendered at a time: temporaries stay in cache instead of churning 100 MB
# arrays through the page allocator (a full series renders ~4x faster this way).
_SLAB_VOXELS = 1 << 20
_NOISE_ROLL = 7919


def _knee_layers(knee: KneeAnatomy) -> list[Layer]:
    """The knee's tissues as (shape, intensity) layers, back to front."""
    femoral, tibial, gaps = knee.femoral_cartilage_mm, knee.tibial_cartilage_mm, knee.gap_mm
    bottoms = [_condyle_bottom(i, femoral, tibial, gaps) for i in range(2)]
    condyle_z = [b + _CONDYLE_RADIUS for b in bottoms]
    joint_top = max(condyle_z)
    compartments = (_MEDIAL_X, _LATERAL_X)
    e = knee.effusion
    layers: list[Layer] = [
        # (the leg itself, fat around muscle, is painted by Canvas.row_section)
        # joint capsule, and its fluid-filled suprapatellar pouch which grows with effusion
        (Ellipsoid((0.0, 2.0, 8.0), (46.0, 33.0, 18.0)), SYNOVIUM),
        (Ellipsoid((0.0, -23.0, joint_top + 10.0), (26.0, 3.0 + 4.0 * e, 10.0 + 9.0 * e)), FLUID),
        # patellar tendon, from the patella's apex to the tibial tuberosity
        (Box((0.0, -31.0, -8.0), (13.0, 3.0, 22.0), 2.0), TENDON),
    ]

    # cartilage first: bone painted over it leaves the articular layers
    condyles = [
        Ellipsoid((cx, _CONDYLE_Y, cz), (_CONDYLE_HALF_WIDTH, _CONDYLE_RADIUS, _CONDYLE_RADIUS))
        for cx, cz in zip(compartments, condyle_z)
    ]
    for condyle, thickness, cz in zip(condyles, femoral, condyle_z):
        grown = Ellipsoid(condyle.c, [a + d for a, d in zip(condyle.a, (1.0, thickness, thickness))])
        articular = Box((condyle.c[0], condyle.c[1], cz - 40.0), (30.0, 40.0, 40.0 + 0.3 * _CONDYLE_RADIUS))
        layers.append((Intersection(grown, articular), CARTILAGE))
    for cx, thickness in zip(compartments, tibial):
        half = thickness / 2
        plate = Box((cx, _PLATEAU_Y, half - 0.5), (16.0, 20.0, half + 0.5), min(half, 1.5))
        layers.append((plate, CARTILAGE))
    # menisci: dark wedges on the periphery of each compartment
    for cx, bottom in zip(compartments, bottoms):
        for y_edge in (_PLATEAU_Y - 19.0, _PLATEAU_Y + 19.0):
            layers.append((Ellipsoid((cx, y_edge, bottom / 2), (14.0, 6.0, max(bottom / 2, 0.8) + 0.6)), MENISCUS))

    low = min(condyle_z)
    femur = Union(
        *condyles,
        Box((0.0, 2.0, low + 14.0), (36.0, 20.0, 16.0), 10.0),
        CylinderZ(0.0, -1.0, 19.0, 14.0, low + 20.0, 200.0),
    )
    tibia = Union(
        Box((0.0, _PLATEAU_Y, -7.0), (_PLATEAU_HALF[0], _PLATEAU_HALF[1], 7.0), 4.0),
        Ellipsoid((0.0, 4.0, -16.0), (30.0, 21.0, 26.0)),
        CylinderZ(0.0, 5.0, 17.0, 14.0, -200.0, -25.0),
    )
    fibula = CylinderZ(31.0, 20.0, 7.0, 7.0, -200.0, -14.0)
    patella = Ellipsoid((0.0, -34.0, joint_top + 4.0), (20.0, 8.0, 17.0))
    patellar_cartilage = Intersection(
        Ellipsoid(patella.c, [a + knee.patellar_cartilage_mm for a in patella.a]),
        Box((0.0, patella.c[1] + 20.0, patella.c[2]), (40.0, 20.0, 40.0)),
    )
    layers.append((patellar_cartilage, CARTILAGE))

    spurs = [Ellipsoid(b.center, b.semi_axes) for b in knee.osteophytes]
    bones: tuple[Shape, ...] = (femur, tibia, fibula, patella, *spurs)
    layers += [(bone, CORTEX) for bone in bones]
    layers += [(Grown(bone, -1.2), MARROW) for bone in bones]
    # marrow lesions stay inside the femur and tibia
    marrow = Union(Grown(femur, -1.2), Grown(tibia, -1.2))
    for blob in knee.marrow_lesions:
        layers.append((Intersection(Ellipsoid(blob.center, blob.semi_axes), marrow), LESION))
    return layers


def render_anatomy(knee: KneeAnatomy, side: str, rng: np.random.Generator, size: str | ImageGeometry) -> np.ndarray:
    """Render ``knee`` as a (slices, rows, cols) uint16 volume with noise drawn from ``rng``."""
    if side not in ("L", "R"):
        raise ValueError(f"side must be 'L' or 'R', not {side!r}")
    geometry = image_geometry(size)
    canvas = Canvas(geometry, knee)
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
    leg = canvas.row_section((((4.0, 74.0, 66.0), FAT), ((6.0, 66.0, 57.0), MUSCLE)))  # fat around muscle
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
