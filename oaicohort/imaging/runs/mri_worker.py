"""One MR series read and preprocessed, in a worker process of ``oai preprocess`` (``runs.mri``).

The worker loads the series as ``oai predict`` does (``oaicohort.imaging.series.load``: inside its
visit folder, checked against the index, in canonical order) and runs the MRI recipe on it
(``preprocess_mri``), returning the stored volumes of every requested view, or the reason there
are none. It never raises: one bad series must not stop the others.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.errors import InputFileError
from oaicohort.imaging.recipe.extent import extent_notes
from oaicohort.imaging.recipe.mri import preprocess_mri
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.series.load import Expected, SeriesReader, load_series
from oaicohort.imaging.series.size import ImageTooSmall
from oaicohort.imaging.store.geometry import GEOMETRY_NOTE, series_geometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesTask:
    """One series to preprocess, the views it still lacks, and what the index says of it."""

    series_id: int
    knee_id: int
    subject_id: int
    side: str
    visit: int
    folder: Path
    views: tuple[str, ...]
    root: Path | None = None  # the visit folder recorded at ingest; nothing outside it is read
    index_folder: str | None = None  # contents.csv Folder and SeriesDescription (series.consistency)
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


def expected_of(task: SeriesTask, params: PreprocessParams) -> Expected:
    """What the index says of the task's series."""
    return Expected(
        subject_id=task.subject_id,
        side=task.side,
        sequence=params.sequence,
        index_folder=task.index_folder,
        description=task.description,
        root=task.root,
    )


def preprocess_task(task: SeriesTask, params: PreprocessParams, reader: SeriesReader | None) -> SeriesOutcome:
    """Load and preprocess one series (runs in a worker process; never raises)."""
    start, cpu = time.perf_counter(), time.process_time()
    outcome = SeriesOutcome(task=task)
    try:
        series = load_series(task.folder, params, expected_of(task, params), reader=reader)
        result = preprocess_mri(series, params, task.views)
        outcome.volumes = result.volumes
        outcome.spacing_mm = result.spacing_mm
        outcome.notes = result.notes
        # where a padded series' volumes hold real data: random crops are drawn inside it
        outcome.notes.update(extent_notes(result.notes["source_shape"], params, task.views))
        geometry = series_geometry(series.source)  # for the NIfTI affine (oaicohort.imaging.store.geometry)
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
