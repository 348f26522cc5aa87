"""Stored uint8 volumes -> the model's input dict: the recipe's steps composed once
(:func:`recipe_transforms`), for training, evaluation, prediction and explanation alike.

Training applies the composition with its random parts drawn per batch; every other use applies
its inference form (centre crop, scaling, normalisation): :func:`inference_transforms`. So an
input can never take another way to the model than the one it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from oaicohort.vocabulary import XRAY_VIEW

from ..networks.multiview import views_from_volume
from .augment import AugmentParams
from .layout import InputLayout
from .transforms import Compose, Crop, Downscale, Normalise, RandomGamma, RandomRotation, ScaleToUnit, Step


def recipe_transforms(layout: InputLayout, augment: AugmentParams) -> Compose:
    """Crop, [0, 1] scaling, in-slice rotation, gamma, [downscale,] normalisation (REFERENCE.md
    sections 3 and 5; the downscale only for a layout that has one: radiographs stored at 700 px)."""
    steps: list[Step] = [
        Crop(layout.stored_shape, layout.crop_shape, random=augment.random_crop),
        ScaleToUnit(),
        RandomRotation(augment.rotate_p, augment.max_rotation_deg, layout.source_view, layout.spacing_ratio),
        RandomGamma(augment.gamma_p, augment.gamma_low, augment.gamma_high),
    ]
    if layout.downscale > 1:
        steps.append(Downscale(layout.downscale))
    steps.append(Normalise(*layout.normalisation))
    return Compose(tuple(steps))


def inference_transforms(layout: InputLayout) -> Compose:
    """The recipe's composition with its random parts off: centre crop, scaling, normalisation."""
    return recipe_transforms(layout, AugmentParams()).inference()


@dataclass(frozen=True)
class ModelInputs:
    """Normalised crops ``(B, d, h, w)`` -> the model's input dict; differentiable, so attribution
    (``oaimodels.inference.attribution``) feeds the models exactly as training does."""

    layout: InputLayout
    channels_last: bool = False

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        layout = self.layout
        if layout.source_view == XRAY_VIEW:  # one-slice volumes -> (B, 1, h, w) images
            image = x[:, :1]
            return {XRAY_VIEW: image.contiguous(memory_format=torch.channels_last) if self.channels_last else image}
        x = x.unsqueeze(1)  # (B, 1, d, h, w)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if layout.derived_views:
            views = views_from_volume(x)
            return {v: views[v] for v in layout.model_views}
        return {layout.source_view: x}


class BatchPreparer:
    """Uint8 batches of stored volumes -> the model's input dict, on their device: the recipe's
    composition for training (:meth:`train_inputs`) and its inference form (:meth:`eval_inputs`)."""

    def __init__(self, layout: InputLayout, augment: AugmentParams | None = None, *, channels_last: bool = False):
        self.layout = layout
        self.training = recipe_transforms(layout, augment or AugmentParams())
        self.inference = self.training.inference()
        self.to_inputs = ModelInputs(layout, channels_last)

    @property
    def channels_last(self) -> bool:
        return self.to_inputs.channels_last

    def draw(self, batch: int, generator: torch.Generator, bounds: torch.Tensor | None = None) -> tuple[Any, ...]:
        """The random parameters of one batch (one entry per step; CPU tensors, one value per
        volume); random crops inside ``bounds`` (B, 3, 2) when given (``oaimodels.data.crops``)."""
        return self.training.draw(batch, generator, crop_bounds=bounds)

    def apply(self, volumes: torch.Tensor, draws: tuple[Any, ...]) -> dict[str, torch.Tensor]:
        return self.to_inputs(self.training.apply(volumes, draws))

    def train_inputs(
        self, volumes: torch.Tensor, generator: torch.Generator, bounds: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Augmented inputs: random crop (inside ``bounds``), [0, 1] scaling, rotation, gamma,
        normalisation."""
        return self.apply(volumes, self.draw(volumes.shape[0], generator, bounds))

    def eval_inputs(self, volumes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Centre crop, [0, 1] scaling and normalisation, no augmentation."""
        return self.to_inputs(self.inference(volumes))
