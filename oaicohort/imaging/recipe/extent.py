"""Where a stored MRI volume holds real data, and where padding: its valid extent.

A series between the minimum size (``oaicohort.imaging.series.size``) and the full region is
centre-padded with ``pad_value`` (``oaicohort.imaging.recipe.mri.region_plan``). The voxels of a
stored volume whose whole block (the 2x2x2 mean of ``sag``, the re-projection blocks of ``cor``
and ``ax``) is real data form a box: the volume's *valid extent*, half-open
``((d0, d1), (h0, h1), (w0, w1))`` in the stored volume's (D, H, W). Training draws its random
crops inside it (``oaimodels.data.crops``), so no crop reaches padding; the minimum size makes the
box of every view at least as large as its crop.

The preprocessing run records it per view in the notes of every padded volume
(``notes["valid_extent"]``, :func:`extent_notes`); for volumes stored before that, it is derived
from the series shape the notes record (``source_shape``) by the same placement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from oaicohort.imaging.recipe.mri import region_plan
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.vocabulary import MRI_VIEWS

Extent = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
EXTENT_NOTE = "valid_extent"
_PADDED = ("slices_padded", "rows_padded", "cols_padded")


def stored_extent(region_box: Sequence[slice], params: PreprocessParams, view: str) -> Extent:
    """The stored ``view`` voxels that average only voxels of ``region_box`` (the real data in the
    full-resolution (slices, rows, cols) region)."""
    through, inplane, lr = params.reprojection_blocks
    f = params.downsample
    # (region axis, block) of each stored axis D, H, W (see recipe.mri.views_of_region)
    axes = {
        "sag": ((0, f), (1, f), (2, f)),
        "cor": ((2, through), (1, inplane), (0, lr)),
        "ax": ((1, through), (2, inplane), (0, lr)),
    }
    if view not in axes:
        raise ValueError(f"no valid extent for view {view!r}; choose from {MRI_VIEWS}")
    return tuple(  # type: ignore[return-value]
        (math.ceil(region_box[axis].start / block), region_box[axis].stop // block) for axis, block in axes[view]
    )


def full_extent(shape: Sequence[int]) -> Extent:
    d, h, w = (int(n) for n in shape)
    return ((0, d), (0, h), (0, w))


def extent_notes(source_shape: Sequence[int], params: PreprocessParams, views: Sequence[str]) -> dict[str, Any]:
    """``{"valid_extent": {view: [[d0, d1], [h0, h1], [w0, w1]]}}`` when the series was padded
    along any axis, else ``{}`` (the whole stored volume is real data)."""
    _src, dst, notes = region_plan(tuple(int(n) for n in source_shape), params)
    if not any(name in notes for name in _PADDED):
        return {}
    return {EXTENT_NOTE: {v: [list(a) for a in stored_extent(dst, params, v)] for v in views if v in MRI_VIEWS}}


def extent_of(notes: Mapping[str, Any] | None, params: PreprocessParams, view: str) -> Extent:
    """A stored volume's valid extent from its notes: recorded, or derived from the series shape
    of a volume stored before it was recorded; the whole volume where nothing was padded."""
    shape = params.stored_shape(view)
    notes = notes or {}
    recorded = (notes.get(EXTENT_NOTE) or {}).get(view)
    if recorded is not None:
        return tuple((int(a), int(b)) for a, b in recorded)  # type: ignore[return-value]
    if view in MRI_VIEWS and any(name in notes for name in _PADDED) and notes.get("source_shape"):
        _src, dst, _notes = region_plan(tuple(int(n) for n in notes["source_shape"]), params)
        return stored_extent(dst, params, view)
    return full_extent(shape)
