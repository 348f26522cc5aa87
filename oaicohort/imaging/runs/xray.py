"""``oai preprocess --view xray``: baseline bilateral PA radiographs -> knee ROIs in the store.

Every indexed series of the visit whose sequence is ``params.xray_sequence`` (the contents.csv
description ``Bilateral PA Fixed Flexion Knee``) is read (``xray_reader``), split into its two
knees (screen-left = right knee), each joint centre is found by the classical localiser
(``xray_localiser``) or taken from a landmark file (``--roi-file``), and the ROI is cropped,
resampled and normalised (``xray_preprocessing``) into the store's ``xray`` array. Per knee the
database gets a ``volumes`` row (view ``xray``; failures with their reason) and, for stored
ROIs, an ``xray_rois`` row with the box, source pixel size and localiser. A QC montage PNG of
the crops (and a CSV naming its tiles) is written per batch beside the store, in
``<store>.qc/``.

A participant without a baseline bilateral PA takes the screening visit's (``P01``: many baseline
radiographs are in the screening package) when ``xray_baseline_from_screening`` (the default; a
preprocessing parameter, so a store made without it has another hash). The knee's ``volumes`` row
then stands for the baseline visit, points at the screening series and says
``notes["source_visit"] = "P01"``; the summary counts such knees (``from_screening``).

ROI file (``--roi-file``), e.g. joint centres from KNEEL or BoneFinder: a CSV with a header and
the columns ``subject_id, side, row, col`` and optionally ``visit`` (default: the run's visit).
``side`` is R or L (or right/left); ``row``/``col`` are the joint centre in pixels of the
bilateral image as stored in its DICOM file (0-based, row down, column right; fractions
allowed). A knee missing from the file is a recorded failure, never localised silently.

Resumable like the MRI run: knees with an ``ok`` xray row for this store are skipped.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from oaicohort.db import Database
from oaicohort.db.schema import ImageSeries, XrayRoi
from oaicohort.errors import DatabaseStateError, InputFileError
from oaicohort.files import no_world_write
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.recipe.xray_knees import crop_knees
from oaicohort.imaging.recipe.xray_localiser import LOCALISER_NAME
from oaicohort.imaging.runs.writer import (
    SlotAllocator,
    count_outcome,
    has_series,
    index_knees,
    ok_volumes,
    replace_rows,
    store_target,
    take_tasks,
    volume_row,
    write_results,
    writing,
)
from oaicohort.imaging.series.radiograph import read_radiograph
from oaicohort.imaging.series.source import check_within, series_folder
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.visits import SCREENING_VISIT, visit_name
from oaicohort.vocabulary import SIDES, XRAY_VIEW

log = logging.getLogger(__name__)

ROI_FILE_LOCALISER = "roi-file"
QC_BATCH = 64
Landmarks = dict[tuple[int, str, int], tuple[float, float]]


@dataclass(frozen=True)
class RadiographTask:
    series_id: int
    subject_id: int
    visit: int  # the visit the ROIs stand for (the run's)
    folder: Path
    root: Path
    knees: tuple[tuple[str, int], ...]  # (side, knee_id) still to do
    source_visit: int | None = None  # the visit of the radiograph when another one's (screening for baseline)


@dataclass
class KneeOutcome:
    side: str
    knee_id: int
    image: np.ndarray | None = None
    centre: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    spacing_mm: float | None = None
    source_shape: tuple[int, int] | None = None
    localiser: str = LOCALISER_NAME
    score: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass
class XrayPreprocessSummary:
    store_path: str
    params_hash: str
    visit: int
    localiser: str
    selected: int = 0  # knees of the selected series
    from_screening: int = 0  # of them, knees whose baseline radiograph is the screening visit's (P01)
    skipped: int = 0
    done: int = 0
    failed: int = 0
    remaining: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    qc_montages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_roi_file(path: Path | str, visit: int) -> Landmarks:
    """Joint centres from an external landmark tool (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "ROI file not found")
    out: Landmarks = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
        missing = {"subject_id", "side", "row", "col"} - set(header)
        if missing:
            raise InputFileError(path, f"missing column(s) {sorted(missing)}; need subject_id, side, row, col", line=1)
        for line, raw in enumerate(reader, start=2):
            row = {k: (raw.get(v) or "").strip() for k, v in header.items()}
            side = {"r": "R", "right": "R", "l": "L", "left": "L"}.get(row["side"].lower())
            if side is None:
                raise InputFileError(path, f"side {row['side']!r} is not R or L", line=line, column="side")
            try:
                subject = int(row["subject_id"])
                row_visit = int(row["visit"]) if row.get("visit") else visit
            except ValueError:
                raise InputFileError(path, "subject_id and visit must be integers", line=line) from None
            try:
                centre = (float(row["row"]), float(row["col"]))
            except ValueError:
                raise InputFileError(
                    path, f"row/col {row['row']!r}, {row['col']!r} are not numbers", line=line
                ) from None
            if not all(np.isfinite(centre)):
                raise InputFileError(path, "row/col must be finite numbers", line=line)
            if (subject, side, row_visit) in out:
                raise InputFileError(path, f"subject {subject} side {side} listed twice", line=line)
            out[(subject, side, row_visit)] = centre
    return out


def _work(task: RadiographTask, params: PreprocessParams, landmarks: Landmarks | None) -> list[KneeOutcome]:
    """Read one radiograph and crop its knees (runs in a worker; never raises)."""
    outcomes = [KneeOutcome(side, knee_id) for side, knee_id in task.knees]
    centres = None
    if landmarks is not None:
        centres = {}
        for outcome in outcomes:
            outcome.localiser = ROI_FILE_LOCALISER
            centre = landmarks.get((task.subject_id, outcome.side, task.visit))
            if centre is None:
                outcome.reason = (
                    f"{task.folder}: no landmarks for subject {task.subject_id} side {outcome.side} in the ROI file"
                )
            else:
                centres[outcome.side] = centre
    todo = [o for o in outcomes if o.reason is None]
    try:
        check_within(task.folder, task.root)
        with series_folder(task.folder) as folder:  # a series in a zipped package is unpacked while read
            radiograph = read_radiograph(folder)
        crops = crop_knees(radiograph.pixels, radiograph.spacing_mm, params, [o.side for o in todo], centres)
    except (InputFileError, ValueError, OSError) as exc:
        for outcome in todo:
            outcome.reason = str(exc)
        return outcomes
    for outcome in todo:
        crop = crops[outcome.side]
        if isinstance(crop, str):
            outcome.reason = f"{task.folder}: {crop}"
            continue
        outcome.image, outcome.box = crop.roi.image, crop.roi.box
        outcome.centre, outcome.score = crop.centre, crop.score
        outcome.spacing_mm, outcome.source_shape = radiograph.spacing_mm, tuple(radiograph.pixels.shape)
        outcome.notes = {**crop.roi.notes, **({"reader_notes": radiograph.notes} if radiograph.notes else {})}
    return outcomes


def select_xray_tasks(
    db: Database, store: VolumeStore, params: PreprocessParams, visit: int
) -> tuple[list[RadiographTask], int, int]:
    """Bilateral series of ``visit`` with a knee not yet ``ok`` in the store; also the knee count
    and how many of them take the screening radiograph (a baseline run with
    ``xray_baseline_from_screening``, for participants without a baseline one)."""
    visits = [visit, SCREENING_VISIT] if visit == 0 and params.xray_baseline_from_screening else [visit]
    with db.write() as session:
        series = (
            session.execute(
                select(ImageSeries)
                .where(ImageSeries.visit.in_(visits), ImageSeries.sequence == params.xray_sequence.upper())
                .order_by(ImageSeries.subject_id, ImageSeries.id)
            )
            .scalars()
            .all()
        )
        # the run's own visit first: the screening radiograph only stands in for a missing one
        series = sorted(series, key=lambda s: (s.subject_id, s.visit != visit, s.id))
        knees = index_knees(session, ((s.subject_id, side) for s in series for side in SIDES))
        done = {knee_id for knee_id, view in ok_volumes(session, store, visit) if view == XRAY_VIEW}
        tasks, seen, screened = [], set(), 0
        for s in series:
            if s.subject_id in seen:  # one bilateral image per subject and visit
                continue
            seen.add(s.subject_id)
            screened += 2 * (s.visit != visit)
            todo = tuple(
                (side, knees[(s.subject_id, side)]) for side in SIDES if knees[(s.subject_id, side)] not in done
            )
            if todo:
                source = s.visit if s.visit != visit else None
                folder, root = Path(s.visit_dir) / s.folder, Path(s.visit_dir)
                tasks.append(RadiographTask(s.id, s.subject_id, visit, folder, root, todo, source))
    return tasks, 2 * len(seen), screened


def _record(db: Database, store: VolumeStore, task: RadiographTask, outcome: KneeOutcome, slots: SlotAllocator) -> None:
    """Write a knee's ROI and its key, then index it (or the failure) in one transaction."""
    volume = volume_row(
        store,
        knee_id=outcome.knee_id,
        series_id=task.series_id,
        visit=task.visit,
        view=XRAY_VIEW,
        reason=outcome.reason,
    )
    roi = None
    if outcome.reason is None and outcome.image is not None:
        position = slots.take(XRAY_VIEW)
        key = knee_key(task.subject_id, outcome.side)
        volume.checksum = store.write(XRAY_VIEW, position, outcome.image, key=key, visit=task.visit)
        step = store.params.xray_roi_mm / store.params.xray_size
        volume.array_path, volume.position = XRAY_VIEW, position
        volume.shape, volume.spacing_mm = list(outcome.image.shape), [0.0, step, step]
        volume.notes = outcome.notes
        if task.source_visit is not None:  # which radiograph the knee's ROI came from
            volume.notes = {**outcome.notes, "source_visit": visit_name(task.source_visit)}
        assert outcome.centre and outcome.box and outcome.spacing_mm and outcome.source_shape
        roi = XrayRoi(
            localiser=outcome.localiser,
            centre_row=round(outcome.centre[0], 3),
            centre_col=round(outcome.centre[1], 3),
            box=[round(v, 3) for v in outcome.box],
            source_spacing_mm=outcome.spacing_mm,
            source_shape=list(outcome.source_shape),
            score=None if outcome.score is None else round(outcome.score, 4),
        )
    with db.write() as session:
        replace_rows(session, store, outcome.knee_id, task.visit, (XRAY_VIEW,), (volume,))
        if roi is not None:
            session.flush()
            roi.volume_id = volume.id
            session.add(roi)


def write_montage(path: Path, tiles: list[tuple[str, np.ndarray]]) -> Path:
    """A grid PNG of ROI crops (each shown at half size) and a CSV naming the tiles in order."""
    from matplotlib import image as mpl_image  # only here: the rest of the run needs no matplotlib

    size = tiles[0][1].shape[-1] // 2
    per_row = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / per_row))
    grid = np.zeros((rows * size, per_row * size), dtype=np.uint8)
    for i, (_name, crop) in enumerate(tiles):
        thumb = crop[0, : 2 * size, : 2 * size].reshape(size, 2, size, 2).mean(axis=(1, 3)).astype(np.uint8)
        r, c = divmod(i, per_row)
        grid[r * size : (r + 1) * size, c * size : (c + 1) * size] = thumb
    path.parent.mkdir(parents=True, exist_ok=True)
    mpl_image.imsave(path, grid, cmap="gray", vmin=0, vmax=255)
    with path.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tile", "grid_row", "grid_col", "knee"])
        for i, (name, _crop) in enumerate(tiles):
            writer.writerow([i, *divmod(i, per_row), name])
    return path


@no_world_write()
def run_xray_preprocess(
    db: Database,
    store_path: str | os.PathLike[str],
    params: PreprocessParams | None = None,
    *,
    visit: int = 0,
    roi_file: Path | str | None = None,
    workers: int = 1,
    strict: bool = False,
    limit: int | None = None,
    progress: ProgressCallback = no_progress,
) -> XrayPreprocessSummary:
    """Preprocess the visit's bilateral PA radiographs into the store's ``xray`` array."""
    start = time.perf_counter()
    path, params, created = store_target(store_path, params)
    landmarks = read_roi_file(roi_file, visit) if roi_file is not None else None
    sequence = params.xray_sequence.upper()
    screening = visit == 0 and params.xray_baseline_from_screening
    if not has_series(db, visit, sequence) and not (screening and has_series(db, SCREENING_VISIT, sequence)):
        raise DatabaseStateError(
            f"no {params.xray_sequence!r} radiographs of visit {visit} in the database {db.url}; run `oai ingest` "
            "on a release with its X-ray image packages (indexed or not) first"
        )
    store = VolumeStore.open_or_create(path, params, views=(XRAY_VIEW,))
    localiser = ROI_FILE_LOCALISER if landmarks is not None else LOCALISER_NAME
    summary = XrayPreprocessSummary(str(store.path), store.params_hash, visit, localiser)
    qc_dir = store.path.parent / f"{store.path.name}.qc"
    tiles: list[tuple[str, np.ndarray]] = []

    def write_qc_montage() -> None:
        name = f"xray_visit{visit:02d}_{tiles[0][0]}-{tiles[-1][0]}.png"
        summary.qc_montages.append(str(write_montage(qc_dir / name, tiles)))
        tiles.clear()

    with writing(db, store, created=created):
        tasks, selected, summary.from_screening = select_xray_tasks(db, store, params, visit)
        tasks = take_tasks(summary, tasks, selected, limit, size=lambda task: len(task.knees))
        slots = SlotAllocator(db, store, (XRAY_VIEW,))
        slots.reserve(XRAY_VIEW, sum(len(t.knees) for t in tasks))

        def write(task: RadiographTask, outcomes: list[KneeOutcome]) -> None:
            for outcome in outcomes:
                _record(db, store, task, outcome, slots)
                if outcome.reason is None and outcome.image is not None:
                    tiles.append((f"{task.subject_id}{outcome.side}", outcome.image))
                count_outcome(summary, outcome.reason, strict=strict, subject_id=task.subject_id, side=outcome.side)
            if len(tiles) >= QC_BATCH:
                write_qc_montage()

        # in task order: the QC montages follow the subjects
        write_results(
            _work,
            tasks,
            (params, landmarks),
            write,
            workers=workers,
            progress=progress,
            label="preprocess xray",
            ordered=True,
        )
        if tiles:
            write_qc_montage()
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary
