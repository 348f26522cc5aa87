"""The chunked Zarr v3 store of preprocessed volumes: its layout, reading and writing.

Layout (readable with plain ``zarr.open(path)``)::

    store.zarr/
      zarr.json          group attrs: format_version, params, params_hash, store_id (its UUID,
                         ``oaicohort.db.stores``), created_at, toolkit_version
      sag, cor, ax       uint8 (N, D, H, W), chunks (1, D, H, W): one volume per chunk, Zstd
      xray               uint8 (N, 1, 350, 350): knee ROIs of the bilateral PA radiograph
      knee_keys/<view>   int64 (N,): subject_id*10 + 1 (R) / 2 (L); -1 for an unused slot
      visits/<view>      int16 (N,): OAI visit code of the slot; -1 for an unused slot

The database is the source of truth for which slots hold finished volumes: a slot is only
indexed (``volumes`` row, status ok) after its data and keys are completely written. A slot that
holds data but no row (a run killed in between) is an orphan; it is reused by the next run.
The index side (listing and verifying a store against its rows) is ``index``; a description of
what the store holds, ``info``.

Whole-volume reads go straight to the chunk file and the Zstd decoder when the store is a local
directory with the codecs this module writes (``chunks``; several times faster than zarr's
generic path, which is the fallback).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import BytesCodec, ZstdCodec

from oaicohort import __version__
from oaicohort.db.stores import STORE_ID, StoreRef, canonical_path, new_store_id
from oaicohort.errors import OAIError
from oaicohort.files import no_world_write
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.checks import (
    FirstReadVerifier,
    create_atomically,
    create_digest_array,
    grow_digests,
    record_digest,
)
from oaicohort.imaging.store.chunks import ChunkFiles
from oaicohort.imaging.store.metadata import check_metadata
from oaicohort.vocabulary import MRI_VIEWS, SIDES, STORE_VIEWS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# level 1: decodes ~1.5x faster than 3 on noisy MR data for ~10% more disk (benchmarks/store_read.py)
DEFAULT_ZSTD_LEVEL = 1
KEYS_CHUNK = 4096

OpenMode = Literal["r", "r+"]  # read-only, or adding volumes


class StoreError(OAIError):
    """A volume store is missing, malformed, or bound to other preprocessing parameters."""


def knee_key(subject_id: int, side: str) -> int:
    """The int64 key of a knee in the store: ``subject_id*10 + 1`` for R, ``+ 2`` for L."""
    if side not in SIDES:
        raise ValueError(f"knee side must be 'R' or 'L', not {side!r}")
    return int(subject_id) * 10 + (1 if side == "R" else 2)


def split_knee_key(key: int) -> tuple[int, str]:
    """Inverse of :func:`knee_key`."""
    subject_id, code = divmod(int(key), 10)
    if code not in (1, 2):
        raise ValueError(f"{key} is not a knee key")
    return subject_id, "R" if code == 1 else "L"


def volume_checksum(volume: np.ndarray) -> str:
    """sha256 of a volume's bytes (uint8, C order): what the index records and verify checks."""
    return hashlib.sha256(np.ascontiguousarray(volume, dtype=np.uint8).data).hexdigest()


class VolumeStore:
    """A preprocessed-volume store bound to one :class:`PreprocessParams`.

    ``VolumeStore.open(path)`` for reading (picklable: worker processes reopen it lazily),
    ``VolumeStore.create(path, params)`` / ``open_or_create`` for writing.
    """

    def __init__(self, path: Path, group: zarr.Group, *, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self._group: zarr.Group | None = group
        self._load_attrs(group)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mode: OpenMode = "r") -> VolumeStore:
        """Open an existing store (``mode="r"`` read-only, ``"r+"`` to add volumes)."""
        root = canonical_path(path)
        if not root.exists():
            raise StoreError(
                f"{root}: not a volume store: the path does not exist (an unmounted disk, or a store that "
                "moved? give the path where it is now)"
            )
        if not (root / "zarr.json").is_file():
            raise StoreError(
                f"{root}: not a volume store (no zarr.json); make one with `oai preprocess --store {root}`"
            )
        check_metadata(root)  # a damaged zarr.json: one line naming it
        try:
            group = zarr.open_group(root, mode=mode, zarr_format=3)
        except Exception as exc:  # zarr raises several types for a malformed store
            raise StoreError(f"{root}: cannot open as a Zarr v3 group: {exc}") from exc
        if "params_hash" not in group.attrs or "params" not in group.attrs:
            raise StoreError(f"{root}: a Zarr group but not a volume store (no params_hash attribute)")
        return cls(root, group, writable=mode != "r")

    @classmethod
    @no_world_write()
    def create(
        cls,
        path: str | os.PathLike[str],
        params: PreprocessParams,
        *,
        views: Sequence[str] = MRI_VIEWS,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
    ) -> VolumeStore:
        """Create a new, empty store for ``params`` with an array per view."""
        root = canonical_path(path)
        if root.exists() and any(root.iterdir()):
            raise StoreError(f"{root}: already exists and is not empty; choose a new store path")

        def build(folder: Path) -> None:
            group = zarr.open_group(folder, mode="w-", zarr_format=3)
            group.attrs.update(
                {
                    "format_version": FORMAT_VERSION,
                    "params": params.to_dict(),
                    "params_hash": params.hash(),
                    STORE_ID: new_store_id(),
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "toolkit_version": __version__,
                }
            )
            store = cls(folder, group, writable=True)
            for view in views:
                store._create_view(view, zstd_level)

        create_atomically(root, build)  # race-free: a second creator gets ConcurrentWriteError
        return cls.open(root, mode="r+")

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        params: PreprocessParams,
        *,
        views: Sequence[str] = MRI_VIEWS,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
    ) -> VolumeStore:
        """Open ``path`` for writing if it holds a store of exactly ``params``, else create it."""
        root = canonical_path(path)
        if not root.exists() or not any(root.iterdir()):
            return cls.create(root, params, views=views, zstd_level=zstd_level)
        store = cls.open(root, mode="r+")
        if store.params_hash != params.hash():
            held, asked = store.params.to_dict(), params.to_dict()
            differ = ", ".join(f"{k} {held.get(k)!r} here, {v!r} asked" for k, v in asked.items() if held.get(k) != v)
            raise StoreError(
                f"{root}: this store holds volumes preprocessed with other parameters "
                f"(preset {store.params.preset!r}, hash {store.params_hash[:12]}) than requested "
                f"(preset {params.preset!r}, hash {params.hash()[:12]}{'; ' + differ if differ else ''}); "
                "a store is bound to one parameter set, so give a new --store path for the new parameters"
            )
        for view in views:
            if view not in store.views:
                store._create_view(view, zstd_level)
        return store

    @property
    def ref(self) -> StoreRef:
        """The store's identity (its id is None for a store made before identities, until assigned)."""
        value = self.attrs.get(STORE_ID)
        return StoreRef(self.path, str(value) if value else None)

    def assign_id(self, store_id: str) -> None:
        """Give a store made before identities its UUID (``oaicohort.imaging.store.identity``)."""
        self._require_writable()
        if self.attrs.get(STORE_ID) not in (None, store_id):
            raise StoreError(f"{self.path}: the store already has the id {self.attrs[STORE_ID]}")
        self.group.attrs[STORE_ID] = store_id
        self.attrs[STORE_ID] = store_id

    def _load_attrs(self, group: zarr.Group) -> None:
        attrs = dict(group.attrs)
        self.attrs: dict[str, Any] = attrs
        self.params_hash: str = str(attrs.get("params_hash", ""))
        params = attrs.get("params", {})
        try:
            if not isinstance(params, dict):
                raise TypeError(f"a {type(params).__name__}, not a mapping")
            self.params = PreprocessParams.from_dict(dict(params))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: unreadable preprocessing parameters in the store: {exc}") from exc
        if self.params.hash() != self.params_hash:
            raise StoreError(
                f"{self.path}: the params attribute does not match params_hash "
                "(the store's attributes were edited); the store cannot be trusted"
            )
        self._chunks = ChunkFiles(self.path)
        self._arrays: dict[str, zarr.Array] = {}
        self._checker: FirstReadVerifier | None = None

    def _verifier(self) -> FirstReadVerifier:
        if self._checker is None:
            self._checker = FirstReadVerifier(self.group, self.path)
        return self._checker

    @property
    def group(self) -> zarr.Group:
        if self._group is None:  # after unpickling in a worker process
            self._group = zarr.open_group(self.path, mode="r+" if self.writable else "r", zarr_format=3)
        return self._group

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = None
        state["_arrays"] = {}
        state["_checker"] = None
        return state

    def _create_view(self, view: str, zstd_level: int) -> None:
        if view not in STORE_VIEWS:
            raise ValueError(f"unknown view {view!r}; choose from {STORE_VIEWS}")
        shape = self.params.stored_shape(view)
        self.group.create_array(
            view,
            shape=(0, *shape),
            chunks=(1, *shape),
            dtype="uint8",
            serializer=BytesCodec(),
            compressors=ZstdCodec(level=zstd_level),
            fill_value=0,
            dimension_names=("volume", "d", "h", "w"),
            attributes={"crop_shape": list(self.params.crop_shape(view))},
        )
        self.group.create_array(f"knee_keys/{view}", shape=(0,), chunks=(KEYS_CHUNK,), dtype="int64", fill_value=-1)
        self.group.create_array(f"visits/{view}", shape=(0,), chunks=(KEYS_CHUNK,), dtype="int16", fill_value=-1)
        create_digest_array(self.group, view)

    # ------------------------------------------------------------------ reading

    @property
    def views(self) -> tuple[str, ...]:
        present = set(self.group.array_keys())
        return tuple(v for v in STORE_VIEWS if v in present)

    def _array(self, view: str) -> zarr.Array:
        # cached: opening an array reads its metadata from disk; a reader sees the slots that
        # existed when it first touched the view (reopen the store to see later ones)
        array = self._arrays.get(view)
        if array is not None:
            return array
        if view not in STORE_VIEWS:
            raise ValueError(f"unknown view {view!r}; choose from {STORE_VIEWS}")
        try:
            array = self._member(view)
        except KeyError:
            raise StoreError(f"{self.path}: the store holds no {view!r} volumes (views: {list(self.views)})") from None
        self._arrays[view] = array
        return array

    def _member(self, name: str) -> zarr.Array:
        """The array ``name`` of the group (a group in its place is a malformed store)."""
        member = self.group[name]
        if not isinstance(member, zarr.Array):
            raise StoreError(f"{self.path}: {name} is a group, not an array; the store is malformed")
        return member

    def volume_shape(self, view: str) -> tuple[int, int, int]:
        """(D, H, W) of a stored volume of ``view``."""
        _, d, h, w = self._array(view).shape
        return d, h, w

    def crop_shape(self, view: str) -> tuple[int, int, int]:
        """(D, H, W) of the training crop (from the store's parameters)."""
        return self.params.crop_shape(view)

    def capacity(self, view: str) -> int:
        """Number of slots (the first dimension), used or not."""
        return int(self._array(view).shape[0])

    def knee_keys(self, view: str) -> np.ndarray:
        return np.asarray(self._member(f"knee_keys/{view}")[:])

    def visits(self, view: str) -> np.ndarray:
        return np.asarray(self._member(f"visits/{view}")[:])

    def _fast_path(self, view: str) -> bool:
        """Whether ``view`` is read straight from its chunk files (``store_chunks``)."""
        return self._chunks.direct(view, self._array(view))

    def _check_position(self, view: str, position: int) -> None:
        n = self.capacity(view)
        if not 0 <= position < n:
            raise IndexError(f"{view} position {position} out of range (store has {n} slots)")

    def read_into(self, view: str, position: int, out: np.ndarray) -> np.ndarray:
        """Read one volume into ``out`` (uint8, the volume shape); returns ``out``."""
        position = int(position)
        if self._fast_path(view):
            if not self._chunks.read_into(view, position, out):
                self._check_position(view, position)
                if (missing := self._verifier().missing_chunk(view, position)) is not None:
                    raise missing  # written once: never read as zeros
                out.fill(0)  # never-written slot: zarr's fill value
                return out
        else:
            self._check_position(view, position)
            out[...] = self._array(view)[position]
        self._verifier().check(view, position, out)  # the first read of each slot is checked
        return out

    def read(self, view: str, position: int) -> np.ndarray:
        """One stored volume, (D, H, W) uint8."""
        out = np.empty(self.volume_shape(view), dtype=np.uint8)
        return self.read_into(view, position, out)

    def read_many(self, view: str, positions: Sequence[int]) -> np.ndarray:
        """Several volumes stacked, (len(positions), D, H, W) uint8."""
        out = np.empty((len(positions), *self.volume_shape(view)), dtype=np.uint8)
        for i, position in enumerate(positions):
            self.read_into(view, position, out[i])
        return out

    def read_all(self, view: str) -> np.ndarray:
        """Every slot of ``view`` (N, D, H, W) in memory, for resident training."""
        return self.read_many(view, range(self.capacity(view)))

    # ------------------------------------------------------------------ writing

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only")

    def reload(self, view: str) -> None:
        """Forget the cached shape of ``view``: the next access re-reads it (another writer of the
        store may have grown the array)."""
        self._arrays.pop(view, None)

    def grow(self, view: str, capacity: int) -> None:
        """Make room for ``capacity`` slots (new slots are empty, keys -1); never shrinks. The shape
        is re-read first, so growing never undoes another writer's growth (shards grow under the
        database's write lock: ``runs.slots``)."""
        self._require_writable()
        if capacity <= self.capacity(view):
            return
        self.reload(view)
        arr = self._array(view)
        if capacity <= arr.shape[0]:
            return
        arr.resize((capacity, *arr.shape[1:]))
        self._member(f"knee_keys/{view}").resize((capacity,))
        self._member(f"visits/{view}").resize((capacity,))
        grow_digests(self.group, view, capacity)

    def write(self, view: str, position: int, volume: np.ndarray, *, key: int, visit: int) -> str:
        """Write one volume and its keys into slot ``position``; returns its checksum.

        Volume data first, keys after: a slot whose key is set holds complete data.
        """
        checksum = self.write_data(view, position, volume)
        self.write_keys(view, position, checksum, key=key, visit=visit)
        return checksum

    def write_data(self, view: str, position: int, volume: np.ndarray) -> str:
        """The first half of :meth:`write`: the volume's own chunk (no other slot shares it, so
        shards write it concurrently); returns its checksum."""
        self._require_writable()
        shape = self.volume_shape(view)
        if volume.shape != shape or volume.dtype != np.uint8:
            raise ValueError(f"{view} volume must be uint8 {shape}, got {volume.dtype} {volume.shape}")
        self.grow(view, position + 1)
        self._array(view)[position] = volume
        return volume_checksum(volume)

    def write_keys(self, view: str, position: int, checksum: str, *, key: int, visit: int) -> None:
        """The second half of :meth:`write`: the slot's digest and keys. Their chunks hold many
        slots (a read-modify-write), so concurrent writers of a store call this under one lock."""
        self._require_writable()
        record_digest(self.group, view, position, checksum)
        self._member(f"knee_keys/{view}")[position] = key
        self._member(f"visits/{view}")[position] = visit
        if self._checker is not None:
            self._checker = None  # digests and keys changed: re-read them when next verifying

    def release(self, view: str, position: int) -> None:
        """Mark a slot unused (keys -1); its data is left to be overwritten."""
        self._require_writable()
        self._member(f"knee_keys/{view}")[position] = -1
        self._member(f"visits/{view}")[position] = -1
