"""One MR series read and preprocessed, in a worker process of ``oai preprocess`` (``preprocess_run``).

The worker checks what it reads against the index (the folder stays inside its visit folder,
participant, description, orientation and side agree), reorients the series to the canonical
order, and returns the stored volumes of every requested view, or the reason there are none.
It never raises: one bad series must not stop the others.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.errors import InputFileError
from oaicohort.imaging.recipe.extent import extent_notes
from oaicohort.imaging.recipe.mri import ReadSeries, SeriesLike, preprocess_series
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.series.consistency import check_series
from oaicohort.imaging.series.orientation import to_canonical
from oaicohort.imaging.series.size import ImageTooSmall
from oaicohort.imaging.series.source import check_within, series_folder
from oaicohort.imaging.store.geometry import GEOMETRY_NOTE, series_geometry
from oaicohort.vocabulary import SIDES

log = logging.getLogger(__name__)

SeriesReader = Callable[[Path], ReadSeries]


@dataclass(frozen=True)
class SeriesTask:
    """One series to preprocess and the views it still lacks."""

    series_id: int
    knee_id: int
    subject_id: int
    side: str
    visit: int
    folder: Path
    views: tuple[str, ...]
    root: Path | None = None  # the visit folder recorded at ingest; nothing outside it is read
    index_folder: str | None = None  # contents.csv Folder and SeriesDescription (imaging.consistency)
    description: str | None = None


@dataclass
class SeriesOutcome:
    """What a worker sends back: the volumes, or the reason they could not be made."""

    task: SeriesTask
    volumes: dict[str, np.ndarray] = field(default_factory=dict)
    spacing_mm: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0  # of the process that did the work, for the memory budget


def default_reader(folder: Path) -> ReadSeries:
    from oaicohort.imaging.series.dicom import read_series

    return read_series(folder)


def preprocess_task(task: SeriesTask, params: PreprocessParams, reader: SeriesReader | None) -> SeriesOutcome:
    """Read and preprocess one series (runs in a worker process; never raises)."""
    start, cpu = time.perf_counter(), time.process_time()
    outcome = SeriesOutcome(task=task)
    try:
        if task.root is not None:
            check_within(task.folder, task.root)
        with series_folder(task.folder) as folder:  # a .tar.gz series (NDA) is unpacked while read
            series = (reader or default_reader)(folder)
        check_series(
            series,
            folder=task.folder,
            subject_id=task.subject_id,
            index_folder=task.index_folder,
            index_description=task.description,
        )
        side = getattr(series, "side", None)
        if side in SIDES and side != task.side:
            raise InputFileError(task.folder, f"series says knee side {side} but the index says {task.side}")
        if params.canonical_orientation and hasattr(series, "orientation"):
            # readers returning plain arrays (tests) give them in canonical order themselves
            series = to_canonical(series)
        result = preprocess_series(_with_side(series, task.side), params, task.views)
        outcome.volumes = result.volumes
        outcome.spacing_mm = result.spacing_mm
        outcome.notes = result.notes
        # where a padded series' volumes hold real data: random crops are drawn inside it
        outcome.notes.update(extent_notes(result.notes["source_shape"], params, task.views))
        geometry = series_geometry(series)  # for the NIfTI affine (oaicohort.imaging.store.geometry)
        if geometry is not None:
            outcome.notes[GEOMETRY_NOTE] = geometry
    except InputFileError as exc:
        outcome.reason = str(exc)
    except ImageTooSmall as exc:
        outcome.reason = f"{exc} ({task.folder})"
    except (ValueError, OSError) as exc:
        outcome.reason = f"{task.folder}: {exc}"
    except Exception as exc:  # a bug must not stop the other series; its type tells us where
        log.debug("unexpected failure on %s", task.folder, exc_info=True)
        outcome.reason = f"{task.folder}: {type(exc).__name__}: {exc}"
    outcome.seconds = time.perf_counter() - start
    outcome.cpu_seconds = time.process_time() - cpu
    outcome.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return outcome


@dataclass(frozen=True)
class _Sided:
    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    side: str


def _with_side(series: ReadSeries, side: str) -> SeriesLike:
    # the index (contents.csv) decides the side when the series itself does not say (a side it
    # does say was checked against the index already)
    slice_mm, row_mm, col_mm = series.spacing_mm
    return _Sided(series.pixels, (slice_mm, row_mm, col_mm), side)
