"""``oai store info``: what a volume store holds, read from the store alone (no database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.imaging.store.volume_store import VolumeStore


def disk_bytes(root: Path) -> int:
    """Bytes of every file below ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def store_info(store: VolumeStore) -> dict[str, Any]:
    """Identity, parameters, views, shapes, slot counts, size on disk and compression ratio."""
    views: dict[str, Any] = {}
    for view in store.views:
        keys = store.knee_keys(view)
        shape = store.volume_shape(view)
        used = int((keys >= 0).sum())
        nbytes = disk_bytes(store.path / view)
        raw = used * int(np.prod(shape))
        views[view] = {
            "volume_shape": list(shape),
            "crop_shape": list(store.crop_shape(view)),
            "slots": len(keys),
            "used": used,
            "disk_bytes": nbytes,
            "compression_ratio": round(raw / nbytes, 3) if nbytes and used else None,
        }
    return {
        "path": str(store.path),
        "format_version": store.attrs.get("format_version"),
        "store_id": store.ref.id,
        "params_hash": store.params_hash,
        "params": store.params.to_dict(),
        "created_at": store.attrs.get("created_at"),
        "toolkit_version": store.attrs.get("toolkit_version"),
        "views": views,
        "disk_bytes": disk_bytes(store.path),
    }
