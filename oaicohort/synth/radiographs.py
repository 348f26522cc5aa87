"""Synthetic bilateral PA fixed-flexion knee radiographs: anatomy and projection.

A radiograph is a projection: every pixel shows the attenuation summed along the beam. Each knee
is made of simple solids whose projected thickness is analytic (ellipsoids, elliptic cylinders
with a hollow marrow canal, bodies whose half-width varies along the leg): femoral shaft,
metaphysis and two condyles with the intercondylar notch, tibial plateau and shaft with the
intercondylar eminence, the fibular head and shaft, the patella projected over the distal femur,
and the soft tissue of the leg. Osteoarthritis shows as in the Kellgren-Lawrence scale:

- joint-space width (JSW) per compartment narrows with the knee's KLG, medial more than lateral,
  and a little with the latent progression factor (weaker than in the MRI phantom: the paper
  found radiographs less predictive);
- osteophytes (bony spurs at the margins of the plateau and condyles) grow in number and size
  with the KLG, a little with the latent factor.

Geometry (OAI_DISTRIBUTIONS.md section 4): the image shows both knees, screen-left is the
anatomical right knee. Knee-local coordinates (mm): ``u`` lateral (+) / medial (-), ``v``
inferior (+) / superior (-), origin at the joint centre (middle of the joint space, midway
between the condyles); that point is the knee's true joint centre. Values are MONOCHROME2
(bone bright) on a 12-bit scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oaicohort.synth.raster import MAX_VALUE

# Medial/lateral JSW loss (mm) by KLG 0..4, and per SD of the latent factor.
JSW_LOSS_MEDIAL = (0.0, 0.4, 1.2, 2.4, 3.9)
JSW_LOSS_LATERAL = (0.0, 0.1, 0.3, 0.8, 1.6)
# The latent narrows the medial joint space by 1.0 mm per SD (the MRI phantom: ~1.2 mm of bone-to-
# bone distance per SD, plus lesions and effusion), so radiographs carry less of it than MRI.
JSW_PER_LATENT = (1.0, 0.3)
OSTEOPHYTE_RATE = (0.1, 0.9, 2.2, 3.4, 4.5)  # expected spurs per knee by KLG
OSTEOPHYTE_PER_LATENT = 0.6  # log-rate per SD of the latent factor (MRI phantom: 0.8)

MU_SOFT, MU_BONE = 0.012, 0.04  # attenuation per mm
AIR_VALUE, SPAN = 250.0, 3600.0


@dataclass(frozen=True)
class Spur:
    """An osteophyte: an ellipsoid at (u, v) with semi-axes (a, b) in mm."""

    u: float
    v: float
    a: float
    b: float


@dataclass(frozen=True)
class RadiographKnee:
    """One knee of a radiograph, drawn by ``radiograph_knee``."""

    side: str
    klg: int
    latent: float
    scale: float
    tilt_deg: float
    jsw_mm: tuple[float, float]  # (medial, lateral)
    soft_half_width_mm: float
    spurs: tuple[Spur, ...] = field(default_factory=tuple)


def radiograph_knee(side: str, klg: int, latent: float, rng: np.random.Generator) -> RadiographKnee:
    """Draw one knee: subject variation from ``rng``, JSW and osteophytes from KLG and latent."""
    if side not in ("R", "L"):
        raise ValueError(f"side must be 'R' or 'L', not {side!r}")
    k = int(np.clip(klg, 0, 4))
    z = float(np.clip(latent, -3.0, 3.0))
    scale = float(rng.uniform(0.9, 1.1))
    tilt = float(rng.uniform(-3.0, 3.0))
    base = (float(rng.normal(5.4, 0.5)), float(rng.normal(6.4, 0.5)))
    jsw = (
        float(np.clip(base[0] - JSW_LOSS_MEDIAL[k] - JSW_PER_LATENT[0] * z + rng.normal(0, 0.3), 0.3, 9.0)),
        float(np.clip(base[1] - JSW_LOSS_LATERAL[k] - JSW_PER_LATENT[1] * z + rng.normal(0, 0.3), 0.3, 9.0)),
    )
    soft = float(rng.uniform(55.0, 72.0))
    count = int(rng.poisson(OSTEOPHYTE_RATE[k] * math.exp(OSTEOPHYTE_PER_LATENT * z)))
    spurs = tuple(_spur(rng, k, jsw) for _ in range(count))
    return RadiographKnee(side, k, float(latent), scale, tilt, jsw, soft, spurs)


def _spur(rng: np.random.Generator, klg: int, jsw: tuple[float, float]) -> Spur:
    size = float(rng.uniform(1.5, 3.0) * (1.0 + 0.3 * klg))
    compartment = 0 if rng.random() < 0.65 else 1
    outward = -1.0 if compartment == 0 else 1.0
    if rng.random() < 0.5:  # tibial margin
        return Spur(outward * (38.0 + 0.4 * size), jsw[compartment] / 2 + 2.5, size, size * 0.7)
    return Spur(outward * (36.5 + 0.4 * size), -jsw[compartment] / 2 - 7.0, size, size * 0.8)


# --------------------------------------------------------------------------------------------
# Projected thickness (mm along the beam) of simple solids, on broadcast arrays u, v.


def _ellipsoid(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float, c: float) -> np.ndarray:
    q = 1.0 - ((u - cu) / a) ** 2 - ((v - cv) / b) ** 2
    return 2.0 * c * np.sqrt(np.clip(q, 0.0, None))


def _body(u: np.ndarray, half_width: np.ndarray, depth_ratio: float, hollow: float | np.ndarray = 0.0) -> np.ndarray:
    """An elliptic cross-section of ``half_width`` (per row), optionally with a marrow canal whose
    half-width is ``hollow`` times the bone's (0: solid; cortex shows brighter at the edges)."""
    hw = np.maximum(half_width, 1e-3)
    outer = 2.0 * depth_ratio * hw * np.sqrt(np.clip(1.0 - (u / hw) ** 2, 0.0, None))
    if not np.any(hollow):
        return outer
    inner_hw = np.maximum(hw * hollow, 1e-3)
    inner = 2.0 * depth_ratio * inner_hw * np.sqrt(np.clip(1.0 - (u / inner_hw) ** 2, 0.0, None))
    return outer - 0.55 * inner * (np.asarray(hollow) > 0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def knee_thickness(knee: RadiographKnee, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(soft tissue, bone) projected thickness in mm at knee-local (u, v) in mm."""
    medial_gap, lateral_gap = knee.jsw_mm
    # soft tissue: the leg, wider at the thigh
    soft_hw = knee.soft_half_width_mm * (1.0 + 0.25 * _smoothstep((-v - 40.0) / 160.0))
    soft = _body(u - 4.0, soft_hw, 0.95)

    # femur: shaft widening through the metaphysis into two condyles
    femur_hw = 14.0 + 24.0 * _smoothstep((v + 95.0) / 70.0)
    femur = np.where(v < -18.0, _body(u - 1.0, femur_hw, 0.8, hollow=0.55 * (v < -70)), 0.0)
    condyles = []
    for cu, gap in ((-19.0, medial_gap), (19.0, lateral_gap)):
        condyles.append(_ellipsoid(u, v, cu, -gap / 2 - 21.0, 18.5, 21.0, 24.0))
    notch = _ellipsoid(u, v, 0.0, -min(knee.jsw_mm) / 2 - 4.0, 6.5, 16.0, 14.0)
    femur = np.maximum(femur, np.maximum(*condyles) - notch)

    # tibia: plateau (top follows each compartment's gap) narrowing into the shaft
    top = np.where(u < 0, medial_gap / 2, lateral_gap / 2)
    tibia_hw = 39.0 - 24.0 * _smoothstep((v - 22.0) / 55.0)
    below = _smoothstep((v - top) / 0.6)
    tibia = _body(u + 1.0, tibia_hw, 0.55, hollow=0.5 * (v > 90)) * below
    eminence = _ellipsoid(u, v, 0.0, min(knee.jsw_mm) / 2 + 1.0, 7.0, 5.5, 10.0)
    tibia = np.maximum(tibia, eminence)
    fibula = np.maximum(_ellipsoid(u, v, 34.0, 24.0, 9.5, 10.0, 9.0), _body(u - 32.0, np.full_like(v, 6.0), 1.0))
    fibula = np.where(v > 18.0, fibula, 0.0)
    patella = _ellipsoid(u, v, 3.0, -32.0, 22.0, 25.0, 10.0)
    spurs = np.zeros(np.broadcast_shapes(u.shape, v.shape))
    for spur in knee.spurs:
        spurs = np.maximum(spurs, _ellipsoid(u, v, spur.u, spur.v, spur.a, spur.b, spur.a * 1.5))
    bone = femur + tibia + fibula + patella + spurs
    return soft, bone


@dataclass(frozen=True)
class RadiographLayout:
    """Where the knees sit in one image (pixels) and how it is exposed."""

    rows: int
    cols: int
    spacing_mm: float
    centres: dict[str, tuple[float, float]]  # side -> (row, col) of the true joint centre
    exposure: float
    noise: float
    marker: tuple[float, float]  # (row, col) of the lead side marker


def render_radiograph(
    knees: dict[str, RadiographKnee], layout: RadiographLayout, rng: np.random.Generator
) -> np.ndarray:
    """The bilateral radiograph (rows, cols) uint16, 12-bit, MONOCHROME2."""
    s = layout.spacing_mm
    rows = np.arange(layout.rows, dtype=np.float32)[:, None]
    cols = np.arange(layout.cols, dtype=np.float32)[None, :]
    attenuation = np.zeros((layout.rows, layout.cols), dtype=np.float32)
    half = layout.cols / 2
    for side, knee in knees.items():
        centre_row, centre_col = layout.centres[side]
        lo, hi = (0, int(half)) if side == "R" else (int(half), layout.cols)
        lateral = -1.0 if side == "R" else 1.0  # the right knee's lateral side is screen-left
        dx = (cols[:, lo:hi] - centre_col) * s
        dy = (rows - centre_row) * s
        theta = math.radians(knee.tilt_deg)
        x = (math.cos(theta) * dx + math.sin(theta) * dy) / knee.scale
        y = (-math.sin(theta) * dx + math.cos(theta) * dy) / knee.scale
        soft, bone = knee_thickness(knee, lateral * x, y)
        attenuation[:, lo:hi] += (MU_SOFT * soft + MU_BONE * bone).astype(np.float32) * knee.scale
    # the lead side marker: a small dense square
    mr, mc = layout.marker
    size = 10.0 / s
    marker = (np.abs(rows - mr) < size) & (np.abs(cols - mc) < size * 0.8)
    attenuation[marker] += 4.0
    heel = 1.0 + 0.06 * np.linspace(-1, 1, layout.rows, dtype=np.float32)[:, None]
    image = AIR_VALUE + SPAN * layout.exposure * (1.0 - np.exp(-0.4 * attenuation * heel))
    image += rng.normal(0.0, layout.noise, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, MAX_VALUE).astype(np.uint16)


# Detector sizes (rows, cols) seen in the OAI (landscape: both knees side by side).
DETECTOR_SIZES: tuple[tuple[int, int], ...] = ((1712, 2140), (2048, 2494), (2320, 2828), (2500, 3000), (3537, 4637))
SIZE_WEIGHTS = (0.1, 0.3, 0.4, 0.1, 0.1)


def draw_layout(rng: np.random.Generator, size: str) -> RadiographLayout:
    """Detector size, pixel spacing, knee positions and exposure of one radiograph.

    ``full``: OAI sizes at 0.10-0.20 mm pixels covering a field of about 350-440 mm; ``small``:
    the same field at a quarter of the resolution (tests and the demo).
    """
    rows, cols = DETECTOR_SIZES[int(rng.choice(len(DETECTOR_SIZES), p=SIZE_WEIGHTS))]
    width_mm = float(rng.uniform(350.0, 440.0))
    spacing = float(np.clip(round(width_mm / cols, 4), 0.10, 0.20))
    if size == "small":
        rows, cols, spacing = rows // 4, cols // 4, spacing * 4
    elif size != "full":
        raise ValueError(f"unknown radiograph size {size!r}; choose full or small")
    width, height = cols * spacing, rows * spacing
    separation = float(rng.uniform(170.0, 230.0))  # between the two joint centres
    middle = width / 2 + float(rng.uniform(-15.0, 15.0))
    joint_row_mm = height / 2 + float(rng.uniform(-0.12, 0.12)) * height
    centres = {}
    for side, sign in (("R", -1.0), ("L", 1.0)):
        row = joint_row_mm + float(rng.normal(0.0, 4.0))
        col = middle + sign * (separation / 2 + float(rng.normal(0.0, 4.0)))
        centres[side] = (row / spacing, col / spacing)
    marker = (float(rng.uniform(0.05, 0.2)) * rows, float(rng.uniform(0.03, 0.12)) * cols)
    return RadiographLayout(
        rows, cols, spacing, centres, float(rng.uniform(0.9, 1.05)), float(rng.uniform(15.0, 35.0)), marker
    )
