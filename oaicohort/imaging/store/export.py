"""``oai store export --nifti DIR``: stored volumes as NIfTI files that open in ITK-SNAP or Slicer.

One ``{subject}{side}_v{visit:02d}_{view}.nii.gz`` per selected volume: the stored uint8 array
(axes i, j, k = the view's D, H, W) with the affine of :mod:`oaicohort.imaging.store.geometry`
(scanner RAS+, mm; qform and sform both set), so it overlays the original DESS series. The
affine needs the series geometry that ``oai preprocess`` records in the volume's index row, so
export reads the database; ``index.csv`` lists every NIfTI file of the folder (several exports
into one folder add up). nibabel is an optional
dependency (``pip install "oai-toolkit[export]"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oaicohort.errors import OAIError
from oaicohort.files import atomic_path, atomic_write_text, no_world_write
from oaicohort.imaging.store.geometry import GeometryMissing, stored_affine
from oaicohort.imaging.store.index import indexed_volumes
from oaicohort.imaging.store.selection import knee_name, select_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.outputs import check_output
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.vocabulary import XRAY_VIEW

if TYPE_CHECKING:
    from oaicohort.db import Database

log = logging.getLogger(__name__)

INDEX = "index.csv"


class ExportError(OAIError):
    """Volumes cannot be exported (no nibabel, no recorded geometry, nothing selected)."""


def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise ExportError('NIfTI export needs nibabel: pip install "nibabel>=5" (or the [export] extra)') from None
    return nibabel


def nifti_name(subject_id: int, side: str, visit: int, view: str) -> str:
    return f"{knee_name(subject_id, side)}_v{int(visit):02d}_{view}.nii.gz"


@no_world_write()
def export_nifti(
    db: Database,
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    views: Sequence[str] | None = None,
    knees: list[tuple[int, str]] | None = None,
    visit: int | None = 0,
    limit: int | None = None,
    progress: ProgressCallback = no_progress,
) -> pd.DataFrame:
    """Write the selected volumes of the store as NIfTI; returns their rows (``index.csv`` lists
    these and an earlier export's files still in the folder)."""
    store = VolumeStore.open(store_path)
    out = check_output(out_dir, option="out", inputs=[store.path], database=db)
    views = tuple(views or store.views)
    if XRAY_VIEW in views:
        raise ExportError(
            f"{store.path}: X-ray ROIs are crops of a projection radiograph, with no position in scanner space "
            "to export as NIfTI; `oai store qc` draws them as PNGs"
        )
    nib = _nibabel()
    rows = indexed_volumes(db, store)
    rows = rows[(rows["status"] == "ok") & (rows["params_hash"] == store.params_hash) & rows["view"].isin(views)]
    if visit is not None:
        rows = rows[rows["visit"] == visit]
    selected = []
    for view in views:
        of_view = rows[rows["view"] == view].drop_duplicates(["knee_id", "visit"], keep="last")
        of_view = of_view.sort_values(["subject_id", "side", "visit"]).reset_index(drop=True)
        if of_view.empty:
            continue
        selected.append(select_slots(of_view, knees, where=f"{store.path} ({view}, visit {visit})", limit=limit))
    if not selected:
        raise ExportError(f"{store.path}: no indexed {'/'.join(views)} volume in the database {db.url} to export")
    chosen = pd.concat(selected, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, row in enumerate(chosen.itertuples(index=False), start=1):
        notes = row.notes or {}
        try:
            affine = stored_affine(store.params, row.view, row.side, notes)
        except GeometryMissing as exc:
            raise ExportError(f"{knee_name(row.subject_id, row.side)} {row.view}: {exc}") from None
        data = store.read(row.view, int(row.position))
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)  # scanner coordinates
        image.set_sform(affine, code=1)
        path = out / nifti_name(row.subject_id, row.side, row.visit, row.view)
        with atomic_path(path, suffix=".nii.gz") as tmp:
            nib.save(image, tmp)
        written.append(
            {
                "file": path.name,
                "knee_id": int(row.knee_id),
                "subject_id": int(row.subject_id),
                "side": row.side,
                "visit": int(row.visit),
                "view": row.view,
                "position": int(row.position),
                "shape": "x".join(map(str, data.shape)),
                "spacing_mm": "x".join(f"{v:.4g}" for v in np.linalg.norm(affine[:3, :3], axis=0)),
                "checksum": row.checksum,
            }
        )
        progress("export", n, len(chosen))
    index = pd.DataFrame(written)
    atomic_write_text(out / INDEX, _merged_index(out, index).to_csv(index=False))
    log.info("%d volumes exported to %s", len(index), out)
    return index


def _merged_index(out: Path, written: pd.DataFrame) -> pd.DataFrame:
    """``index.csv`` listing every NIfTI file of the folder: an earlier export's rows are kept
    (those of files it still holds and this export did not rewrite), this export's added."""
    path = out / INDEX
    if not path.is_file():
        return written
    try:
        earlier = pd.read_csv(path, dtype={"file": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        log.warning("%s: unreadable (%s); written anew with this export's files", path, exc)
        return written
    if "file" not in earlier.columns:
        log.warning("%s: no file column; written anew with this export's files", path)
        return written
    keep = earlier[
        ~earlier["file"].isin(set(written["file"])) & earlier["file"].map(lambda f: (out / str(f)).is_file())
    ]
    return pd.concat([keep, written], ignore_index=True).sort_values("file", kind="stable").reset_index(drop=True)
