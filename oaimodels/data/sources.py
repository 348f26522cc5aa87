"""Batches from the store: a DataLoader over it (``workers``) or every volume resident on the device."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from oaicohort.imaging.store.volume_store import VolumeStore

from .augment import derive_seed
from .layout import DataError
from .rotation import to_device

log = logging.getLogger(__name__)


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


Progress = Callable[[str, float, float | None], None]


class ResidentSource:
    """Volumes held as one uint8 tensor ``(N, D, H, W)`` on its device; batches are index
    selects. Loaded from a store (:meth:`from_store`) or from volumes in memory (:meth:`from_arrays`:
    series that ``oai predict`` preprocessed itself)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        self.device = data.device

    @classmethod
    def from_store(
        cls,
        store: VolumeStore,
        view: str,
        positions: Sequence[int],
        device: torch.device,
        *,
        progress: Progress | None = None,
    ) -> ResidentSource:
        slots = np.asarray(positions, dtype=np.int64)
        shape = store.volume_shape(view)
        try:
            data = torch.empty((slots.size, *shape), dtype=torch.uint8, device=device)
        except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not isinstance(exc, MemoryError) and "memory" not in str(exc).lower():
                raise
            size = slots.size * int(np.prod(shape)) / 1e9
            raise DataError(
                f"{store.path}: not enough memory on {device} to hold {slots.size} {view} volumes ({size:.1f} GB); "
                "use --loader workers (volumes read per batch)"
            ) from None
        # Read in blocks through pinned host memory so a 12 GB store never needs 2x host RAM.
        block = max(1, min(slots.size, 64))
        staging = torch.empty((block, *shape), dtype=torch.uint8)
        if device.type == "cuda":
            staging = staging.pin_memory()
        for start in range(0, slots.size, block):
            stop = min(start + block, slots.size)
            host = staging[: stop - start]
            for j, position in enumerate(slots[start:stop]):
                store.read_into(view, int(position), host[j].numpy())
            data[start:stop].copy_(host, non_blocking=False)
            if progress is not None:
                progress(f"loading {view} volumes", stop, slots.size)
        return cls(data)

    @classmethod
    def from_arrays(cls, volumes: Sequence[np.ndarray], device: torch.device) -> ResidentSource:
        return cls(torch.from_numpy(np.stack(volumes)).to(device))

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
        self, store: VolumeStore, view: str, positions: Sequence[int], device: torch.device, *, workers: int
    ) -> None:
        self.device = device
        # each worker process opens the store itself, by its path
        self.dataset = StoreVolumes(str(store.path), view, positions)
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


LOADERS = ("auto", "resident", "workers")


def choose_loader(loader: str, n_volumes: int, shape: Sequence[int], device: torch.device) -> str:
    """``loader``, with ``auto`` made ``resident`` when the volumes fit the device (:func:`resident_fits`),
    else ``workers``: the one rule training, evaluation and prediction follow."""
    if loader not in LOADERS:
        raise DataError(f"loader must be auto, resident or workers, not {loader!r}")
    if loader != "auto":
        return loader
    return "resident" if resident_fits(n_volumes, shape, device) else "workers"


def make_source(
    loader: str,
    store: VolumeStore,
    view: str,
    positions: Sequence[int],
    device: torch.device,
    *,
    workers: int = 0,
    progress: Progress | None = None,
) -> VolumeSource:
    """A source of the ``view`` volumes at ``positions`` of ``store`` (item i = positions[i]):
    ``resident``, ``workers``, or ``auto`` (:func:`choose_loader`)."""
    mode = choose_loader(loader, len(positions), store.volume_shape(view), device)
    log.info("loader: %s (%d %s volumes of %s)", mode, len(positions), view, store.volume_shape(view))
    if mode == "resident":
        return ResidentSource.from_store(store, view, positions, device, progress=progress)
    return StreamingSource(store, view, positions, device, workers=workers)
