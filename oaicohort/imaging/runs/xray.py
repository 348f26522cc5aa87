"""``oai preprocess --view xray``: baseline bilateral PA radiographs -> knee ROIs in the store.

Every indexed series of the visit whose sequence is ``params.xray_sequence`` (the contents.csv
description ``Bilateral PA Fixed Flexion Knee``) is loaded (``series.load.load_radiograph``, as
``oai predict`` does), split into its two knees (screen-left = right knee), each joint centre is
found by the classical localiser (``recipe.xray_localiser``) or taken from a landmark file
(``--roi-file``), and the ROI is cropped, resampled and normalised (``recipe.xray_knees.
preprocess_xray``) into the store's ``xray`` array. Per knee the
database gets a ``volumes`` row (view ``xray``; failures with their reason) and, for stored
ROIs, an ``xray_rois`` row with the box, source pixel size and localiser. A QC montage PNG of
the crops (and a CSV naming its tiles) is written per batch beside the store, in
``<store>.qc/``.

ROI file (``--roi-file``), e.g. joint centres from KNEEL or BoneFinder: a CSV with a header and
the columns ``subject_id, side, row, col`` and optionally ``visit`` (default: the run's visit).
``side`` is R or L (or right/left); ``row``/``col`` are the joint centre in pixels of the
bilateral image as stored in its DICOM file (0-based, row down, column right; fractions
allowed). A knee missing from the file is a recorded failure, never localised silently.

Resumable like the MRI run: knees with an ``ok`` xray row for this store are skipped. What every
run does (the store's identity, the missing-store guard and ``--replace-missing-store``, the
writer lock, slots, counts) is the store-run template's (``runs.template``); this module is the
radiograph job.

A participant without a baseline bilateral PA takes the screening visit's (``P01``: many baseline
radiographs are in the screening package) when ``xray_baseline_from_screening`` (the default; a
preprocessing parameter, so a store made without it has another hash). The knee's ``volumes`` row
then stands for the baseline visit, points at the screening series and says
``notes["source_visit"] = "P01"``; the summary counts such knees (``from_screening``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from oaicohort.db import Database
from oaicohort.db.schema import ImageSeries, XrayRoi
from oaicohort.errors import InputFileError
from oaicohort.files import no_world_write
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.recipe.xray_knees import preprocess_xray
from oaicohort.imaging.recipe.xray_localiser import LOCALISER_NAME
from oaicohort.imaging.runs.slots import SlotAllocator
from oaicohort.imaging.runs.template import Outcome, RunKind, RunSummary, run_store
from oaicohort.imaging.runs.writer import index_knees, ok_volumes, replace_rows, volume_row
from oaicohort.imaging.series.load import Expected, load_radiograph
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
class XrayPreprocessSummary(RunSummary):
    """Counts of a run (in knees), the failures with their reasons, and the QC montages written."""

    localiser: str = LOCALISER_NAME
    from_screening: int = 0  # of the selected knees, those whose baseline radiograph is the screening visit's (P01)
    qc_montages: list[str] = field(default_factory=list)


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
        radiograph = load_radiograph(task.folder, Expected(root=task.root))
        crops = preprocess_xray(radiograph, params, [o.side for o in todo], centres)
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


def radiograph_visits(params: PreprocessParams, visit: int) -> tuple[int, ...]:
    """The visits whose radiographs a run of ``visit`` reads: a baseline run also the screening
    visit's, for participants without a baseline one (``xray_baseline_from_screening``)."""
    return (visit, SCREENING_VISIT) if visit == 0 and params.xray_baseline_from_screening else (visit,)


def select_xray_tasks(
    db: Database, store: VolumeStore, params: PreprocessParams, visit: int
) -> tuple[list[RadiographTask], int, int]:
    """Bilateral series of ``visit`` with a knee not yet ``ok`` in the store; also the knee count
    and how many of them take the screening radiograph (``radiograph_visits``)."""
    visits = radiograph_visits(params, visit)
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
        step = store.params.xray_roi_mm / store.params.xray_stored_size
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


@dataclass
class XrayJob:
    """The radiograph part of a store run (``runs.template.StoreJob``)."""

    db: Database
    store: VolumeStore
    landmarks: Landmarks | None
    summary: XrayPreprocessSummary
    label: str = "preprocess xray"
    ordered: bool = True  # in task order: the QC montages follow the subjects
    tiles: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def select(self) -> tuple[list[RadiographTask], int]:
        tasks, selected, self.summary.from_screening = select_xray_tasks(
            self.db, self.store, self.store.params, self.summary.visit
        )
        return tasks, selected

    def units(self, task: RadiographTask) -> int:
        return len(task.knees)

    def slots(self, task: RadiographTask) -> Sequence[str]:
        return [XRAY_VIEW] * len(task.knees)

    def work(self) -> tuple[Callable[..., list[KneeOutcome]], tuple[Any, ...]]:
        return _work, (self.store.params, self.landmarks)

    def record(self, slots: SlotAllocator, task: RadiographTask, outcomes: list[KneeOutcome]) -> Iterator[Outcome]:
        for outcome in outcomes:
            _record(self.db, self.store, task, outcome, slots)
            if outcome.reason is None and outcome.image is not None:
                self.tiles.append((f"{task.subject_id}{outcome.side}", outcome.image))
            yield Outcome(outcome.reason, {"subject_id": task.subject_id, "side": outcome.side})
        if len(self.tiles) >= QC_BATCH:
            self.write_qc_montage()

    def finish(self) -> None:
        if self.tiles:
            self.write_qc_montage()

    def write_qc_montage(self) -> None:
        """A montage of the crops so far, beside the store in ``<store>.qc/``."""
        name = f"xray_visit{self.summary.visit:02d}_{self.tiles[0][0]}-{self.tiles[-1][0]}.png"
        qc_dir = self.store.path.parent / f"{self.store.path.name}.qc"
        self.summary.qc_montages.append(str(write_montage(qc_dir / name, self.tiles)))
        self.tiles.clear()


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
    replace_missing_store: bool = False,
) -> XrayPreprocessSummary:
    """Preprocess the visit's bilateral PA radiographs into the store's ``xray`` array.

    The store path is guarded as for MRI (``runs.template``): a missing or empty one where the
    database indexes a store is an error unless ``replace_missing_store``."""
    landmarks = read_roi_file(roi_file, visit) if roi_file is not None else None
    localiser = ROI_FILE_LOCALISER if landmarks is not None else LOCALISER_NAME
    kind = RunKind(
        (XRAY_VIEW,), lambda p: p.xray_sequence.upper(), "radiographs", "X-ray image packages", radiograph_visits
    )

    def job_for(store: VolumeStore) -> XrayJob:
        summary = XrayPreprocessSummary(
            str(store.path), str(store.ref.id), store.params_hash, visit, localiser=localiser
        )
        return XrayJob(db, store, landmarks, summary)

    summary = run_store(
        db, store_path, params, kind, job_for, visit=visit, workers=workers, strict=strict, limit=limit,
        progress=progress, replace_missing_store=replace_missing_store,
    )  # fmt: skip
    assert isinstance(summary, XrayPreprocessSummary)
    return summary
