"""What ``oai predict`` reads: DICOM series folders, OAI releases and volume stores -> knee scans.

An MRI run reads a DESS series folder (one file per slice) or, in a release, the series of its
sequence at the visit; an X-ray run reads a bilateral PA radiograph (a folder with one DICOM
file: both knees, or the one of ``side``) or, in a release, the radiographs of the visit, and
crops each knee around the localiser's joint centre (``oaicohort.imaging.recipe.xray_knees``). Both are
preprocessed with the run's own store parameters. A store's volumes are used as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.imaging.recipe.mri import preprocess_series
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.series.size import ImageTooSmall
from oaicohort.imaging.series.source import check_within
from oaicohort.imaging.store.selection import select_slots, store_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.progress import ProgressCallback
from oaicohort.vocabulary import SIDES, XRAY_VIEW
from oaimodels import run_folder as rf
from oaimodels.inference.trained_run import TrainedRun
from oaimodels.run_volumes import check_known_volumes


@dataclass
class KneeScan:
    """One knee to score: where it came from and, for series, its preprocessed volume."""

    input: str
    kind: str  # series | release | store
    subject_id: Any
    side: str
    visit: int | None = None
    knee_id: int | None = None
    position: int | None = None
    volume: np.ndarray | None = None
    notes: str = ""

    def slot(self) -> int:
        """The store position of a scan read from a store."""
        if self.position is None:
            raise ValueError(f"{self.input}: knee {self.subject_id}{self.side} has no store position")
        return self.position

    def preprocessed(self) -> np.ndarray:
        """The preprocessed volume of a scan read from a series or a release."""
        if self.volume is None:
            raise ValueError(f"{self.input}: knee {self.subject_id}{self.side} has no preprocessed volume")
        return self.volume


def _subject(value: Any) -> Any:
    """A participant id as a number when it is one (an OAI ID), else as the DICOM file gives it."""
    return int(value) if str(value).isdigit() else value


def input_kind(path: Path) -> str:
    """``store`` (has zarr.json), ``series`` (slice files, no sub-folders) or ``release``."""
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    if not path.is_dir():
        raise InputFileError(path, "not a folder; give a DICOM series folder, an OAI release or a volume store")
    if (path / "zarr.json").is_file():
        return "store"
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if entries and not any(p.is_dir() for p in entries):
        return "series"
    return "release"


@dataclass(frozen=True)
class _Sided:
    """A read series with the side preprocessing should assume (``SeriesLike``)."""

    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    side: str


def series_scan(
    folder: Path, params: PreprocessParams, view: str, side: str | None, kind: str, **extra: Any
) -> KneeScan:
    from oaicohort.imaging.series.dicom import read_series

    series = read_series(folder)
    knee_side = series.side or side
    if series.side and side and extra.get("expected_side") and series.side != side:
        raise InputFileError(folder, f"series says knee side {series.side} but the release index says {side}")
    if knee_side not in ("R", "L"):
        raise InputFileError(
            folder, f"cannot tell the knee side (series description {series.series_description!r}); pass --side R or L"
        )
    try:
        result = preprocess_series(_Sided(series.pixels, series.spacing_mm, knee_side), params, (view,))
    except ImageTooSmall as exc:  # the same rule as `oai preprocess`, said of this folder
        raise InputFileError(folder, str(exc)) from None
    subject = _subject(extra.get("subject_id", getattr(series, "patient_id", "")))
    notes = ";".join(sorted(k for k in result.notes if k not in ("intensity_range", "source_shape")))
    return KneeScan(
        input=str(folder),
        kind=kind,
        subject_id=subject,
        side=knee_side,
        visit=extra.get("visit"),
        volume=result.volumes[view],
        notes=notes,
    )


def release_scans(
    root: Path,
    params: PreprocessParams,
    view: str,
    knees: list[tuple[int, str]] | None,
    visit: int,
    progress: ProgressCallback,
) -> list[KneeScan]:
    series = release_index(root)
    series = series[(series["sequence"] == params.sequence) & (series["visit"] == visit) & (series["side"] != "")]
    series = series.drop_duplicates(["subject_id", "side"], keep="last")
    slots = series.rename(columns={"folder": "series_folder"}).assign(position=range(len(series)))
    chosen = select_slots(slots, knees, where=f"{root} ({params.sequence}, visit {visit})")
    scans = []
    for n, row in enumerate(chosen.itertuples(index=False), start=1):
        folder = Path(row.visit_dir) / row.series_folder
        check_within(folder, Path(row.visit_dir))
        scans.append(
            series_scan(
                folder,
                params,
                view,
                row.side,
                "release",
                subject_id=int(row.subject_id),
                visit=int(row.visit),
                expected_side=True,
            )
        )
        progress("reading series", n, len(chosen))
    return scans


def store_scans(
    run: TrainedRun, path: Path, knees: list[tuple[int, str]] | None, visit: int, db: Any
) -> tuple[VolumeStore, list[KneeScan]]:
    store = VolumeStore.open(path)
    run.check_store(store)
    slots = store_slots(store, run.view, db=db, visit=visit)
    chosen = select_slots(slots, knees, where=f"{store.path} ({run.view}, visit {visit})")
    knee_ids: dict[tuple[int, str], int] = {}
    if (run.path / rf.KNEES).is_file():
        # a knee of the run: the store must hold the volume the run knew (refused otherwise),
        # and knees.csv names its knee id (by knee, never by slot: slots move when a store is rebuilt)
        table = rf.read_table(run.path / rf.KNEES, ("knee_id", "subject_id", "side"))
        check_known_volumes(store, run.view, chosen, table, visit=run.config.visit, run=run.path)
        knee_ids = {
            (int(s), str(d)): int(k)
            for s, d, k in zip(table["subject_id"], table["side"], table["knee_id"], strict=True)
        }
    scans = []
    for row in chosen.itertuples(index=False):
        knee_id = getattr(row, "knee_id", None)
        if knee_id is None or pd.isna(knee_id):
            knee_id = knee_ids.get((int(row.subject_id), str(row.side))) if int(row.visit) == run.config.visit else None
        scans.append(
            KneeScan(
                input=str(store.path),
                kind="store",
                subject_id=int(row.subject_id),
                side=row.side,
                visit=int(row.visit),
                knee_id=None if knee_id is None else int(knee_id),
                position=int(row.position),
            )
        )
    return store, scans


def release_index(root: Path) -> pd.DataFrame:
    """Every series the image package indexes (``contents.csv``) below ``root`` list."""
    from oaicohort.release.discovery import CONTENTS, discover_release
    from oaicohort.release.image_index import read_contents
    from oaicohort.release.text import load_source

    frames = [read_contents(load_source(s)) for s in discover_release(root) if s.kind == CONTENTS]
    if not frames:
        raise InputFileError(root, "no image package index (contents.csv) below this folder")
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- radiographs


def radiograph_scans(
    folder: Path,
    params: PreprocessParams,
    sides: Sequence[str],
    kind: str,
    *,
    subject_id: int | None = None,
    visit: int | None = None,
) -> list[KneeScan]:
    """The knees ``sides`` of the bilateral radiograph in ``folder``, cropped as the store's ROIs."""
    from oaicohort.imaging.recipe.xray_knees import crop_knees
    from oaicohort.imaging.series.radiograph import read_radiograph

    radiograph = read_radiograph(folder)
    crops = crop_knees(radiograph.pixels, radiograph.spacing_mm, params, sides)
    subject = _subject(subject_id if subject_id is not None else radiograph.patient_id)
    scans = []
    for side in sides:
        crop = crops[side]
        if isinstance(crop, str):
            raise InputFileError(folder, f"knee {side}: {crop}")
        scans.append(
            KneeScan(
                input=str(folder),
                kind=kind,
                subject_id=subject,
                side=side,
                visit=visit,
                volume=crop.roi.image,
                notes=";".join(sorted(k for k in crop.roi.notes if k != "intensity_range")),
            )
        )
    return scans


def release_radiograph_scans(
    root: Path,
    params: PreprocessParams,
    knees: list[tuple[int, str]] | None,
    visit: int,
    progress: ProgressCallback,
) -> list[KneeScan]:
    """The knees (all, or ``knees`` in their order) of the release's radiographs at ``visit``."""
    series = release_index(root)
    series = series[(series["sequence"] == params.xray_sequence.upper()) & (series["visit"] == visit)]
    series = series.drop_duplicates(["subject_id"], keep="last")  # one bilateral image per visit
    slots = pd.concat([series.assign(side=side) for side in SIDES]).sort_values(["subject_id", "side"], kind="stable")
    slots = slots.rename(columns={"folder": "series_folder"}).assign(position=range(len(slots)))
    chosen = select_slots(slots, knees, where=f"{root} ({params.xray_sequence}, visit {visit})")
    wanted: dict[tuple[int, str, str], list[str]] = {}  # each radiograph read once
    for row in chosen.itertuples(index=False):
        wanted.setdefault((int(row.subject_id), str(row.visit_dir), str(row.series_folder)), []).append(row.side)
    scans: dict[tuple[int, str], KneeScan] = {}
    for n, ((subject, visit_dir, folder), sides) in enumerate(wanted.items(), start=1):
        path = Path(visit_dir) / folder
        check_within(path, Path(visit_dir))
        for scan in radiograph_scans(path, params, sides, "release", subject_id=subject, visit=visit):
            scans[(subject, scan.side)] = scan
        progress("reading radiographs", n, len(wanted))
    return [scans[(int(row.subject_id), row.side)] for row in chosen.itertuples(index=False)]


# --------------------------------------------------------------------------- any mix


def read_inputs(
    run: TrainedRun,
    inputs: Sequence[Path | str],
    *,
    knees: list[tuple[int, str]] | None,
    visit: int,
    side: str | None,
    db: Any,
    progress: ProgressCallback,
) -> list[tuple[list[KneeScan], VolumeStore | None]]:
    """The knees to score, grouped by where their volumes are: a store, or memory (None)."""
    params, xray = run.params(), run.view == XRAY_VIEW
    groups: list[tuple[list[KneeScan], VolumeStore | None]] = []
    in_memory: list[KneeScan] = []
    for item in inputs:
        path = Path(item).expanduser().resolve()
        kind = input_kind(path)
        if kind == "store":
            store, scans = store_scans(run, path, knees, visit, db)
            groups.append((scans, store))
        elif kind == "release" and xray:
            in_memory.extend(release_radiograph_scans(path, params, knees, visit, progress))
        elif kind == "release":
            in_memory.extend(release_scans(path, params, run.view, knees, visit, progress))
        elif xray:
            in_memory.extend(radiograph_scans(path, params, [side] if side else list(SIDES), "series"))
        else:
            in_memory.append(series_scan(path, params, run.view, side, "series"))
    if in_memory:
        groups.append((in_memory, None))
    return groups
