"""From a DESS series to the uint8 volumes the models read (pure numpy, no I/O).

Defaults reproduce the reference (REFERENCE.md section 3) with its x2 downsample done once here:

1. Intensity (on the whole series as read): ``uint16 >> 3``, clipped to its [0, 99.9]
   percentile range, cast to uint8. Interpretation: percentiles are computed on the shifted
   volume (numpy's linear interpolation), values are clipped to ``[p_low, p_high]`` and cast
   (truncating), exactly as the reference. DESS series rarely exceed 2047 (p_high after the
   shift well under 255), so nothing is rescaled; when ``p_high`` exceeds 255 a plain cast would
   wrap around, so the range is instead mapped linearly onto 0..255 and the volume's notes say
   ``intensity_rescaled``. ``intensity_mode="rescale"`` always maps the range onto 0..255.
   Training scales each volume to [0, 1] anyway, so both modes give the same model input up to
   rounding.
2. Right knees are flipped along the slice (left-right) axis so every knee looks like a left one.
3. A ``margin`` is cut from each side of rows and columns (384 -> 352), then rows and columns are
   centre-padded/cropped to ``inplane_size`` (a 352-wide series becomes 320 and is padded back to
   352 with zeros, so the centre 320 region equals the reference's). Slices are centre-padded or
   cropped to ``n_slices`` (160). Every pad/crop is recorded in the notes.
4. Sagittal: the full-resolution region (160, 352, 352) is reduced by the exact mean of each
   2x2x2 block (rounded half up) -> stored (80, 176, 176). Training crops (64, 160, 160) at any
   offset, i.e. the reference's 320x320x128 crop at even full-resolution offsets followed by its
   trilinear x0.5 downsample (which equals a 2x2x2 mean).
5. Coronal and axial views are block means of the same full-resolution region, with blocks
   (4, 2, 1) along (through-plane, in-plane, left-right): stored (88, 176, 160) at about
   1.46 x 0.73 x 0.70 mm, training crop (80, 160, 128) = the reference's "80 slices of 160x128",
   the same voxel count as the sagittal crop and (near-)isotropic in-slice spacing. Block means of
   the full-resolution data need no interpolation at all.

Every array is stored in (D, H, W) order, D being the view's slice axis:
``sag`` = (left-right, rows, cols), ``cor`` = (cols, rows, left-right),
``ax`` = (rows, cols, left-right); for OAI sagittal DESS rows run superior-inferior and columns
anterior-posterior.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

VIEWS: tuple[str, ...] = ("sag", "cor", "ax")
IntensityMode = Literal["reference", "rescale"]


class SeriesLike(Protocol):
    """What preprocessing needs from a read series (``oaicohort.dicom_series.DicomVolume``)."""

    @property
    def pixels(self) -> np.ndarray: ...  # (slices, rows, cols) uint16

    @property
    def spacing_mm(self) -> tuple[float, float, float]: ...  # (slice, row, col)

    @property
    def side(self) -> str: ...  # "R" | "L"


@dataclass(frozen=True)
class PreprocessParams:
    """Every parameter that shapes the stored volumes; a store is bound to one set (its hash)."""

    preset: str = "full"
    intensity_shift: int = 3
    percentile_low: float = 0.0
    percentile_high: float = 99.9
    intensity_mode: IntensityMode = "reference"
    flip_right: bool = True
    margin: int = 16
    inplane_size: tuple[int, int] = (352, 352)  # (rows, cols) of the full-resolution region
    n_slices: int = 160
    downsample: int = 2
    sag_crop: tuple[int, int, int] = (64, 160, 160)
    # block means along (through-plane, in-plane, left-right) of the cor/ax re-projections
    reprojection_blocks: tuple[int, int, int] = (4, 2, 1)
    reprojection_crop: tuple[int, int, int] = (80, 160, 128)
    pad_value: int = 0
    sequence: str = "SAG_3D_DESS"

    def __post_init__(self) -> None:
        # tuples, even when built from JSON lists
        for name in ("inplane_size", "sag_crop", "reprojection_blocks", "reprojection_crop"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.intensity_mode not in ("reference", "rescale"):
            raise ValueError(f"intensity_mode must be 'reference' or 'rescale', not {self.intensity_mode!r}")
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            raise ValueError("need 0 <= percentile_low < percentile_high <= 100")
        if self.downsample < 1 or self.margin < 0:
            raise ValueError("downsample must be >= 1 and margin >= 0")
        region = (self.n_slices, *self.inplane_size)
        if any(n % self.downsample for n in region):
            raise ValueError(f"region {region} is not divisible by downsample={self.downsample}")
        through, inplane, lr = self.reprojection_blocks
        if self.inplane_size[1] % through or self.inplane_size[0] % through:
            raise ValueError("rows and cols must be divisible by the through-plane block")
        if any(n % inplane for n in self.inplane_size) or self.n_slices % lr:
            raise ValueError("region not divisible by the re-projection blocks")
        for view in VIEWS:
            stored, crop = self.stored_shape(view), self.crop_shape(view)
            if any(c > s for c, s in zip(crop, stored)):
                raise ValueError(f"{view} crop {crop} larger than the stored shape {stored}")

    # ------------------------------------------------------------------ presets

    @classmethod
    def full(cls) -> PreprocessParams:
        """The reference geometry: 384x384x160 DESS -> stored sag (80, 176, 176)."""
        return cls()

    @classmethod
    def small(cls) -> PreprocessParams:
        """The full geometry scaled by 1/4 for the ``small`` synthetic images (96x96x40).

        Stored sag (20, 44, 44) -> crop (16, 40, 40); cor/ax (22, 44, 40) -> crop (20, 40, 32).
        """
        return cls(
            preset="small",
            margin=4,
            inplane_size=(88, 88),
            n_slices=40,
            sag_crop=(16, 40, 40),
            reprojection_crop=(20, 40, 32),
        )

    @classmethod
    def preset_named(cls, name: str) -> PreprocessParams:
        presets = {"full": cls.full, "small": cls.small}
        if name not in presets:
            raise ValueError(f"unknown preprocessing preset {name!r}; choose from {sorted(presets)}")
        return presets[name]()

    # ------------------------------------------------------------------ identity

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing parameters: {sorted(unknown)}")
        return cls(**data)

    def hash(self) -> str:
        """sha256 of the canonical JSON of the parameters (sorted keys, no whitespace)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # ------------------------------------------------------------------ geometry

    @property
    def region_shape(self) -> tuple[int, int, int]:
        """Full-resolution (slices, rows, cols) region every series is brought to."""
        return (self.n_slices, *self.inplane_size)

    def stored_shape(self, view: str) -> tuple[int, int, int]:
        """(D, H, W) of one stored volume of ``view``."""
        s, r, c = self.region_shape
        if view == "sag":
            f = self.downsample
            return (s // f, r // f, c // f)
        through, inplane, lr = self.reprojection_blocks
        if view == "cor":
            return (c // through, r // inplane, s // lr)
        if view == "ax":
            return (r // through, c // inplane, s // lr)
        raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")

    def crop_shape(self, view: str) -> tuple[int, int, int]:
        """(D, H, W) of the training crop taken at any offset of the stored volume."""
        if view == "sag":
            return self.sag_crop
        if view in ("cor", "ax"):
            return self.reprojection_crop
        raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")

    def spacing_mm(self, view: str, series_spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """Voxel spacing (D, H, W) of a stored volume given the series' (slice, row, col) spacing."""
        ds, dr, dc = (float(v) for v in series_spacing)
        if view == "sag":
            f = self.downsample
            return (ds * f, dr * f, dc * f)
        through, inplane, lr = self.reprojection_blocks
        if view == "cor":
            return (dc * through, dr * inplane, ds * lr)
        if view == "ax":
            return (dr * through, dc * inplane, ds * lr)
        raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")


# --------------------------------------------------------------------------- steps


def percentile_of_counts(counts: np.ndarray, q: float) -> float:
    """The q-th percentile (numpy's default linear interpolation) of data given as value counts."""
    n = int(counts.sum())
    if n == 0:
        return 0.0
    position = q / 100.0 * (n - 1)
    lo_rank = int(np.floor(position))
    hi_rank = min(lo_rank + 1, n - 1)
    cumulative = np.cumsum(counts)
    lo_value = int(np.searchsorted(cumulative, lo_rank, side="right"))
    hi_value = int(np.searchsorted(cumulative, hi_rank, side="right"))
    return lo_value + (position - lo_rank) * (hi_value - lo_value)


def intensity_lut(
    pixels: np.ndarray, params: PreprocessParams
) -> tuple[np.ndarray, dict[str, Any]]:
    """A uint16 -> uint8 lookup table implementing the intensity mapping for this series."""
    if pixels.dtype != np.uint16:
        raise ValueError(f"expected uint16 pixels, got {pixels.dtype}")
    max_shifted = 65535 >> params.intensity_shift
    counts = np.zeros(max_shifted + 1, dtype=np.int64)
    # per slice, so no int64 copy of the whole volume is ever made
    for plane in pixels:
        counts += np.bincount((plane >> params.intensity_shift).ravel(), minlength=max_shifted + 1)
    p_low = percentile_of_counts(counts, params.percentile_low)
    p_high = percentile_of_counts(counts, params.percentile_high)
    shifted = (np.arange(65536, dtype=np.uint32) >> params.intensity_shift).astype(np.float64)
    clipped = np.clip(shifted, p_low, p_high)
    rescale = params.intensity_mode == "rescale" or p_high > 255
    if rescale:
        span = max(p_high - p_low, 1e-9)
        lut = np.floor((clipped - p_low) * (255.0 / span) + 0.5)
    else:
        lut = np.floor(clipped)  # the reference's cast truncates
    notes: dict[str, Any] = {"intensity_range": [round(p_low, 3), round(p_high, 3)]}
    if rescale and params.intensity_mode == "reference":
        notes["intensity_rescaled"] = True
    return lut.astype(np.uint8), notes


def map_intensity(pixels: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, dict[str, Any]]:
    """``uint16 >> shift``, clipped to the percentile range, as uint8 (see the module docstring)."""
    lut, notes = intensity_lut(pixels, params)
    return lut[pixels], notes


def orient_left(pixels: np.ndarray, side: str, params: PreprocessParams) -> np.ndarray:
    """Flip right knees along the slice (left-right) axis so every knee looks like a left one."""
    if side not in ("R", "L"):
        raise ValueError(f"knee side must be 'R' or 'L', not {side!r}")
    return pixels[::-1] if side == "R" and params.flip_right else pixels


def centre_fit(
    array: np.ndarray, axis: int, size: int, pad_value: int = 0
) -> tuple[np.ndarray, int]:
    """Centre-crop or centre-pad ``array`` along ``axis`` to ``size``.

    Returns the result and the signed change (positive = padded, negative = cropped). Odd
    differences put the extra element at the end (pad) / remove it from the end (crop).
    """
    n = array.shape[axis]
    if n == size:
        return array, 0
    if n > size:
        start = (n - size) // 2
        index = [slice(None)] * array.ndim
        index[axis] = slice(start, start + size)
        return array[tuple(index)], size - n
    before = (size - n) // 2
    widths = [(0, 0)] * array.ndim
    widths[axis] = (before, size - n - before)
    return np.pad(array, widths, constant_values=pad_value), size - n


def fit_region(pixels: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Margin cut, then centre pad/crop to ``params.region_shape``; notes say what was changed."""
    m = params.margin
    rows, cols = pixels.shape[1:]
    if rows <= 2 * m or cols <= 2 * m:
        raise ValueError(f"series of {rows}x{cols} pixels is too small for a {m}-pixel margin")
    region = pixels[:, m : rows - m, m : cols - m] if m else pixels
    notes: dict[str, Any] = {}
    for axis, (name, size) in enumerate(zip(("slices", "rows", "cols"), params.region_shape)):
        before = region.shape[axis]
        region, change = centre_fit(region, axis, size, params.pad_value)
        if change > 0:
            notes[f"{name}_padded"] = {"from": before, "to": size}
        elif change < 0:
            notes[f"{name}_cropped"] = {"from": before, "to": size}
    return np.ascontiguousarray(region), notes


def block_mean(array: np.ndarray, blocks: tuple[int, int, int]) -> np.ndarray:
    """Exact mean of each block (rounded half up) of a uint8 volume; shape must divide evenly."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {array.dtype}")
    if blocks == (1, 1, 1):
        return array
    d, h, w = array.shape
    bd, bh, bw = blocks
    if d % bd or h % bh or w % bw:
        raise ValueError(f"shape {array.shape} is not divisible by blocks {blocks}")
    n = bd * bh * bw
    acc = np.uint16 if n <= 256 else np.uint32
    sums = array.reshape(d // bd, bd, h // bh, bh, w // bw, bw).sum(axis=(1, 3, 5), dtype=acc)
    return ((sums + n // 2) // n).astype(np.uint8)


def views_of_region(
    region: np.ndarray, params: PreprocessParams, views: tuple[str, ...] = VIEWS
) -> dict[str, np.ndarray]:
    """The stored volumes of each requested view from the full-resolution uint8 region."""
    out: dict[str, np.ndarray] = {}
    through, inplane, lr = params.reprojection_blocks
    for view in views:
        if view == "sag":
            f = params.downsample
            out[view] = block_mean(region, (f, f, f))
        elif view == "cor":  # (cols, rows, slices)
            out[view] = np.ascontiguousarray(
                block_mean(np.ascontiguousarray(region.transpose(2, 1, 0)), (through, inplane, lr))
            )
        elif view == "ax":  # (rows, cols, slices)
            out[view] = np.ascontiguousarray(
                block_mean(np.ascontiguousarray(region.transpose(1, 2, 0)), (through, inplane, lr))
            )
        else:
            raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")
    return out


@dataclass
class PreprocessedKnee:
    """The stored volumes of one series, their voxel spacing, and what was padded/cropped."""

    volumes: dict[str, np.ndarray]
    spacing_mm: dict[str, tuple[float, float, float]]
    notes: dict[str, Any]


def preprocess_series(
    series: SeriesLike, params: PreprocessParams, views: tuple[str, ...] = VIEWS
) -> PreprocessedKnee:
    """Intensity, orientation, region and views of one read series (see the module docstring)."""
    pixels = np.asarray(series.pixels)
    if pixels.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) volume, got shape {pixels.shape}")
    lut, notes = intensity_lut(pixels, params)
    oriented = orient_left(pixels, series.side, params)
    m = params.margin
    rows, cols = pixels.shape[1:]
    if rows <= 2 * m or cols <= 2 * m:
        raise ValueError(f"series of {rows}x{cols} pixels is too small for a {m}-pixel margin")
    # map intensities after the margin cut: the lookup then touches only kept voxels
    cut = oriented[:, m : rows - m, m : cols - m] if m else oriented
    region, fit_notes = fit_region(lut[cut], dataclasses.replace(params, margin=0))
    notes.update(fit_notes)
    notes["source_shape"] = list(pixels.shape)
    if series.side == "R" and params.flip_right:
        notes["flipped"] = True
    return PreprocessedKnee(
        volumes=views_of_region(region, params, views),
        spacing_mm={v: params.spacing_mm(v, series.spacing_mm) for v in views},
        notes=notes,
    )
