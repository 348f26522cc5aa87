"""Training and evaluation data: knees + labels + split over the volume store, and the batched
augmentations of the paper's recipe, run as torch ops on the model's device.

Pipeline of one batch (REFERENCE.md sections 3 and 5)::

    uint8 stored volumes (B, D, H, W)          from a DataLoader over the store, or resident
      -> crop (B, d, h, w)                     random offsets in training, centre in evaluation
      -> float, each volume scaled to [0, 1]   (x - min) / (max - min), per volume
      -> in-slice rotation                     p=0.5, one angle in [-15, 15] deg per volume
      -> gamma x ** (1 / g)                    p=0.5, g ~ U(0.5, 2), per volume
      -> (x - 0.257) / 0.235
      -> model input dict                      {view: (B, 1, d, h, w)}

The store keeps volumes already downsampled x2 (``oaicohort.imaging.preprocessing``), so a crop at any
offset of a stored volume is the reference's crop at even full-resolution offsets followed by
its trilinear x0.5 downsample. Multi-view models get sagittal, coronal and axial stacks sliced
from the same cropped sagittal volume (as the reference does, ``views_from_volume``); single-view
coronal/axial models read the stored coronal/axial arrays.

Random draws (crop offsets, angles, gammas) come from a CPU generator that the training loop
seeds per (seed, fold, epoch, rank), so a run is reproducible on any device and a resumed run
draws exactly what an uninterrupted one would.

Two ways to feed batches (:func:`make_source`):

* ``workers``: a ``DataLoader`` over :class:`StoreVolumes`; each worker process opens the store
  itself (the store handle is dropped when pickled), uint8 batches are pinned and copied
  asynchronously to the device;
* ``resident``: every needed volume held as one uint8 tensor on the device (GPU or CPU memory),
  batches are an ``index_select`` away, so the accelerator never waits for I/O. The paper-size
  store (~4,900 sagittal volumes of 80x176x176) is ~12 GB.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from oaicohort.cohort.splits import LeakageError as LeakageError  # the one leakage check, re-exported
from oaicohort.cohort.splits import check_leakage
from oaicohort.errors import DatabaseStateError, OAIError
from oaicohort.imaging.store import StoreError, VolumeStore
from oaicohort.vocabulary import DEFAULT_DEFINITION, STORE_VIEWS, XRAY_VIEW

from .metrics import class_indices
from .networks import get_spec
from .networks.multiview import view_shapes_from_volume, views_from_volume

log = logging.getLogger(__name__)

NORM_MEAN = 0.257
NORM_STD = 0.235
"""Intensity normalisation of the reference (after per-volume scaling to [0, 1])."""

Shape3 = tuple[int, int, int]


class DataError(OAIError):
    """The store, the labels or the split cannot feed the requested training."""


# --------------------------------------------------------------------------- seeds


def derive_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (e.g. seed, fold, epoch, rank), stable across runs."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)
    return int(state[0] & np.uint64(2**63 - 1))


def cpu_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


# --------------------------------------------------------------------------- model input layout


@dataclass(frozen=True)
class InputLayout:
    """Which stored array a model reads, the crop taken from it, and the views it is given.

    ``model_views`` are the keys of the model's input dict; when there are several, they are
    all sliced from the cropped ``source_view`` (sagittal) volume.
    """

    model: str
    source_view: str
    stored_shape: Shape3
    crop_shape: Shape3
    model_views: tuple[str, ...]
    spacing_ratio: float = 1.0  # stored D spacing / H spacing (cor/ax: through-plane / in-plane block)

    @property
    def derived_views(self) -> bool:
        return len(self.model_views) > 1

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample ``(1, D, H, W)`` shape of every view of the model input (builder kwarg)."""
        shape = (1, *self.crop_shape)
        if self.source_view == XRAY_VIEW:  # a one-slice volume is given as a (1, H, W) image
            return {XRAY_VIEW: (1, *self.crop_shape[1:])}
        if self.derived_views:
            derived = view_shapes_from_volume(shape)
            return {v: tuple(derived[v]) for v in self.model_views}
        return {self.source_view: shape}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source_view": self.source_view,
            "stored_shape": list(self.stored_shape),
            "crop_shape": list(self.crop_shape),
            "model_views": list(self.model_views),
            "spacing_ratio": self.spacing_ratio,
            "input_shapes": {k: list(v) for k, v in self.input_shapes().items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputLayout:
        """The layout saved by :meth:`to_dict` (config.json, checkpoint metadata)."""
        return cls(
            data["model"],
            data["source_view"],
            tuple(data["stored_shape"]),  # type: ignore[arg-type]
            tuple(data["crop_shape"]),
            tuple(data["model_views"]),  # type: ignore[arg-type]
            float(data.get("spacing_ratio", 1.0)),
        )


class StoreShapes(Protocol):
    def volume_shape(self, view: str) -> Shape3: ...

    def crop_shape(self, view: str) -> Shape3: ...


def model_views(model: str, view: str | None) -> tuple[str, ...]:
    """The views model ``model`` reads when built for ``view`` (None: its default)."""
    spec = get_spec(model)
    if view is None:
        return tuple(spec.views)
    if spec.view_choices:
        if view not in spec.view_choices:
            raise DataError(f"{model} reads one of {list(spec.view_choices)}, not {view!r}")
        return (view,)
    if view not in spec.views or (len(spec.views) > 1 and view != spec.views[0]):
        raise DataError(f"{model} reads {list(spec.views)}; --view {view!r} does not apply to it")
    return tuple(spec.views)


def resolve_layout(
    model: str,
    view: str | None,
    store: StoreShapes,
    crop_shape: Sequence[int] | None = None,
) -> InputLayout:
    """The input layout of ``model`` over ``store``.

    Crop: ``crop_shape`` if given, else the model's paper shape when the stored volume is large
    enough for it, else the store's own training crop (reduced-size stores, e.g. the ``small``
    preprocessing preset of the demo). The model is then built for that crop.
    """
    spec = get_spec(model)
    views = model_views(model, view)
    if any(v not in STORE_VIEWS for v in views):
        raise DataError(f"{model} reads views {list(views)}, which no volume store holds")
    source = "sag" if len(views) > 1 else views[0]
    try:
        stored = tuple(int(n) for n in store.volume_shape(source))
    except (KeyError, StoreError):
        how = "--view xray" if source == XRAY_VIEW else f"--view {source}"
        raise DataError(
            f"{model} reads {source!r}, which the store does not hold; run `oai preprocess {how}`"
        ) from None
    if crop_shape is not None:
        crop = tuple(int(n) for n in crop_shape)
    else:
        # the radiograph ROI is stored as a one-slice volume (1, H, W)
        paper = tuple(int(n) for n in spec.input_shapes[source][1:])
        paper = (1, *paper) if source == XRAY_VIEW else paper
        fits = all(c <= s for c, s in zip(paper, stored))
        crop = paper if fits else tuple(int(n) for n in store.crop_shape(source))
    if len(crop) != 3 or any(c < 1 or c > s for c, s in zip(crop, stored)):
        raise DataError(f"crop {crop} does not fit the stored {source} volumes {stored} (need 1 <= crop <= stored)")
    return InputLayout(model, source, stored, crop, views, _spacing_ratio(store, source))  # type: ignore[arg-type]


def _spacing_ratio(store: StoreShapes, view: str) -> float:
    """Stored D spacing over H spacing of ``view`` (cor/ax: through-plane block / in-plane block)."""
    params = getattr(store, "params", None)
    if view not in ("cor", "ax") or params is None:
        return 1.0
    through, inplane, _lr = params.reprojection_blocks
    return through / inplane


# --------------------------------------------------------------------------- augmentation


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
) -> AugmentDraw:
    """Draw crop offsets, rotation angles and gammas for ``batch`` volumes.

    Every parameter is drawn for every volume whether or not it is applied, so the stream of
    random numbers does not depend on earlier outcomes.
    """
    if params.random_crop:
        high = torch.tensor([s - c + 1 for s, c in zip(stored, crop)], dtype=torch.float64)
        u = torch.rand(batch, 3, generator=generator, dtype=torch.float64)
        offsets = (u * high).floor().long().clamp_max(high.long() - 1)
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


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (indices, per-volume parameters) on ``device``, without a stall.

    A blocking host-to-GPU copy waits for all work queued on the stream (and a non-blocking one
    from pageable memory may too), so a few of them per batch would keep the training loop from
    running ahead of the GPU. A pinned copy is queued like a kernel; the caching host allocator
    keeps its pinned block alive until the copy has run.
    """
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def rotation_grid(angles_deg: torch.Tensor, height: int, width: int, extent_ratio: float | None = None) -> torch.Tensor:
    """``affine_grid`` sampling grid that rotates (h, w) images by ``angles_deg`` about their centre.

    The rotation is built in physical units and converted to the normalised coordinates
    ``affine_grid`` uses, so non-square slices (coronal/axial 160x128) rotate rigidly instead of
    being sheared. ``extent_ratio`` is the image's physical height / width (default
    ``height / width``: square pixels).
    """
    ratio = height / width if extent_ratio is None else extent_ratio
    theta_rad = torch.deg2rad(angles_deg.float())
    c, s = torch.cos(theta_rad), torch.sin(theta_rad)
    zero = torch.zeros_like(c)
    theta = torch.stack(
        [
            torch.stack([c, -s * ratio, zero], dim=1),
            torch.stack([s / ratio, c, zero], dim=1),
        ],
        dim=1,
    )
    n = angles_deg.shape[0]
    return F.affine_grid(theta, [n, 1, height, width], align_corners=False)


def rotate_in_slice(x: torch.Tensor, angles_deg: torch.Tensor, extent_ratio: float | None = None) -> torch.Tensor:
    """Rotate every slice of each ``(B, D, H, W)`` volume by that volume's angle (bilinear, zero fill).

    The slices of a volume are the channels of one ``grid_sample`` call, so all of them share
    exactly one grid: the same angle for the whole volume, in one kernel for the whole batch.
    """
    _b, _d, h, w = x.shape
    grid = rotation_grid(to_device(angles_deg, x.device), h, w, extent_ratio).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x ** (1 / gamma)`` per volume (x in [0, 1])."""
    exponent = (1.0 / to_device(gamma, x.device).to(x.dtype)).view(-1, *([1] * (x.dim() - 1)))
    return x.clamp_min(0).pow(exponent)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - NORM_MEAN) / NORM_STD


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

    def draw(self, batch: int, generator: torch.Generator) -> AugmentDraw:
        return draw_augment(batch, self.layout.stored_shape, self.layout.crop_shape, self.augment, generator)

    def train_inputs(self, volumes: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Augmented inputs: random crop, [0, 1] scaling, rotation, gamma, normalisation."""
        return self.apply(volumes, self.draw(volumes.shape[0], generator))

    def apply(self, volumes: torch.Tensor, draw: AugmentDraw) -> dict[str, torch.Tensor]:
        self._check(volumes)
        x = crop_volumes(volumes, draw.offsets, self.layout.crop_shape).float()
        x = scale_to_unit(x)
        if bool(draw.rotate.any()):
            idx = torch.nonzero(draw.rotate).flatten()
            idx_dev = to_device(idx, x.device)
            # always in the sagittal plane, as the reference rotates before reslicing
            from .sagittal_rotation import rotate_sagittal  # it builds on rotate_in_slice here

            rotated = rotate_sagittal(
                x[idx_dev], draw.angles_deg[idx], self.layout.source_view, self.layout.spacing_ratio
            )
            x = x.index_copy(0, idx_dev, rotated)
        if bool(draw.apply_gamma.any()):
            x = apply_gamma(x, draw.gamma)
        return self._to_inputs(normalise(x))

    def eval_inputs(self, volumes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Centre crop, [0, 1] scaling and normalisation, no augmentation."""
        self._check(volumes)
        offsets = torch.tensor(centre_offsets(self.layout.stored_shape, self.layout.crop_shape))
        x = crop_volumes(volumes, offsets.expand(volumes.shape[0], 3), self.layout.crop_shape)
        return self._to_inputs(normalise(scale_to_unit(x.float())))

    def _check(self, volumes: torch.Tensor) -> None:
        if volumes.dim() != 4 or tuple(volumes.shape[1:]) != self.layout.stored_shape:
            raise ValueError(
                f"expected stored volumes (B, {', '.join(map(str, self.layout.stored_shape))}), "
                f"got {tuple(volumes.shape)}"
            )

    def _to_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
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


# --------------------------------------------------------------------------- sampling


class WeightedEpochSampler:
    """Weighted random sampling with replacement, weights 1/class frequency, epoch = n draws.

    Draws of epoch ``e`` come from their own stream seeded by ``(seed, e)``, so an epoch is
    reproducible on its own (exact resume) and independent of how many processes train. With
    ``world_size > 1`` every rank takes an equal, disjoint share (the epoch is padded by wrapping
    to a multiple of ``world_size``).
    """

    def __init__(self, classes: np.ndarray, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        classes = np.asarray(classes, dtype=np.int64)
        if classes.size == 0:
            raise DataError("no training knees to sample from")
        counts = np.bincount(classes)
        self.class_counts = counts
        self.weights = 1.0 / counts[classes]
        self.n = classes.size
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """All ``n`` draws of ``epoch`` (before sharding)."""
        rng = np.random.default_rng(derive_seed(self.seed, epoch, 0x5A3))
        return rng.choice(self.n, size=self.n, replace=True, p=self.weights / self.weights.sum())

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's draws of ``epoch``."""
        draws = self.epoch_indices(epoch)
        if self.world_size == 1:
            return draws
        total = math.ceil(self.n / self.world_size) * self.world_size
        draws = np.resize(draws, total)  # wraps around
        return draws[self.rank :: self.world_size]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "n": self.n, "class_counts": self.class_counts.tolist()}


def batches_of(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches; a trailing batch of one is merged into the previous one
    (BatchNorm cannot train on a single sample)."""
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()
        chunks[-1] = np.concatenate([chunks[-1], last])
    return chunks


# --------------------------------------------------------------------------- volume sources


class StoreVolumes(Dataset):
    """Stored uint8 volumes of one view at given store positions (item ``i`` -> ``positions[i]``).

    Worker-safe: the store handle is opened lazily in whichever process reads, never inherited.
    """

    def __init__(self, store_path: str, view: str, positions: Sequence[int]) -> None:
        self.store_path = str(store_path)
        self.view = view
        self.positions = np.asarray(positions, dtype=np.int64)
        self._store: VolumeStore | None = None

    def __len__(self) -> int:
        return int(self.positions.size)

    def store(self) -> VolumeStore:
        if self._store is None:
            self._store = VolumeStore.open(self.store_path)
        return self._store

    def __getitem__(self, i: int) -> np.ndarray:
        return self.store().read(self.view, int(self.positions[i]))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state


class _EpochBatches:
    """A batch sampler whose batches are replaced every epoch (keeps persistent workers usable)."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b.tolist() for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def _stack_uint8(items: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items))


class VolumeSource(Protocol):
    """Yields uint8 ``(B, D, H, W)`` tensors on the device for batches of item indices."""

    device: torch.device

    def iterate(self, batches: Sequence[np.ndarray]) -> Iterator[torch.Tensor]: ...

    def close(self) -> None: ...


class ResidentSource:
    """Every needed volume held as one uint8 tensor on ``device``; batches are index selects."""

    def __init__(
        self,
        store_path: str,
        view: str,
        positions: Sequence[int],
        device: torch.device,
        *,
        progress: Callable[[str, float, float | None], None] | None = None,
    ) -> None:
        self.device = device
        store = VolumeStore.open(store_path)
        positions = np.asarray(positions, dtype=np.int64)
        shape = store.volume_shape(view)
        self.data = torch.empty((positions.size, *shape), dtype=torch.uint8, device=device)
        # Read in blocks through pinned host memory so a 12 GB store never needs 2x host RAM.
        block = max(1, min(positions.size, 64))
        staging = torch.empty((block, *shape), dtype=torch.uint8)
        if device.type == "cuda":
            staging = staging.pin_memory()
        for start in range(0, positions.size, block):
            stop = min(start + block, positions.size)
            host = staging[: stop - start]
            for j, position in enumerate(positions[start:stop]):
                store.read_into(view, int(position), host[j].numpy())
            self.data[start:stop].copy_(host, non_blocking=False)
            if progress is not None:
                progress(f"loading {view} volumes", stop, positions.size)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def iterate(self, batches: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        for batch in batches:
            yield self.data.index_select(0, to_device(torch.as_tensor(batch), self.device))

    def close(self) -> None:
        self.data = torch.empty(0, dtype=torch.uint8)


class StreamingSource:
    """A DataLoader over :class:`StoreVolumes` (``workers`` processes), copied to ``device``."""

    def __init__(
        self, store_path: str, view: str, positions: Sequence[int], device: torch.device, *, workers: int
    ) -> None:
        self.device = device
        self.dataset = StoreVolumes(store_path, view, positions)
        self._batches = _EpochBatches()
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self._batches,
            num_workers=workers,
            collate_fn=_stack_uint8,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # Own generator: the loader must not draw from the global RNG (exact resume).
            generator=torch.Generator().manual_seed(0),
        )

    def iterate(self, batches: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        self._batches.batches = list(batches)
        for volumes in self.loader:
            yield volumes.to(self.device, non_blocking=True)

    def close(self) -> None:
        # Ends persistent worker processes now rather than at garbage collection.
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def resident_fits(n_volumes: int, shape: Sequence[int], device: torch.device) -> bool:
    """Whether holding ``n_volumes`` uint8 volumes on ``device`` leaves ample room for training."""
    nbytes = n_volumes * int(np.prod(shape))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return nbytes < 0.5 * free
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return nbytes < 2 * 1024**3
    return nbytes < 0.4 * available


def make_source(
    mode: str,
    store_path: str,
    view: str,
    positions: Sequence[int],
    device: torch.device,
    *,
    workers: int = 0,
    progress: Callable[[str, float, float | None], None] | None = None,
) -> VolumeSource:
    """``resident`` or ``workers`` source of the given store positions (item i = positions[i])."""
    if mode == "resident":
        return ResidentSource(store_path, view, positions, device, progress=progress)
    if mode == "workers":
        return StreamingSource(store_path, view, positions, device, workers=workers)
    raise ValueError(f"loader must be 'resident' or 'workers', not {mode!r}")


# --------------------------------------------------------------------------- knees, labels, split


KNEE_COLUMNS = ("knee_id", "subject_id", "side", "label", "role", "fold", "position")


def validate_knees(knees: pd.DataFrame) -> pd.DataFrame:
    """Check a knee table (columns :data:`KNEE_COLUMNS`) and add the class index column ``y``."""
    missing = [c for c in KNEE_COLUMNS if c not in knees.columns]
    if missing:
        raise DataError(f"knee table lacks column(s) {missing}")
    out = knees.reset_index(drop=True).copy()
    try:
        out["y"] = class_indices(out["label"].astype(str).to_numpy())
    except ValueError as exc:
        raise DataError(f"knee table: {exc}") from None
    bad_role = sorted(set(out["role"]) - {"train", "test"})
    if bad_role:
        raise DataError(f"knee table: unknown role(s) {bad_role}; expected 'train' or 'test'")
    if out.loc[out["role"] == "train", "fold"].isna().any():
        raise DataError("knee table: a training knee has no fold")
    out["position"] = out["position"].astype(np.int64)
    check_leakage(out)
    return out


def knee_table(
    db: Any,
    store_path: str,
    view: str,
    *,
    definition: str = DEFAULT_DEFINITION,
    split: int | None = None,
    visit: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Labelled, split knees with their store position for ``view``, and what was left out.

    ``oaicohort.cohort.query.Cohort(db).knees(..., store=store_path, view=view)``: included, split
    knees with a good volume at ``visit``; knees without one are counted in the returned info.
    """
    from oaicohort.cohort.query import Cohort  # imported here: only this entry point needs the database
    from oaicohort.db.staleness import check_frame_not_stale

    cohort = Cohort(db)
    split_arg = "latest" if split is None else split
    labelled = cohort.knees(definition=definition, split=split_arg)
    check_frame_not_stale(db, labelled)
    if labelled.empty:
        raise DatabaseStateError(
            f"no labelled knees for definition {definition!r}; run `oai label` and `oai split` first"
        )
    if labelled.attrs.get("split_id") is None:
        raise DatabaseStateError(f"no split for definition {definition!r}; run `oai split` first")
    merged = cohort.knees(definition=definition, split=split_arg, role=["train", "test"], store=store_path,
                          view=view, volume_visit=visit)  # fmt: skip
    info = {k: merged.attrs["volumes"][k] for k in ("labelled_knees", "knees_without_volume")}
    columns = [c for c in (*KNEE_COLUMNS, "site") if c in merged.columns]
    table = validate_knees(merged[columns])
    table.attrs.update({k: v for k, v in merged.attrs.items() if k != "volumes"})  # definition, split
    return table, info
