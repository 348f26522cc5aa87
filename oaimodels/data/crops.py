"""Where a volume's random training crop may start: inside its real data, never in padding.

A series smaller than the full region is centre-padded at preprocessing time; the part of its
stored volume that is real data is its valid extent (``oaicohort.imaging.recipe.extent``). The
knee table carries it (:data:`EXTENT_COLUMNS`, from the store's index) and :func:`offset_bounds`
turns it into the range of crop offsets per axis that keeps the crop inside it. Where the data
is smaller than the crop (a store made with ``too_small="pad"``) the one offset that centres
the crop on the data is used. Without extent columns a volume is all data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from oaicohort.db import Database
from oaicohort.imaging.recipe.extent import extent_of
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.index import indexed_volumes

EXTENT_COLUMNS = ("extent_d0", "extent_d1", "extent_h0", "extent_h1", "extent_w0", "extent_w1")


def knee_extents(
    db: Database,
    store_path: str | os.PathLike[str],
    params: PreprocessParams,
    view: str,
    knees: pd.DataFrame,
    visit: int,
) -> pd.DataFrame:
    """``knees`` (with ``knee_id`` and ``position``) with the valid extent of each one's volume."""
    rows = indexed_volumes(db, store_path, view)
    rows = rows[(rows["status"] == "ok") & (rows["visit"] == visit)]
    notes = {(int(k), int(p)): n for k, p, n in zip(rows["knee_id"], rows["position"], rows["notes"])}
    extents = [
        extent_of(notes.get((int(k), int(p))), params, view) for k, p in zip(knees["knee_id"], knees["position"])
    ]
    out = knees.copy()
    flat = np.array([[a for axis in e for a in axis] for e in extents], dtype=np.int64).reshape(-1, 6)
    for i, column in enumerate(EXTENT_COLUMNS):
        out[column] = flat[:, i]
    return out


def offset_bounds(knees: pd.DataFrame, stored: Sequence[int], crop: Sequence[int]) -> np.ndarray:
    """(N, 3, 2) int64: the lowest and highest crop offset per axis (D, H, W) of each knee's volume
    that keeps a ``crop`` of the ``stored`` volume inside its valid extent."""
    n = len(knees)
    stored_arr = np.asarray(stored, dtype=np.int64)
    crop_arr = np.asarray(crop, dtype=np.int64)
    if all(c in knees.columns for c in EXTENT_COLUMNS):
        flat = knees[list(EXTENT_COLUMNS)].to_numpy(dtype=np.int64).reshape(n, 3, 2)
        start, stop = flat[:, :, 0], flat[:, :, 1]
    else:
        start, stop = np.zeros((n, 3), dtype=np.int64), np.broadcast_to(stored_arr, (n, 3))
    last = stored_arr - crop_arr  # the highest offset inside the stored volume
    low, high = start, stop - crop_arr
    # data smaller than the crop: the offset that centres the crop on it
    centred = start - (crop_arr - (stop - start)) // 2
    too_small = high < low
    low = np.where(too_small, centred, low)
    high = np.where(too_small, centred, high)
    low, high = np.clip(low, 0, last), np.clip(high, 0, last)
    return np.stack([low, np.maximum(high, low)], axis=-1)
