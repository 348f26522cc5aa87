"""Whole-volume reads straight from a store's chunk files: the fast path of ``VolumeStore.read``.

zarr's generic read path costs several times the decoding itself for one-chunk volumes. Where
the store is a local directory with the layout and codecs ``store`` writes (one chunk per volume,
bytes + Zstd, the default ``/`` chunk key encoding), a volume's chunk file is decoded directly into
the caller's buffer; any other store is read through zarr (``VolumeStore.read_into``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BytesCodec, ZstdCodec


class ChunkFiles:
    """The chunk files of a local store, with the decoder of the codecs ``store`` writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.usable: dict[str, bool] = {}  # per view: whether its chunk files can be decoded directly
        self._zstd = numcodecs.Zstd()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_zstd"] = None  # a fresh decoder per process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._zstd = numcodecs.Zstd()

    def direct(self, view: str, array: zarr.Array) -> bool:
        """Whether ``view`` (its zarr array ``array``) can be read from its chunk files directly."""
        if view not in self.usable:
            meta = array.metadata
            # v2 metadata (a store not written here) has neither codecs nor a chunk key encoding
            codecs: Sequence[object] = getattr(meta, "codecs", ())
            key_encoding = getattr(meta, "chunk_key_encoding", None)
            ok = (
                len(codecs) == 2
                and isinstance(codecs[0], BytesCodec)
                and isinstance(codecs[1], ZstdCodec)
                and tuple(array.chunks) == (1, *array.shape[1:])
                and getattr(key_encoding, "separator", None) == "/"
                and getattr(key_encoding, "name", None) == "default"
                and (self.path / view / "zarr.json").is_file()
            )
            self.usable[view] = bool(ok)
        return self.usable[view]

    def chunk_file(self, view: str, position: int) -> Path:
        return self.path / view / "c" / str(position) / "0" / "0" / "0"

    def read_into(self, view: str, position: int, out: np.ndarray) -> bool:
        """Decode slot ``position`` of ``view`` into ``out``; False when it has no chunk file."""
        try:
            data = self.chunk_file(view, position).read_bytes()
        except FileNotFoundError:
            return False
        self._zstd.decode(data, out=out)
        return True
