"""Steps 2-5 of preprocessing (``oaicohort.imaging.recipe.params``) and the whole recipe on one series.

Right knees are flipped to look like left ones, a margin is cut and the series is centre-padded
or cropped to the full-resolution region, and each view's stored volume is a block mean of that
region (``views_of_region``). ``preprocess_mri``, the recipe's entry point for ``oai preprocess``
and ``oai predict`` alike, runs intensity mapping (``intensity``) and these steps on one series
loaded by ``oaicohort.imaging.series.load`` (checked, in canonical order, its side decided),
touching only the voxels it keeps. Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from oaicohort.imaging.recipe.intensity import intensity_map
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.series.size import check_source_size
from oaicohort.vocabulary import MRI_VIEWS, SIDES


class SeriesLike(Protocol):
    """What preprocessing needs of a series (``oaicohort.imaging.series.load.LoadedSeries``)."""

    @property
    def pixels(self) -> np.ndarray: ...  # (slices, rows, cols) uint16

    @property
    def spacing_mm(self) -> tuple[float, float, float]: ...  # (slice, row, col)

    @property
    def side(self) -> str: ...  # "R" | "L"


def orient_left(pixels: np.ndarray, side: str, params: PreprocessParams) -> np.ndarray:
    """Flip right knees along the slice (left-right) axis so every knee looks like a left one."""
    if side not in SIDES:
        raise ValueError(f"knee side must be 'R' or 'L', not {side!r}")
    return pixels[::-1] if side == "R" and params.flip_right else pixels


def centre_fit(array: np.ndarray, axis: int, size: int, pad_value: int = 0) -> tuple[np.ndarray, int]:
    """Centre-crop or centre-pad ``array`` along ``axis`` to ``size``.

    Returns the result and the signed change (positive = padded, negative = cropped). Odd
    differences put the extra element at the end (pad) / remove it from the end (crop).
    """
    src, dst, change = _placement(array.shape[axis], size)
    if change == 0:
        return array, 0
    if change < 0:
        index = [slice(None)] * array.ndim
        index[axis] = src
        return array[tuple(index)], change
    widths = [(0, 0)] * array.ndim
    widths[axis] = (dst.start, size - dst.stop)
    return np.pad(array, widths, constant_values=pad_value), change


def _placement(n: int, size: int) -> tuple[slice, slice, int]:
    """Source and destination slices of a centred fit of ``n`` elements into ``size``."""
    if n >= size:
        start = (n - size) // 2
        return slice(start, start + size), slice(0, size), size - n
    before = (size - n) // 2
    return slice(0, n), slice(before, before + n), size - n


def region_plan(
    shape: tuple[int, ...], params: PreprocessParams
) -> tuple[tuple[slice, ...], tuple[slice, ...], dict[str, Any]]:
    """Where the series goes in the region: source and destination slices, and the notes."""
    m = params.margin
    slices, rows, cols = shape
    if rows <= 2 * m or cols <= 2 * m:
        raise ValueError(f"series of {rows}x{cols} pixels is too small for a {m}-pixel margin")
    kept = (slices, rows - 2 * m, cols - 2 * m)
    src, dst, notes = [], [], {}
    for axis, (name, n, size) in enumerate(zip(("slices", "rows", "cols"), kept, params.region_shape)):
        s, d, change = _placement(n, size)
        offset = 0 if axis == 0 else m
        src.append(slice(s.start + offset, s.stop + offset))
        dst.append(d)
        if change > 0:
            notes[f"{name}_padded"] = {"from": n, "to": size}
        elif change < 0:
            notes[f"{name}_cropped"] = {"from": n, "to": size}
    return tuple(src), tuple(dst), notes


def fit_region(pixels: np.ndarray, params: PreprocessParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Margin cut, then centre pad/crop to ``params.region_shape``; notes say what was changed."""
    src, dst, notes = region_plan(pixels.shape, params)
    region = np.full(params.region_shape, params.pad_value, dtype=pixels.dtype)
    region[dst] = pixels[src]
    return region, notes


def block_mean(array: np.ndarray, blocks: tuple[int, int, int]) -> np.ndarray:
    """Exact mean of each block (rounded half up) of a uint8 volume; shape must divide evenly."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {array.dtype}")
    if tuple(blocks) == (1, 1, 1):
        return array
    if any(n % b for n, b in zip(array.shape, blocks)):
        raise ValueError(f"shape {array.shape} is not divisible by blocks {tuple(blocks)}")
    n = int(np.prod(blocks))
    if n > 256:
        raise ValueError(f"blocks {tuple(blocks)} hold more than 256 voxels (uint16 sums would overflow)")
    # Strided adds axis by axis, innermost first: ~10x faster than reshape(...).sum(axis=(1, 3, 5)).
    acc: np.ndarray = array
    for axis in (2, 1, 0):
        b = blocks[axis]
        if b == 1:
            continue
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(0, None, b)
        total = acc[tuple(index)].astype(np.uint16)
        for k in range(1, b):
            index[axis] = slice(k, None, b)
            total += acc[tuple(index)]
        acc = total
    acc += n // 2
    acc //= n
    return acc.astype(np.uint8)


def views_of_region(
    region: np.ndarray, params: PreprocessParams, views: tuple[str, ...] = MRI_VIEWS
) -> dict[str, np.ndarray]:
    """The stored volumes of each requested view from the full-resolution uint8 region."""
    out: dict[str, np.ndarray] = {}
    through, inplane, lr = params.reprojection_blocks
    # blocks are averaged in the region's own (slices, rows, cols) order and only the small
    # result is transposed into the view's (D, H, W)
    for view in views:
        if view == "sag":
            f = params.downsample
            out[view] = block_mean(region, (f, f, f))
        elif view == "cor":  # (cols, rows, slices)
            out[view] = np.ascontiguousarray(block_mean(region, (lr, inplane, through)).transpose(2, 1, 0))
        elif view == "ax":  # (rows, cols, slices)
            out[view] = np.ascontiguousarray(block_mean(region, (lr, through, inplane)).transpose(1, 2, 0))
        else:
            raise ValueError(f"unknown view {view!r}; choose from {MRI_VIEWS}")
    return out


@dataclass
class PreprocessedKnee:
    """The stored volumes of one series, their voxel spacing, and what was padded/cropped."""

    volumes: dict[str, np.ndarray]
    spacing_mm: dict[str, tuple[float, float, float]]
    notes: dict[str, Any]


def preprocess_mri(
    series: SeriesLike, params: PreprocessParams, views: tuple[str, ...] = MRI_VIEWS
) -> PreprocessedKnee:
    """Intensity, side, region and views of one loaded series: the MRI recipe."""
    pixels = np.asarray(series.pixels)
    if pixels.ndim != 3:
        raise ValueError(f"expected a (slices, rows, cols) volume, got shape {pixels.shape}")
    check_source_size(pixels.shape, params)
    mapping = intensity_map(pixels, params)  # on the whole series, as the reference
    notes = mapping.notes(params)
    oriented = orient_left(pixels, series.side, params)
    src, dst, fit_notes = region_plan(pixels.shape, params)
    notes.update(fit_notes)
    # map straight into the region, a slice at a time: only kept voxels are touched and the
    # temporaries stay small (peak memory ~ the series + the uint8 region)
    region = np.full(params.region_shape, params.pad_value, dtype=np.uint8)
    for k_src, k_dst in zip(range(src[0].start, src[0].stop), range(dst[0].start, dst[0].stop)):
        mapping.apply(oriented[k_src, src[1], src[2]], out=region[k_dst, dst[1], dst[2]])
    notes["source_shape"] = list(pixels.shape)
    if series.side == "R" and params.flip_right:
        notes["flipped"] = True
    return PreprocessedKnee(
        volumes=views_of_region(region, params, views),
        spacing_mm={v: params.spacing_mm(v, series.spacing_mm) for v in views},
        notes=notes,
    )
