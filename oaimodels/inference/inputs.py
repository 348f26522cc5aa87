"""What ``oai predict`` reads: DICOM series folders, OAI releases and volume stores -> knee scans.

An MRI run reads a DESS series folder (one file per slice) or, in a release, the series of its
sequence at the visit; an X-ray run reads a bilateral PA radiograph (a folder with one DICOM
file: both knees, or the one of ``side``) or, in a release, the radiographs of the visit. Each is
loaded exactly as ``oai preprocess`` loads it (``oaicohort.imaging.series.load``: the same
sources-agree checks against the release index, or against the run's sequence and ``--side`` for a
folder, and the same reorientation) and preprocessed by the same recipe (``preprocess_mri``,
``preprocess_xray``) with the run's own store parameters. A store's volumes are used as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.imaging.recipe.mri import preprocess_mri
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.recipe.xray_knees import preprocess_xray
from oaicohort.imaging.series.load import Expected, load_radiograph, load_series
from oaicohort.imaging.series.size import ImageTooSmall
from oaicohort.imaging.store.selection import select_slots, store_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.progress import ProgressCallback
from oaicohort.visits import SCREENING_VISIT
from oaicohort.vocabulary import SIDES, XRAY_VIEW
from oaimodels import run_folder as rf
from oaimodels.inference.trained_run import TrainedRun
from oaimodels.run_volumes import check_known_volumes

if TYPE_CHECKING:
    from oaicohort.db import Database


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


def folder_expected(params: PreprocessParams, side: str | None) -> Expected:
    """What a series folder given on the command line is given as: the run's sequence, ``--side``."""
    given_by = "the run's sequence" + (f" and --side {side}" if side else "")
    return Expected(side=side, sequence=params.sequence, given_by=given_by)


def series_scan(
    folder: Path, params: PreprocessParams, view: str, expected: Expected, kind: str, visit: int | None = None
) -> KneeScan:
    """The knee of the MR series in ``folder``: loaded and preprocessed as ``oai preprocess`` does."""
    series = load_series(folder, params, expected)
    try:
        result = preprocess_mri(series, params, (view,))
    except ImageTooSmall as exc:  # the same rule as `oai preprocess`, said of this folder
        raise InputFileError(folder, str(exc)) from None
    subject = expected.subject_id if expected.subject_id is not None else getattr(series.source, "patient_id", "")
    notes = ";".join(sorted(k for k in result.notes if k not in ("intensity_range", "source_shape")))
    return KneeScan(
        input=str(folder),
        kind=kind,
        subject_id=_subject(subject),
        side=series.side,
        visit=visit,
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
        expected = Expected(
            subject_id=int(row.subject_id),
            side=row.side,
            sequence=params.sequence,
            index_folder=row.series_folder,
            description=row.series_description,
            root=Path(row.visit_dir),
            given_by="the release index",
        )
        folder = Path(row.visit_dir) / row.series_folder
        scans.append(series_scan(folder, params, view, expected, "release", visit=int(row.visit)))
        progress("reading series", n, len(chosen))
    return scans


def store_scans(
    run: TrainedRun, path: Path, knees: list[tuple[int, str]] | None, visit: int, db: Database | None
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
    """Every image series below ``root``: those its indexes (``contents.csv``, ``image03.txt``)
    list, and those of an image download without an index, read from their DICOM headers."""
    from oaicohort.release.discovery import CONTENTS, IMAGE03, discover
    from oaicohort.release.image_index import read_contents, read_image03
    from oaicohort.release.image_scan import index_unlisted
    from oaicohort.release.text import load_source

    found = discover(root)
    listed: set[str] = set()
    readers = {CONTENTS: read_contents, IMAGE03: read_image03}
    frames = [readers[s.kind](load_source(s), None, listed) for s in found.sources if s.kind in readers]
    agreement, _ = index_unlisted(Path(root), frames, listed, found.image_series)
    frames = [f for f in agreement.series if len(f)]
    if not frames:
        raise InputFileError(root, "no image series below this folder (no contents.csv, image03.txt or DICOM folders)")
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
    root: Path | None = None,
) -> list[KneeScan]:
    """The knees ``sides`` of the bilateral radiograph in ``folder``, cropped as the store's ROIs."""
    radiograph = load_radiograph(folder, Expected(subject_id=subject_id, root=root))
    crops = preprocess_xray(radiograph, params, sides)
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
    """The knees (all, or ``knees`` in their order) of the release's radiographs at ``visit``; at
    baseline a participant without one has the screening radiograph (P01) when the store's
    parameters say so, as ``oai preprocess --view xray`` takes it."""
    series = release_index(root)
    visits = [visit, SCREENING_VISIT] if visit == 0 and params.xray_baseline_from_screening else [visit]
    series = series[(series["sequence"] == params.xray_sequence.upper()) & series["visit"].isin(visits)]
    series = series.assign(_screening=series["visit"] != visit).sort_values(["subject_id", "_screening"], kind="stable")
    series = series[~series.duplicated(["subject_id", "_screening"], keep="last")]  # one bilateral image per visit
    series = series.drop_duplicates(["subject_id"], keep="first").drop(columns="_screening")  # the visit's own first
    slots = pd.concat([series.assign(side=side) for side in SIDES]).sort_values(["subject_id", "side"], kind="stable")
    slots = slots.rename(columns={"folder": "series_folder"}).assign(position=range(len(slots)))
    chosen = select_slots(slots, knees, where=f"{root} ({params.xray_sequence}, visit {visit})")
    wanted: dict[tuple[int, str, str], list[str]] = {}  # each radiograph read once
    for row in chosen.itertuples(index=False):
        wanted.setdefault((int(row.subject_id), str(row.visit_dir), str(row.series_folder)), []).append(row.side)
    scans: dict[tuple[int, str], KneeScan] = {}
    for n, ((subject, visit_dir, folder), sides) in enumerate(wanted.items(), start=1):
        path = Path(visit_dir) / folder
        for scan in radiograph_scans(
            path, params, sides, "release", subject_id=subject, visit=visit, root=Path(visit_dir)
        ):
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
    db: Database | None,
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
            in_memory.append(series_scan(path, params, run.view, folder_expected(params, side), "series"))
    if in_memory:
        groups.append((in_memory, None))
    return groups
