"""``oai store qc --out DIR``: PNG montages of stored volumes, to check thousands of knees by eye.

Per knee, ``knees/{subject}{side}_v{visit:02d}.png``: the middle slice (along D) of each stored
view side by side (sag, cor, ax, in that order), at one image pixel per stored voxel, separated
by ``GAP`` black pixels and bottom-padded to the tallest view; grey levels are the stored uint8
values. Contact sheets ``sheets/sheet_{n:04d}.png`` tile ``columns x rows`` knee montages in the
order of ``index.csv`` (which names each knee's sheet, row and column). PNGs are 8-bit greyscale
written value for value, so a PNG's size is exactly the montage's size.

A sheet has only the columns and rows its knees need (two knees on a 200x200 grid are one row of
two), and is at most ``MAX_SHEET_PIXELS`` (32 megapixels; a 4x8 sheet of full-preset MRI
montages is about 3): larger ``columns x rows`` are refused before anything is drawn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from oaicohort.errors import OAIError
from oaicohort.files import atomic_path, atomic_write_text, no_world_write
from oaicohort.imaging.store.selection import knee_name, select_slots, store_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.outputs import check_output
from oaicohort.progress import ProgressCallback, no_progress

if TYPE_CHECKING:
    from oaicohort.db import Database

log = logging.getLogger(__name__)

GAP = 2
MAX_SHEET_PIXELS = 32_000_000


class QCError(OAIError):
    """Nothing to draw (no such view, no selected knee)."""


class SheetTooLargeError(QCError):
    """``columns x rows`` montages would make a contact sheet over ``MAX_SHEET_PIXELS``: a usage error."""

    exit_code = 2


def sheet_grid(knees: int, columns: int, rows: int, montage: tuple[int, int]) -> tuple[int, int]:
    """The (columns, rows) a contact sheet uses for ``knees`` montages of ``montage`` (height,
    width) pixels; ``SheetTooLargeError`` when it would exceed ``MAX_SHEET_PIXELS``."""
    used_columns = max(1, min(columns, knees))
    used_rows = max(1, min(rows, -(-knees // used_columns)))
    height, width = montage
    pixels = (used_rows * (height + GAP) - GAP) * (used_columns * (width + GAP) - GAP)
    if pixels > MAX_SHEET_PIXELS:
        raise SheetTooLargeError(
            f"--columns {columns} x --rows {rows}: a contact sheet of {used_columns} x {used_rows} montages of "
            f"{width}x{height} pixels would be {pixels / 1e6:,.0f} megapixels, over the "
            f"{MAX_SHEET_PIXELS / 1e6:,.0f} a sheet may have; use fewer columns or rows"
        )
    return used_columns, used_rows


def mid_slice(volume: np.ndarray) -> np.ndarray:
    """The middle slice along the first axis (``D // 2``)."""
    return volume[volume.shape[0] // 2]


def montage(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels side by side, top-aligned, ``gap`` black columns between them (uint8)."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.zeros((height, width), dtype=np.uint8)
    x = 0
    for p in panels:
        out[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def montage_shape(store: VolumeStore, views: Sequence[str], gap: int = GAP) -> tuple[int, int]:
    """(height, width) in pixels of one knee's montage."""
    shapes = [store.volume_shape(v) for v in views]
    return max(s[1] for s in shapes), sum(s[2] for s in shapes) + gap * (len(shapes) - 1)


def _save_png(path: Path, image: np.ndarray) -> None:
    """8-bit greyscale PNG, value for value (Pillow, which matplotlib depends on)."""
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(tmp, format="PNG")


@no_world_write()
def write_qc(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    db: Database | None = None,
    views: Sequence[str] | None = None,
    knees: list[tuple[int, str]] | None = None,
    visit: int | None = 0,
    limit: int | None = None,
    columns: int = 4,
    rows: int = 8,
    progress: ProgressCallback = no_progress,
) -> pd.DataFrame:
    """Write per-knee montages and contact sheets of the store's knees; returns ``index.csv``'s rows.

    A knee is drawn when it has a volume in every requested view (default: the store's views).
    """
    store = VolumeStore.open(store_path)
    out_dir = check_output(out_dir, option="out", inputs=[store.path], database=db)
    views = tuple(views or store.views)
    missing = [v for v in views if v not in store.views]
    if missing:
        raise QCError(f"{store.path}: the store holds no {'/'.join(missing)} volumes (views: {list(store.views)})")
    slots = None
    for view in views:
        of_view = store_slots(store, view, db=db, visit=visit).rename(columns={"position": f"position_{view}"})
        keep = [c for c in ("subject_id", "side", "visit", f"position_{view}") if c in of_view.columns]
        of_view = of_view[keep]
        slots = of_view if slots is None else slots.merge(of_view, on=["subject_id", "side", "visit"])
    assert slots is not None
    chosen = select_slots(slots, knees, where=f"{store.path} ({'+'.join(views)}, visit {visit})", limit=limit)
    height, width = montage_shape(store, views)
    columns, rows = sheet_grid(len(chosen), columns, rows, (height, width))  # checked before drawing
    out = Path(out_dir)
    (out / "knees").mkdir(parents=True, exist_ok=True)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    per_sheet = columns * rows
    sheet = np.zeros((rows * (height + GAP) - GAP, columns * (width + GAP) - GAP), dtype=np.uint8)
    records = []
    for n, row in enumerate(chosen.itertuples(index=False)):
        image = montage([mid_slice(store.read(v, int(getattr(row, f"position_{v}")))) for v in views])
        name = f"{knee_name(row.subject_id, row.side)}_v{int(row.visit):02d}.png"
        _save_png(out / "knees" / name, image)
        number, cell = divmod(n, per_sheet)
        r, c = divmod(cell, columns)
        y, x = r * (height + GAP), c * (width + GAP)
        sheet[y : y + height, x : x + width] = image
        records.append(
            {
                "file": f"knees/{name}",
                "subject_id": int(row.subject_id),
                "side": row.side,
                "visit": int(row.visit),
                "sheet": f"sheets/sheet_{number + 1:04d}.png",
                "sheet_row": r,
                "sheet_column": c,
            }
        )
        if cell == per_sheet - 1 or n == len(chosen) - 1:
            _save_png(out / records[-1]["sheet"], sheet)
            sheet[...] = 0
        progress("qc", n + 1, len(chosen))
    index = pd.DataFrame(records)
    atomic_write_text(out / "index.csv", index.to_csv(index=False))
    log.info("%d knee montages written to %s", len(index), out)
    return index
