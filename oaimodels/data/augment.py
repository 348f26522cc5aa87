"""The batched augmentations of the paper's recipe as torch ops on the model's device (crop,
per-volume scaling, rotation, gamma, normalisation), with random draws from a CPU generator seeded
per (seed, fold, epoch, rank)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from oaicohort.cohort.splits import LeakageError as LeakageError  # the one leakage check, re-exported
from oaicohort.vocabulary import XRAY_VIEW

from ..networks.multiview import views_from_volume
from .layout import InputLayout
from .normalisation import MRI_NORMALISATION
from .rotation import rotate_sagittal, to_device

log = logging.getLogger(__name__)


NORM_MEAN, NORM_STD = MRI_NORMALISATION
"""Intensity normalisation of the reference's MRI inputs (after per-volume scaling to [0, 1]);
radiographs have their own (``normalisation``), and a layout carries the one its run uses."""


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. seed, fold, epoch, rank), stable across runs."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)
    return int(state[0] & np.uint64(2**63 - 1))


def cpu_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


@dataclass(frozen=True)
class AugmentParams:
    """The recipe's training augmentations (REFERENCE.md section 5); ``none()`` disables them."""

    random_crop: bool = True
    rotate_p: float = 0.5
    max_rotation_deg: float = 15.0
    gamma_p: float = 0.5
    gamma_low: float = 0.5
    gamma_high: float = 2.0

    @classmethod
    def none(cls) -> AugmentParams:
        return cls(random_crop=False, rotate_p=0.0, gamma_p=0.0)


@dataclass(frozen=True)
class AugmentDraw:
    """The random parameters of one batch (CPU tensors; one entry per volume)."""

    offsets: torch.Tensor  # (B, 3) int64 crop offsets (d, h, w) into the stored volume
    angles_deg: torch.Tensor  # (B,) float32, 0 where not rotated
    rotate: torch.Tensor  # (B,) bool
    gamma: torch.Tensor  # (B,) float32, 1 where not applied
    apply_gamma: torch.Tensor  # (B,) bool


def centre_offsets(stored: Sequence[int], crop: Sequence[int]) -> tuple[int, int, int]:
    return tuple((s - c) // 2 for s, c in zip(stored, crop))  # type: ignore[return-value]


def draw_augment(
    batch: int,
    stored: Sequence[int],
    crop: Sequence[int],
    params: AugmentParams,
    generator: torch.Generator,
    bounds: torch.Tensor | None = None,
) -> AugmentDraw:
    """Draw crop offsets, rotation angles and gammas for ``batch`` volumes.

    Random crop offsets are uniform over ``bounds`` (B, 3, 2): each volume's lowest and highest
    offset per axis that keeps the crop inside its real data (``oaimodels.data.crops``); None:
    anywhere in the stored volume. Every parameter is drawn for every volume whether or not it is
    applied, so the stream of random numbers does not depend on earlier outcomes.
    """
    if params.random_crop:
        if bounds is None:
            low = torch.zeros(3, dtype=torch.long)
            count = torch.tensor([s - c + 1 for s, c in zip(stored, crop)], dtype=torch.long)
        else:
            low = bounds[:, :, 0].long()
            count = bounds[:, :, 1].long() - low + 1
        u = torch.rand(batch, 3, generator=generator, dtype=torch.float64)
        offsets = low + (u * count.double()).floor().long().clamp_max(count - 1)
    else:
        offsets = torch.tensor(centre_offsets(stored, crop)).expand(batch, 3).clone()
    rotate = torch.rand(batch, generator=generator) < params.rotate_p
    angles = (torch.rand(batch, generator=generator) * 2 - 1) * params.max_rotation_deg
    angles = torch.where(rotate, angles, torch.zeros_like(angles))
    apply_gamma = torch.rand(batch, generator=generator) < params.gamma_p
    gamma = params.gamma_low + torch.rand(batch, generator=generator) * (params.gamma_high - params.gamma_low)
    gamma = torch.where(apply_gamma, gamma, torch.ones_like(gamma))
    return AugmentDraw(offsets, angles, rotate, gamma, apply_gamma)


def crop_volumes(volumes: torch.Tensor, offsets: torch.Tensor, crop: Sequence[int]) -> torch.Tensor:
    """Crop ``(B, D, H, W)`` volumes at per-volume ``offsets`` (B, 3) to ``crop``; same dtype.

    One strided copy per volume: on a GPU that is B small copy kernels, negligible next to a
    training step, and on a CPU it is B memcpy-like copies (an index-gather would cost far more).
    """
    d, h, w = (int(n) for n in crop)
    offs = offsets.tolist()
    if len({tuple(o) for o in offs}) == 1:  # evaluation: one slice for the whole batch
        od, oh, ow = offs[0]
        return volumes[:, od : od + d, oh : oh + h, ow : ow + w].contiguous()
    return torch.stack([v[od : od + d, oh : oh + h, ow : ow + w] for v, (od, oh, ow) in zip(volumes, offs)])


def scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Scale each volume of ``(B, ...)`` to [0, 1] by its own min and max (constant -> 0)."""
    flat = x.flatten(1)
    lo = flat.amin(dim=1).view(-1, *([1] * (x.dim() - 1)))
    hi = flat.amax(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def apply_gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x ** (1 / gamma)`` per volume (x in [0, 1])."""
    exponent = (1.0 / to_device(gamma, x.device).to(x.dtype)).view(-1, *([1] * (x.dim() - 1)))
    return x.clamp_min(0).pow(exponent)


def normalise(x: torch.Tensor, normalisation: tuple[float, float] = MRI_NORMALISATION) -> torch.Tensor:
    mean, std = normalisation
    return (x - mean) / std


class BatchPreparer:
    """Turns uint8 batches of stored volumes into the model's input dict, on their device."""

    def __init__(
        self,
        layout: InputLayout,
        augment: AugmentParams | None = None,
        *,
        channels_last: bool = False,
    ) -> None:
        self.layout = layout
        self.augment = augment or AugmentParams()
        self.channels_last = channels_last

    def draw(self, batch: int, generator: torch.Generator, bounds: torch.Tensor | None = None) -> AugmentDraw:
        return draw_augment(batch, self.layout.stored_shape, self.layout.crop_shape, self.augment, generator, bounds)

    def train_inputs(
        self, volumes: torch.Tensor, generator: torch.Generator, bounds: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Augmented inputs: random crop (inside ``bounds``, see :func:`draw_augment`), [0, 1]
        scaling, rotation, gamma, normalisation."""
        return self.apply(volumes, self.draw(volumes.shape[0], generator, bounds))

    def apply(self, volumes: torch.Tensor, draw: AugmentDraw) -> dict[str, torch.Tensor]:
        self._check(volumes)
        x = crop_volumes(volumes, draw.offsets, self.layout.crop_shape).float()
        x = scale_to_unit(x)
        if bool(draw.rotate.any()):
            idx = torch.nonzero(draw.rotate).flatten()
            idx_dev = to_device(idx, x.device)
            # always in the sagittal plane, as the reference rotates before reslicing
            rotated = rotate_sagittal(
                x[idx_dev], draw.angles_deg[idx], self.layout.source_view, self.layout.spacing_ratio
            )
            x = x.index_copy(0, idx_dev, rotated)
        if bool(draw.apply_gamma.any()):
            x = apply_gamma(x, draw.gamma)
        return self.to_inputs(normalise(x, self.layout.normalisation))

    def eval_inputs(self, volumes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Centre crop, [0, 1] scaling and normalisation, no augmentation."""
        self._check(volumes)
        offsets = torch.tensor(centre_offsets(self.layout.stored_shape, self.layout.crop_shape))
        x = crop_volumes(volumes, offsets.expand(volumes.shape[0], 3), self.layout.crop_shape)
        return self.to_inputs(normalise(scale_to_unit(x.float()), self.layout.normalisation))

    def _check(self, volumes: torch.Tensor) -> None:
        if volumes.dim() != 4 or tuple(volumes.shape[1:]) != self.layout.stored_shape:
            raise ValueError(
                f"expected stored volumes (B, {', '.join(map(str, self.layout.stored_shape))}), "
                f"got {tuple(volumes.shape)}"
            )

    def to_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's input dict from normalised crops ``x`` (B, d, h, w); differentiable, so
        attribution (``oaimodels.inference.attribution``) feeds the models exactly as training does."""
        if self.layout.source_view == XRAY_VIEW:  # one-slice volumes -> (B, 1, h, w) images
            image = x[:, :1]
            return {XRAY_VIEW: image.contiguous(memory_format=torch.channels_last) if self.channels_last else image}
        x = x.unsqueeze(1)  # (B, 1, d, h, w)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if self.layout.derived_views:
            views = views_from_volume(x)
            return {v: views[v] for v in self.layout.model_views}
        return {self.layout.source_view: x}
