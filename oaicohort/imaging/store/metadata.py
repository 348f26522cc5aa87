"""A store's Zarr metadata checked when it is opened, so that a damaged ``zarr.json`` is one line
naming that file (zarr itself raised ``ContainsArrayError``, ``MetadataValidationError``,
``KeyError`` or a bare ``ValueError``, or warned with its own source path, naming no file).

Every node of the layout (``volume_store``'s docstring) that is on disk is checked: its
``zarr.json`` exists, is a JSON object of Zarr format 3 and says the node is what the layout
has there (a group, or an array of the right number of dimensions), and zarr can read an
array's metadata. Nothing but these few small files is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from oaicohort.errors import OAIError
from oaicohort.imaging.store.checks import DIGESTS
from oaicohort.vocabulary import STORE_VIEWS

# per-view arrays kept in groups of their own, beside the volumes: (group, dimensions)
SLOT_GROUPS = {"knee_keys": 1, "visits": 1, DIGESTS: 2}
VOLUME_DIMENSIONS = 4


class StoreMetadataError(OAIError):
    """A ``zarr.json`` of a volume store is missing or damaged."""


def _nodes(root: Path) -> Iterator[tuple[Path, str, int]]:
    """(folder, node type, dimensions) of each layout node on disk."""
    yield root, "group", 0
    for view in STORE_VIEWS:
        if (root / view).is_dir():
            yield root / view, "array", VOLUME_DIMENSIONS
    for group, ndim in SLOT_GROUPS.items():
        if (root / group).is_dir():
            yield root / group, "group", 0
            for view in STORE_VIEWS:
                if (root / group / view).is_dir():
                    yield root / group / view, "array", ndim


def _damaged(meta: Path, why: str) -> StoreMetadataError:
    return StoreMetadataError(
        f"{meta}: {why}; the store's metadata is damaged: restore the store from a backup, or make it "
        "again with `oai preprocess` into a new --store"
    )


def check_metadata(root: Path) -> None:
    """Raise :class:`StoreMetadataError` naming the first missing or damaged ``zarr.json``."""
    import zarr

    slots: dict[str, int] = {}  # slots of each view's volumes array
    for folder, kind, ndim in _nodes(root):
        meta = folder / "zarr.json"
        if not meta.is_file():
            raise _damaged(meta, "missing")
        try:
            doc = json.loads(meta.read_bytes())
        except (OSError, ValueError) as exc:
            raise _damaged(meta, f"unreadable ({exc})") from None
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            raise _damaged(meta, "not Zarr v3 metadata (no zarr_format 3)")
        if doc.get("node_type") != kind:
            raise _damaged(
                meta,
                f"node_type {doc.get('node_type')!r} where the store has {'an array' if kind == 'array' else 'a group'}",
            )
        if kind != "array":
            continue
        shape = doc.get("shape")
        if not isinstance(shape, list) or len(shape) != ndim:
            raise _damaged(meta, f"shape {shape!r} where the store has a {ndim}-d array")
        try:
            zarr.open_array(folder, mode="r", zarr_format=3)
        except Exception as exc:  # zarr raises many types for metadata it cannot read
            raise _damaged(meta, f"not valid array metadata ({type(exc).__name__}: {exc})") from None
        view = folder.name
        if folder.parent == root:
            slots[view] = shape[0]
        elif view in slots and shape[0] != slots[view]:  # a slot's key, visit and digest for each volume
            raise _damaged(meta, f"{shape[0]} slots where {view}/zarr.json has {slots[view]}")


__all__ = ["StoreMetadataError", "check_metadata"]
