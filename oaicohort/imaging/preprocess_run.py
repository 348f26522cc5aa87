"""``oai preprocess``: every indexed DESS series of a visit -> volumes in a store, indexed in the DB.

Workers (processes) read and preprocess series, which is where the time goes (DICOM decoding);
the parent is the only writer of the store and the database. Per series it writes all requested
views' data and keys first and then, in one transaction, inserts their ``volumes`` rows, so a
row always describes complete data. A run killed in between leaves orphan slots (data without a
row) that the next run reuses; the index never points at incomplete data.

Re-runs do only what is missing: (knee, visit, view) triples with an ``ok`` row for this store
and parameter set are skipped, ``failed`` ones are retried.
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import logging
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, delete, func, select

from oaicohort.db import Database
from oaicohort.db.schema import ImageSeries, Knee, Volume
from oaicohort.errors import ConcurrentWriteError, DatabaseStateError, InputFileError, OAIError
from oaicohort.files import no_world_write
from oaicohort.imaging.consistency import check_series
from oaicohort.imaging.geometry import GEOMETRY_NOTE, series_geometry
from oaicohort.imaging.orientation import to_canonical
from oaicohort.imaging.preprocessing import PreprocessParams
from oaicohort.imaging.series_size import ImageTooSmall
from oaicohort.imaging.series_source import series_folder
from oaicohort.imaging.store import VolumeStore, knee_key, resolve_store_path
from oaicohort.imaging.store_checks import check_store_present
from oaicohort.imaging.volume_transforms import ReadSeries, SeriesLike, preprocess_series
from oaicohort.interrupts import stop_pool
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.vocabulary import MRI_VIEWS, SIDES

log = logging.getLogger(__name__)


SeriesReader = Callable[[Path], ReadSeries]


class PreprocessFailure(OAIError):
    """A series could not be preprocessed and the run was strict."""


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


@dataclass
class PreprocessSummary:
    """Counts of a run (in series) and the failures with their reasons."""

    store_path: str
    params_hash: str
    views: tuple[str, ...]
    visit: int
    selected: int = 0  # series of the visit with a knee side
    skipped: int = 0  # every requested view already ok
    done: int = 0
    failed: int = 0
    remaining: int = 0  # left for a later run by --limit
    volumes_written: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    worker_seconds: float = 0.0  # summed read + preprocess time inside the workers
    worker_cpu_seconds: float = 0.0
    worker_peak_rss_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["views"] = list(self.views)
        return out


def default_reader(folder: Path) -> ReadSeries:
    from oaicohort.imaging.dicom_series import read_series

    return read_series(folder)


def _work(task: SeriesTask, params: PreprocessParams, reader: SeriesReader | None) -> SeriesOutcome:
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
        geometry = series_geometry(series)  # for the NIfTI affine (oaicohort.imaging.geometry)
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


def _resolved(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise InputFileError(path, f"cannot resolve the path: {exc}") from None


def check_within(folder: Path, root: Path) -> None:
    """Refuse a series folder, or a slice file in it, that resolves outside ``root`` (the visit
    folder recorded at ingest) through ``..`` or a symbolic link: the index may have been edited
    or written by an older toolkit, and nothing outside the user's release is ever read."""
    base = _resolved(root)
    real = _resolved(folder)
    if not real.is_relative_to(base):
        raise InputFileError(folder, f"series folder resolves to {real}, outside its visit folder {base}; refused")
    if not real.is_dir():
        return  # the reader says what is wrong with it
    with os.scandir(real) as entries:  # closed on the refusal too
        for entry in entries:
            if entry.is_symlink():
                target = _resolved(Path(entry.path))
                if not target.is_relative_to(base):
                    raise InputFileError(
                        entry.path, f"slice file links to {target}, outside the visit folder {base}; refused"
                    )


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


# --------------------------------------------------------------------------- selection


def select_tasks(
    db: Database, store_path: str, params: PreprocessParams, views: tuple[str, ...], visit: int
) -> tuple[list[SeriesTask], int]:
    """Series of ``visit`` whose requested views are not yet ``ok``; also the number selected."""
    params_hash = params.hash()
    with db.write() as session:
        series_rows = (
            session.execute(
                select(ImageSeries)
                .where(
                    ImageSeries.visit == visit,
                    ImageSeries.side.in_(SIDES),
                    ImageSeries.sequence == params.sequence,
                )
                .order_by(ImageSeries.subject_id, ImageSeries.side)
            )
            .scalars()
            .all()
        )
        knees = {(k.subject_id, k.side): k.id for k in session.execute(select(Knee)).scalars()}
        for s in series_rows:  # a knee with an image but no X-ray reading still needs a row
            if (s.subject_id, s.side) not in knees:
                knee = Knee(subject_id=s.subject_id, side=s.side)
                session.add(knee)
                session.flush()
                knees[(s.subject_id, s.side)] = knee.id
        done = {
            (v.knee_id, v.view)
            for v in session.execute(
                select(Volume).where(
                    Volume.store_path == store_path,
                    Volume.params_hash == params_hash,
                    Volume.visit == visit,
                    Volume.status == "ok",
                )
            ).scalars()
        }
        tasks = []
        for s in series_rows:
            knee_id = knees[(s.subject_id, s.side)]
            missing = tuple(v for v in views if (knee_id, v) not in done)
            if missing:
                tasks.append(
                    SeriesTask(
                        series_id=s.id,
                        knee_id=knee_id,
                        subject_id=s.subject_id,
                        side=s.side,
                        visit=visit,
                        folder=Path(s.visit_dir) / s.folder,
                        views=missing,
                        root=Path(s.visit_dir),
                        index_folder=s.folder,
                        description=s.series_description,
                    )
                )
    return tasks, len(series_rows)


# --------------------------------------------------------------------------- slots


class SlotAllocator:
    """Hands out store positions not referenced by an ``ok`` row: empty or orphan slots first."""

    def __init__(self, db: Database, store: VolumeStore, views: tuple[str, ...]) -> None:
        self.store = store
        self.free: dict[str, list[int]] = {}
        with db.read() as session:
            for view in views:
                used = set(
                    session.execute(
                        select(Volume.position).where(
                            Volume.store_path == str(store.path),
                            Volume.params_hash == store.params_hash,
                            Volume.view == view,
                            Volume.status == "ok",
                        )
                    ).scalars()
                )
                capacity = store.capacity(view)
                self.free[view] = sorted(set(range(capacity)) - used, reverse=True)

    def reserve(self, view: str, count: int) -> None:
        """Grow the array once so ``count`` more volumes fit (no resize per volume)."""
        missing = count - len(self.free[view])
        if missing > 0:
            start = self.store.capacity(view)
            self.store.grow(view, start + missing)
            self.free[view] = list(range(start + missing - 1, start - 1, -1)) + self.free[view]

    def take(self, view: str) -> int:
        if not self.free[view]:
            self.reserve(view, 1)
        return self.free[view].pop()


@contextmanager
def writer_lock(store: VolumeStore) -> Iterator[None]:
    """One ``oai preprocess`` per store at a time (an advisory lock on the group's zarr.json)."""
    with open(store.path / "zarr.json", "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConcurrentWriteError(
                f"{store.path}: another `oai preprocess` is writing this store; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the run


def _record(db: Database, store: VolumeStore, outcome: SeriesOutcome, slots: SlotAllocator) -> int:
    """Write an outcome's volumes, then index them (or the failure) in one transaction."""
    task = outcome.task
    rows: list[Volume] = []
    if outcome.reason is None:
        key = knee_key(task.subject_id, task.side)
        for view in task.views:
            volume = outcome.volumes[view]
            position = slots.take(view)
            checksum = store.write(view, position, volume, key=key, visit=task.visit)
            rows.append(
                Volume(
                    knee_id=task.knee_id,
                    series_id=task.series_id,
                    visit=task.visit,
                    view=view,
                    store_path=str(store.path),
                    params_hash=store.params_hash,
                    array_path=view,
                    position=position,
                    shape=list(volume.shape),
                    spacing_mm=[round(v, 6) for v in outcome.spacing_mm[view]],
                    checksum=checksum,
                    status="ok",
                    notes=outcome.notes,
                )
            )
    else:
        rows = [
            Volume(
                knee_id=task.knee_id,
                series_id=task.series_id,
                visit=task.visit,
                view=view,
                store_path=str(store.path),
                params_hash=store.params_hash,
                status="failed",
                reason=outcome.reason,
            )
            for view in task.views
        ]
    with db.write() as session:
        if session.get(ImageSeries, task.series_id) is None:
            # a concurrent ingest of a newer release dropped the series from the index: its data
            # stays an orphan slot (reused later) and nothing points at a series that is gone
            outcome.reason = f"{task.folder}: the series left the database index while it was read"
            return 0
        session.execute(
            delete(Volume).where(
                Volume.store_path == str(store.path),
                Volume.params_hash == store.params_hash,
                Volume.knee_id == task.knee_id,
                Volume.visit == task.visit,
                Volume.view.in_(task.views),
            )
        )
        session.add_all(rows)
    return len(rows) if outcome.reason is None else 0


def _forget_stale_rows(db: Database, store: VolumeStore) -> None:
    """A freshly created store has no volumes: rows left by a deleted store at the path are stale."""
    with db.write() as session:
        # a DML statement returns a CursorResult (with rowcount); the stubs type every execute as Result
        result = cast(CursorResult[Any], session.execute(delete(Volume).where(Volume.store_path == str(store.path))))
    if result.rowcount:
        log.warning("%s: removed %d index rows of an earlier store at this path", store.path, result.rowcount)


def _outcomes(
    tasks: list[SeriesTask], params: PreprocessParams, workers: int, reader: SeriesReader | None
) -> Iterator[SeriesOutcome]:
    if workers <= 1:
        for task in tasks:
            yield _work(task, params, reader)
        return
    # spawn: the parent holds zarr's event-loop thread and DB connections, unsafe to fork
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: set[cf.Future[SeriesOutcome]] = set()
        queue = iter(tasks)
        try:
            for task in queue:  # at most 2 results per worker in memory
                pending.add(pool.submit(_work, task, params, reader))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(_work, nxt, params, reader))
        except BaseException:  # interrupted, terminated or failed: stop the workers now
            stop_pool(pool)
            raise
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


@no_world_write()  # the store's files and folders, whatever the caller's umask
def run_preprocess(
    db: Database,
    store_path: str | os.PathLike[str],
    params: PreprocessParams | None = None,
    *,
    views: tuple[str, ...] = ("sag",),
    visit: int = 0,
    workers: int = 1,
    strict: bool = False,
    limit: int | None = None,
    reader: SeriesReader | None = None,
    progress: ProgressCallback = no_progress,
    replace_missing_store: bool = False,
) -> PreprocessSummary:
    """Preprocess the visit's DESS series into the store at ``store_path``; see the module doc.

    A missing (or empty) store path where the database indexes volumes is an error (an unmounted
    disk must not become a fresh store that replaces the index) unless ``replace_missing_store``.

    ``params`` defaults to the store's own parameters when it exists, else the full preset.
    ``reader`` (a picklable function folder -> series) replaces the DICOM reader in tests.
    """
    start = time.perf_counter()
    unknown = [v for v in views if v not in MRI_VIEWS]
    if unknown or not views:
        raise ValueError(f"unknown views {unknown}; choose from {MRI_VIEWS}")
    path = resolve_store_path(store_path)
    created = not path.exists() or not any(path.iterdir())
    if params is None:
        params = VolumeStore.open(path).params if not created else PreprocessParams.full()
    with db.read() as session:
        indexed = session.execute(
            select(func.count())
            .select_from(ImageSeries)
            .where(ImageSeries.visit == visit, ImageSeries.sequence == params.sequence)
        ).scalar_one()
    if not indexed:
        raise DatabaseStateError(
            f"no {params.sequence} series of visit {visit} in the database {db.url}; "
            "run `oai ingest` on a release with its image packages (contents.csv) first"
        )
    if created and not replace_missing_store:
        with db.read() as session:
            indexed_here = session.execute(
                select(func.count()).select_from(Volume).where(Volume.store_path == str(path))
            ).scalar_one()
        check_store_present(indexed_here, path)
    store = VolumeStore.open_or_create(path, params, views=views)
    summary = PreprocessSummary(str(store.path), store.params_hash, tuple(views), visit)
    with writer_lock(store):
        if created:
            _forget_stale_rows(db, store)
        tasks, summary.selected = select_tasks(db, str(store.path), params, tuple(views), visit)
        summary.skipped = summary.selected - len(tasks)
        if limit is not None and limit >= 0 and len(tasks) > limit:
            summary.remaining = len(tasks) - limit
            tasks = tasks[:limit]
        log.info(
            "%s: %d series selected, %d already done, %d to process",
            store.path,
            summary.selected,
            summary.skipped,
            len(tasks),
        )
        slots = SlotAllocator(db, store, tuple(views))
        for view in views:
            slots.reserve(view, sum(view in t.views for t in tasks))
        total = len(tasks)
        progress("preprocess", 0, total)
        for n, outcome in enumerate(_outcomes(tasks, params, max(1, workers), reader), start=1):
            summary.volumes_written += _record(db, store, outcome, slots)
            summary.worker_seconds += outcome.seconds
            summary.worker_cpu_seconds += outcome.cpu_seconds
            summary.worker_peak_rss_mb = max(summary.worker_peak_rss_mb, round(outcome.peak_rss_mb, 1))
            if outcome.reason is None:
                summary.done += 1
            else:
                summary.failed += 1
                summary.failures.append(
                    {
                        "series_id": outcome.task.series_id,
                        "subject_id": outcome.task.subject_id,
                        "side": outcome.task.side,
                        "folder": str(outcome.task.folder),
                        "reason": outcome.reason,
                    }
                )
                log.warning("failed: %s", outcome.reason)
                if strict:
                    raise PreprocessFailure(f"--strict: {outcome.reason}")
            progress("preprocess", n, total)
    summary.seconds = round(time.perf_counter() - start, 3)
    summary.worker_seconds = round(summary.worker_seconds, 3)
    summary.worker_cpu_seconds = round(summary.worker_cpu_seconds, 3)
    return summary
