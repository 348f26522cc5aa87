"""The input pipeline's steps: small typed transforms, each with one job, chained by :class:`Compose`.

As TorchIO's and MONAI's transforms, a step is an object with one job (crop, scale, rotate, gamma,
downscale, normalise), and the same composition serves training and inference, with the random parts off
(:meth:`Compose.inference`). Unlike theirs, every step works on a whole batch ``(B, D, H, W)`` on
the model's device: per-volume parameters are tensors of length B, so a batch costs a few
kernels instead of B Python calls.

A random step draws its parameters first, from a CPU generator (:meth:`Compose.draw`: one draw
per step, in step order), and applies them second (:meth:`Compose.apply`). Drawing on the CPU
makes a run reproducible on any device, and drawing every parameter of every volume, whether
or not it is applied, keeps the random stream independent of earlier outcomes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .normalisation import MRI_NORMALISATION
from .rotation import rotate_sagittal, to_device

NORM_MEAN, NORM_STD = MRI_NORMALISATION
"""Intensity normalisation of the reference's MRI inputs (after per-volume scaling to [0, 1]);
radiographs have their own (``normalisation``), and a layout carries the one its run uses."""

Shape3 = tuple[int, int, int]


class Step(Protocol):
    """One transform of a batch: its random parameters, their application, its inference form."""

    def draw(self, batch: int, generator: torch.Generator | None) -> Any:
        """Per-volume parameters of ``batch`` volumes (None for a deterministic step)."""
        ...

    def __call__(self, x: torch.Tensor, params: Any, /) -> torch.Tensor: ...

    def inference(self) -> Step | None:
        """The step with its random part off: itself, a deterministic form, or None (left out)."""
        ...


# --------------------------------------------------------------------------- functions


def centre_offsets(stored: Sequence[int], crop: Sequence[int]) -> tuple[int, int, int]:
    return tuple((s - c) // 2 for s, c in zip(stored, crop))  # type: ignore[return-value]


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


def _needs(generator: torch.Generator | None, step: object) -> torch.Generator:
    if generator is None:
        raise ValueError(f"{type(step).__name__} is random: draw it with a generator (or use its inference form)")
    return generator


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Crop:
    """Crop stored ``(B, *stored)`` uint8 volumes to ``size``: at random offsets (every offset
    equally likely, odd ones too; inside each volume's real data when given its ``bounds``,
    ``oaimodels.data.crops``) or at the centre."""

    stored: Shape3
    size: Shape3
    random: bool = False

    @property
    def centre(self) -> Shape3:
        return centre_offsets(self.stored, self.size)

    def draw(self, batch: int, generator: torch.Generator | None, bounds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3) int64 offsets (d, h, w) into the stored volume; random ones uniform over
        ``bounds`` (B, 3, 2): each volume's lowest and highest offset per axis that keeps the crop
        inside its real data (None: anywhere in the stored volume)."""
        if not self.random:
            return torch.tensor(self.centre).expand(batch, 3).clone()
        if bounds is None:
            low = torch.zeros(3, dtype=torch.long)
            count = torch.tensor([s - c + 1 for s, c in zip(self.stored, self.size)], dtype=torch.long)
        else:
            low = bounds[:, :, 0].long()
            count = bounds[:, :, 1].long() - low + 1
        u = torch.rand(batch, 3, generator=_needs(generator, self), dtype=torch.float64)
        return low + (u * count.double()).floor().long().clamp_max(count - 1)

    def __call__(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.stored):
            raise ValueError(f"expected stored volumes (B, {', '.join(map(str, self.stored))}), got {tuple(x.shape)}")
        return crop_volumes(x, offsets, self.size)

    def inference(self) -> Crop:
        return dataclasses.replace(self, random=False)


@dataclass(frozen=True)
class ScaleToUnit:
    """To float, each volume scaled to [0, 1] by its own min and max."""

    def draw(self, batch: int, generator: torch.Generator | None) -> None:
        return None

    def __call__(self, x: torch.Tensor, params: None = None) -> torch.Tensor:
        return scale_to_unit(x.float())

    def inference(self) -> ScaleToUnit:
        return self


@dataclass(frozen=True)
class ChanceDraw:
    """A random step's draw: whether it applies to each volume, and its value for each."""

    apply: torch.Tensor  # (B,) bool
    value: torch.Tensor  # (B,) float32; the step's neutral value where it does not apply


def _chance(
    batch: int, generator: torch.Generator, p: float, value: Callable[[torch.Tensor], torch.Tensor], neutral: float
) -> ChanceDraw:
    """Draw, for every volume, whether it applies (probability ``p``) and a value from ``U[0, 1)``."""
    apply = torch.rand(batch, generator=generator) < p
    drawn = value(torch.rand(batch, generator=generator))
    return ChanceDraw(apply, torch.where(apply, drawn, torch.full_like(drawn, neutral)))


@dataclass(frozen=True)
class RandomRotation:
    """With probability ``p`` per volume, rotate it by one angle in [-max_deg, max_deg] in the
    sagittal plane (as the reference rotates before reslicing), whichever view is stored."""

    p: float
    max_deg: float
    view: str
    spacing_ratio: float = 1.0  # stored D spacing / H spacing (oaimodels.data.layout.InputLayout)

    def draw(self, batch: int, generator: torch.Generator | None) -> ChanceDraw:
        """Angles in degrees, 0 where not rotated."""
        return _chance(batch, _needs(generator, self), self.p, lambda u: (u * 2 - 1) * self.max_deg, 0.0)

    def __call__(self, x: torch.Tensor, d: ChanceDraw) -> torch.Tensor:
        if not bool(d.apply.any()):
            return x
        idx = torch.nonzero(d.apply).flatten()
        idx_dev = to_device(idx, x.device)
        rotated = rotate_sagittal(x[idx_dev], d.value[idx], self.view, self.spacing_ratio)
        return x.index_copy(0, idx_dev, rotated)

    def inference(self) -> None:
        return None


@dataclass(frozen=True)
class RandomGamma:
    """With probability ``p`` per volume, ``x ** (1 / g)`` with ``g ~ U(low, high)`` (x in [0, 1])."""

    p: float
    low: float
    high: float

    def draw(self, batch: int, generator: torch.Generator | None) -> ChanceDraw:
        """Gammas, 1 where not applied."""
        return _chance(batch, _needs(generator, self), self.p, lambda u: self.low + u * (self.high - self.low), 1.0)

    def __call__(self, x: torch.Tensor, d: ChanceDraw) -> torch.Tensor:
        return apply_gamma(x, d.value) if bool(d.apply.any()) else x

    def inference(self) -> None:
        return None


@dataclass(frozen=True)
class Downscale:
    """Means of ``factor x factor`` in-plane blocks (H, W) of every slice: the reference's x0.5
    downscale of its augmented 700-pixel radiograph (a bilinear x0.5 with ``align_corners=False``
    is exactly a 2x2 mean)."""

    factor: int

    def draw(self, batch: int, generator: torch.Generator | None) -> None:
        return None

    def __call__(self, x: torch.Tensor, params: None = None) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor) if self.factor > 1 else x

    def inference(self) -> Downscale:
        return self


@dataclass(frozen=True)
class Normalise:
    """``(x - mean) / std``, the reference's intensity normalisation (the layout's pair:
    ``oaimodels.data.normalisation``)."""

    mean: float = NORM_MEAN
    std: float = NORM_STD

    def draw(self, batch: int, generator: torch.Generator | None) -> None:
        return None

    def __call__(self, x: torch.Tensor, params: None = None) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inference(self) -> Normalise:
        return self


# --------------------------------------------------------------------------- composition


@dataclass(frozen=True)
class Compose:
    """Steps applied in order to a batch; their random parameters drawn in the same order."""

    steps: tuple[Step, ...]

    def draw(
        self, batch: int, generator: torch.Generator | None = None, *, crop_bounds: torch.Tensor | None = None
    ) -> tuple[Any, ...]:
        """Every step's random parameters, in order; ``crop_bounds`` (B, 3, 2) keep a random
        :class:`Crop` inside each volume's real data."""
        return tuple(
            step.draw(batch, generator, crop_bounds) if isinstance(step, Crop) else step.draw(batch, generator)
            for step in self.steps
        )

    def apply(self, x: torch.Tensor, draws: Sequence[Any]) -> torch.Tensor:
        if len(draws) != len(self.steps):
            raise ValueError(f"{len(draws)} draws for {len(self.steps)} steps")
        for step, params in zip(self.steps, draws):
            x = step(x, params)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.draw(x.shape[0], generator))

    def inference(self) -> Compose:
        """The same steps with the random parts off (a random crop becomes the centre crop)."""
        return Compose(tuple(s for s in (step.inference() for step in self.steps) if s is not None))

    def find(self, kind: type[Any]) -> Any:
        """The composition's step of type ``kind`` (e.g. its :class:`Crop`)."""
        for step in self.steps:
            if isinstance(step, kind):
                return step
        raise LookupError(f"no {kind.__name__} step in {self}")
