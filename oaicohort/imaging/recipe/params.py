"""From a DESS series to the uint8 volumes the models read: the recipe and its parameters.

Defaults reproduce the reference (REFERENCE.md section 3) with its x2 downsample done once here:

1. Intensity (on the whole series as read): ``uint16 >> 3``, clipped to its [0, 99.9]
   percentile range, cast to uint8. Interpretation: percentiles are computed on the shifted
   volume (numpy's linear interpolation), values are clipped to ``[p_low, p_high]`` and cast
   (truncating), exactly as the reference, which relies on ``p_high <= 255`` after the shift
   (12-bit DESS data; the synthetic series too). When ``p_high`` exceeds 255 a plain cast would
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
   trilinear x0.5 downsample (which equals a 2x2x2 mean); the only difference is the rounding of
   the mean to uint8: half a grey level, about 1.8/255 after the per-volume [0, 1] scaling
   (that scaling stretches the stored range, so one stored level is more than 1/255).
5. Coronal and axial views are block means of the same full-resolution region, with blocks
   (4, 2, 1) along (through-plane, in-plane, left-right): stored (88, 176, 160) at about
   1.46 x 0.73 x 0.70 mm, training crop (80, 160, 128) = the reference's "80 slices of 160x128",
   the same voxel count as the sagittal crop and (near-)isotropic in-slice spacing. Block means of
   the full-resolution data need no interpolation at all.

Before all of this (reference fidelity, both recorded in the parameters): the run reorients each
series to one canonical order from ImageOrientationPatient (``canonical_orientation``,
``oaicohort.imaging.series.orientation``), and a series with fewer slices or a smaller in-plane size than
the training crop needs is excluded with reason ``image_too_small`` (``too_small="exclude"``,
``oaicohort.imaging.series.size``) instead of being padded.

Every array is stored in (D, H, W) order, D being the view's slice axis:
``sag`` = (left-right, rows, cols), ``cor`` = (cols, rows, left-right),
``ax`` = (rows, cols, left-right); for OAI sagittal DESS rows run superior-inferior and columns
anterior-posterior.

The steps live in ``intensity`` (1) and ``mri`` (2-5, and ``preprocess_mri``, the recipe's entry
point, which runs them all on one loaded series); radiographs take ``xray`` and ``xray_knees``
(``preprocess_xray``). This module holds the parameters they take.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from oaicohort.field_checks import unknown_fields
from oaicohort.vocabulary import MRI_VIEWS, XRAY_VIEW

IntensityMode = Literal["reference", "rescale"]
TooSmall = Literal["exclude", "pad"]
# Parameters added after stores existed, with the behaviour those stores were made with: a
# parameter at its legacy value is left out of the hash (old stores keep their identity) and a
# stored parameter set without it reads as the legacy value.
# The X-ray parameters only shape the ``xray`` array, which older stores never had: at their
# first defaults they stay out of the hash too. The ROI's pixel size and width changed later to the
# reference's 0.195 mm x 700 (issue 21): a store at the first values (140 mm, 0.2 mm) keeps its
# hash, and a new store, whose values differ from them, hashes them (so it is another identity,
# MRI-only stores included: their volumes are the same, their hash is not).
_LEGACY_VALUES: dict[str, Any] = {
    "canonical_orientation": False,
    "too_small": "pad",
    "xray_sequence": "BILATERAL PA FIXED FLEXION KNEE",
    "xray_roi_mm": 140.0,
    "xray_resample_mm": 0.2,
    "xray_size": 350,
    "xray_percentiles": [5.0, 99.0],
    "xray_flip_left": True,
    # stores made before the screening visit existed had no P01 series to take, so they hold what
    # taking them would have given: the behaviour is the default and stays out of the hash
    "xray_baseline_from_screening": True,
    # stores made before issue 21's last item held the ROI at the model's input size
    "xray_stored_scale": 1,
}


def _legacy_values(preset: str) -> dict[str, Any]:
    """``_LEGACY_VALUES`` for a preset (the ``small`` preset's X-ray ROIs are 70x70)."""
    return {**_LEGACY_VALUES, "xray_size": 70} if preset == "small" else dict(_LEGACY_VALUES)


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
    # reference fidelity (oaicohort.imaging.series.orientation, oaicohort.imaging.series.size)
    canonical_orientation: bool = True
    too_small: TooSmall = "exclude"
    # knee radiographs (oaicohort.imaging.recipe.xray): the reference's ROI of 700 pixels of
    # 0.195 mm (136.5 mm) -> 350x350. Stores made before issue 21 used 140 mm at 0.2 mm (still
    # 700 pixels); they keep those values and their hash (_LEGACY_VALUES)
    xray_sequence: str = "BILATERAL PA FIXED FLEXION KNEE"
    xray_roi_mm: float = 136.5
    xray_resample_mm: float = 0.195
    xray_size: int = 350  # the model's input (350 x 350)
    # the stored ROI is this many times ``xray_size`` wide: training rotates and gamma-corrects it
    # at the stored size and then takes k x k means down to ``xray_size``, as the reference does at
    # 700 pixels (2); 1 stores the ROI at the model's input size and augments it there
    xray_stored_scale: int = 1
    xray_percentiles: tuple[float, float] = (5.0, 99.0)
    xray_flip_left: bool = True
    # a participant without a baseline bilateral PA: take the screening visit's (P01), as many
    # participants' baseline radiographs are in the screening package (OAI_DISTRIBUTIONS.md section 5)
    xray_baseline_from_screening: bool = True

    def __post_init__(self) -> None:
        # tuples, even when built from JSON lists
        for name in ("inplane_size", "sag_crop", "reprojection_blocks", "reprojection_crop"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "xray_percentiles", tuple(float(v) for v in self.xray_percentiles))
        if self.too_small not in ("exclude", "pad"):
            raise ValueError(f"too_small must be 'exclude' or 'pad', not {self.too_small!r}")
        if self.intensity_mode not in ("reference", "rescale"):
            raise ValueError(f"intensity_mode must be 'reference' or 'rescale', not {self.intensity_mode!r}")
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            raise ValueError("need 0 <= percentile_low < percentile_high <= 100")
        if self.xray_stored_scale < 1:
            raise ValueError(f"xray_stored_scale must be >= 1, not {self.xray_stored_scale}")
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
        for view in MRI_VIEWS:
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

        Stored sag (20, 44, 44) -> crop (16, 40, 40); cor/ax (22, 44, 40) -> crop (20, 40, 32);
        X-ray ROIs 70x70.
        """
        return cls(
            preset="small",
            margin=4,
            inplane_size=(88, 88),
            n_slices=40,
            sag_crop=(16, 40, 40),
            reprojection_crop=(20, 40, 32),
            xray_size=70,  # the 700-pixel ROI downscaled x10 instead of x2
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
        unknown = unknown_fields(cls, data)
        if unknown:
            raise ValueError(f"unknown preprocessing parameters: {unknown}")
        return cls(**{**_legacy_values(str(data.get("preset", "full"))), **data})

    def hash(self) -> str:
        """sha256 of the canonical JSON of the parameters (sorted keys, no whitespace); parameters
        at their legacy values (``_LEGACY_VALUES``) are left out."""
        legacy = _legacy_values(self.preset)
        identity = {k: v for k, v in self.to_dict().items() if not (k in legacy and v == legacy[k])}
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    # ------------------------------------------------------------------ geometry

    @property
    def xray_stored_size(self) -> int:
        """Width in pixels of a stored knee ROI: the model's input times ``xray_stored_scale``."""
        return self.xray_size * self.xray_stored_scale

    @property
    def region_shape(self) -> tuple[int, int, int]:
        """Full-resolution (slices, rows, cols) region every series is brought to."""
        return (self.n_slices, *self.inplane_size)

    def stored_shape(self, view: str) -> tuple[int, int, int]:
        """(D, H, W) of one stored volume of ``view`` (``xray``: one ROI, D = 1)."""
        if view == XRAY_VIEW:
            return (1, self.xray_stored_size, self.xray_stored_size)
        s, r, c = self.region_shape
        if view == "sag":
            f = self.downsample
            return (s // f, r // f, c // f)
        through, inplane, lr = self.reprojection_blocks
        if view == "cor":
            return (c // through, r // inplane, s // lr)
        if view == "ax":
            return (r // through, c // inplane, s // lr)
        raise ValueError(f"unknown view {view!r}; choose from {MRI_VIEWS}")

    def crop_shape(self, view: str) -> tuple[int, int, int]:
        """(D, H, W) of the training crop taken at any offset of the stored volume."""
        if view == XRAY_VIEW:
            return self.stored_shape(view)
        if view == "sag":
            return self.sag_crop
        if view in ("cor", "ax"):
            return self.reprojection_crop
        raise ValueError(f"unknown view {view!r}; choose from {MRI_VIEWS}")

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
        raise ValueError(f"unknown view {view!r}; choose from {MRI_VIEWS}")
