"""Synthetic knees whose progression signal is planted where the latent factor changes the image.

``oaicohort.synth.images`` draws a knee's anatomy from a generator and its osteoarthritis
features from the latent progression factor (``synth_truth.csv``): cartilage thickness and joint
space (medial more than lateral), patellar cartilage, effusion (the suprapatellar pouch),
marrow lesions and osteophytes (``knee_anatomy``). For one knee (one generator state) the
*planted region* is every voxel whose noise-free image changes when only the latent changes:
``|render(z1) - render(z2)| > threshold`` for the knee's own latent and the ends of the latent
range. Knees and regions go through the store's own geometry (flip of right knees, margin,
region fit, 2x2x2 block means), so the region is known in the model's frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from oaicohort.imaging.recipe.mri import fit_region, orient_left, preprocess_mri, views_of_region
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaicohort.synth.mri_anatomy import knee_anatomy, render_anatomy
from oaicohort.synth.raster import IMAGE_SIZES
from oaimodels.networks.slice_transformer import SliceTransformer
from tests.helpers.training import register_test_model

PLANTED_MODEL = "toy2d_trf"
LATENT_RANGE = (-3.0, 3.0)
THRESHOLD = 30.0  # 12-bit intensity; tissue contrasts are hundreds


def _render(seed: int, latent: float, side: str, noise: bool) -> np.ndarray:
    knee_rng, noise_rng = np.random.default_rng(seed).spawn(2)
    anatomy = knee_anatomy(latent, knee_rng)
    if not noise:
        anatomy = dataclasses.replace(anatomy, noise_sigma=0.0)
    return render_anatomy(anatomy, side, noise_rng, "small")


def planted_region(seed: int, latent: float, side: str) -> np.ndarray:
    """Boolean (slices, rows, cols) mask of the voxels the latent changes, in the series frame."""
    renders = [_render(seed, z, side, noise=False).astype(np.float32) for z in (latent, *LATENT_RANGE)]
    mask = np.zeros(renders[0].shape, dtype=bool)
    for i in range(len(renders)):
        for j in range(i + 1, len(renders)):
            mask |= np.abs(renders[i] - renders[j]) > THRESHOLD
    return mask


def stored_region(mask: np.ndarray, side: str, params: PreprocessParams) -> np.ndarray:
    """The mask in the stored sagittal frame: a stored voxel is in it when any of its block is."""
    oriented = orient_left(mask.astype(np.uint8) * 255, side, params)
    region, _ = fit_region(np.ascontiguousarray(oriented), params)
    return views_of_region(region, params, ("sag",))["sag"] > 0


class _Series:
    def __init__(self, pixels: np.ndarray, side: str) -> None:
        self.pixels, self.side = pixels, side
        self.spacing_mm = IMAGE_SIZES["small"].spacing_mm


def make_planted_cohort(
    root: Path, *, n_subjects: int, folds: int = 2, n_test: int = 6, seed: int = 0
) -> tuple[Path, pd.DataFrame, dict[int, np.ndarray]]:
    """A small-preset store of synthetic knees, labels from the latent, and the test knees' regions.

    Latents are bimodal (progressors U(1, 3), others U(-3, -1)) so a tiny model learns them in a
    few epochs. Returns the store, the knee table (train_run's) and ``{position: stored region}``
    for the test knees.
    """
    params = PreprocessParams.small()
    rng = np.random.default_rng(seed)
    store = VolumeStore.create(root / "planted.zarr", params, views=("sag",))
    rows, regions = [], {}
    for s in range(n_subjects):
        subject_id = 9500000 + s
        role = "test" if s < n_test else "train"
        for side in ("R", "L"):
            position = len(rows)
            progressor = (s + (side == "L")) % 2 == 0
            latent = float(rng.uniform(1.0, 3.0) if progressor else rng.uniform(-3.0, -1.0))
            knee_seed = 1000 * seed + position
            pixels = _render(knee_seed, latent, side, noise=True)
            volume = preprocess_mri(_Series(pixels, side), params, ("sag",)).volumes["sag"]
            store.write("sag", position, volume, key=knee_key(subject_id, side), visit=0)
            if role == "test":
                regions[position] = stored_region(planted_region(knee_seed, latent, side), side, params)
            rows.append(
                dict(
                    knee_id=position + 1, subject_id=subject_id, side=side,
                    label="fast" if progressor else "none", role=role,
                    fold=None if role == "test" else (s - n_test) % folds, position=position,
                )
            )  # fmt: skip
    knees = pd.DataFrame(rows)
    knees["fold"] = knees["fold"].astype("Int64")
    return store.path, knees, regions


class TinySliceEncoder(nn.Module):
    """Two strided 2D convs per slice, max-pooled: (B, 1, D, H, W) -> (B, D, width)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = stack.shape
        return self.net(stack.transpose(1, 2).reshape(b * d, 1, h, w)).view(b, d, -1)


class TinySliceTransformer(nn.Module):
    """The 2D + TRF design at toy size: slice encoder, then the toolkit's SliceTransformer."""

    def __init__(self, n_slices: int) -> None:
        super().__init__()
        self.encoder = TinySliceEncoder()
        self.aggregator = SliceTransformer(
            n_slices, in_features=16, dim=32, depth=2, heads=2, head_dim=16, mlp_dim=64, dropout=0.0, emb_dropout=0.0
        )

    def forward(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.aggregator(self.encoder(x["sag"]))


def _build(*, input_shapes: Mapping[str, Sequence[int]] | None = None, init: str = "scratch") -> nn.Module:
    shape = (input_shapes or {"sag": (1, 16, 40, 40)})["sag"]
    return TinySliceTransformer(int(shape[1]))


def register_planted_model() -> None:
    register_test_model(PLANTED_MODEL, "tiny 2D + transformer for tests", (1, 16, 40, 40), _build)
