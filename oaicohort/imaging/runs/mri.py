"""``oai preprocess``: every indexed DESS series of a visit -> volumes in a store, indexed in the DB.

Workers (processes) load and preprocess series (``mri_worker``), which is where the time goes
(DICOM decoding); the parent is the only writer of the store and the database. Per series it
writes all requested views' data and keys first and then, in one transaction, inserts their
``volumes`` rows, so a row always describes complete data. A run killed in between leaves orphan
slots (data without a row) that the next run reuses; the index never points at incomplete data.

What every run does (the store's identity, the missing-store guard, the writer lock, slots,
counts) is the store-run template's (``runs.template``); this module is the MRI job: which series,
the worker, and how an outcome is written.

Re-runs do only what is missing: (knee, visit, view) triples with an ``ok`` row for this store
and parameter set are skipped, ``failed`` ones are retried.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from oaicohort.db import Database
from oaicohort.db.schema import ImageSeries, Volume
from oaicohort.files import no_world_write
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri_worker import SeriesOutcome, SeriesTask, preprocess_task
from oaicohort.imaging.runs.slots import Shard, SlotAllocator
from oaicohort.imaging.runs.template import Outcome, RunKind, RunSummary, run_store
from oaicohort.imaging.runs.writer import (
    index_knees,
    ok_volumes,
    replace_rows,
    volume_row,
)
from oaicohort.imaging.series.load import SeriesReader
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.vocabulary import MRI_VIEWS, SIDES


@dataclass
class PreprocessSummary(RunSummary):
    """Counts of a run (in series) and the failures with their reasons."""

    views: tuple[str, ...] = ()
    volumes_written: int = 0
    worker_seconds: float = 0.0  # summed read + preprocess time inside the workers
    worker_cpu_seconds: float = 0.0
    worker_peak_rss_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["views"] = list(self.views)
        return out


def select_tasks(
    db: Database,
    store: VolumeStore,
    params: PreprocessParams,
    views: tuple[str, ...],
    visit: int,
    shard: Shard | None = None,
) -> tuple[list[SeriesTask], int]:
    """Series of ``visit`` (of ``shard``'s subjects) whose requested views are not yet ``ok``; also
    the number selected."""
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
        if shard is not None:
            series_rows = [s for s in series_rows if shard.owns(s.subject_id)]
        knees = index_knees(session, ((s.subject_id, s.side) for s in series_rows))
        done = ok_volumes(session, store, visit)
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


def _record(db: Database, store: VolumeStore, outcome: SeriesOutcome, slots: SlotAllocator) -> int:
    """Write an outcome's volumes, then index them (or the failure) in one transaction."""
    task = outcome.task
    where = {"knee_id": task.knee_id, "series_id": task.series_id, "visit": task.visit}
    rows: list[Volume] = []
    written: list[tuple[str, int, str]] = []  # (view, position, checksum): data first, keys under the lock
    if outcome.reason is None:
        key = knee_key(task.subject_id, task.side)
        for view in task.views:
            volume = outcome.volumes[view]
            position = slots.take(view)
            checksum = store.write_data(view, position, volume)
            written.append((view, position, checksum))
            rows.append(
                volume_row(
                    store,
                    **where,
                    view=view,
                    reason=None,
                    array_path=view,
                    position=position,
                    shape=list(volume.shape),
                    spacing_mm=[round(v, 6) for v in outcome.spacing_mm[view]],
                    checksum=checksum,
                    notes=outcome.notes,
                )
            )
    else:
        rows = [volume_row(store, **where, view=view, reason=outcome.reason) for view in task.views]
    with db.write() as session:
        # the keys' chunks are shared by many slots (read-modify-write): written under the
        # database's write lock, so concurrent shards of the store never lose each other's keys
        for view, position, checksum in written:
            store.write_keys(view, position, checksum, key=key, visit=task.visit)
        if session.get(ImageSeries, task.series_id) is None:
            # a concurrent ingest of a newer release dropped the series from the index: its data
            # stays an orphan slot (reused later) and nothing points at a series that is gone
            outcome.reason = f"{task.folder}: the series left the database index while it was read"
            return 0
        replace_rows(session, store, task.knee_id, task.visit, task.views, rows)
    return len(rows) if outcome.reason is None else 0


@dataclass
class MriJob:
    """The MRI part of a store run (``runs.template.StoreJob``)."""

    db: Database
    store: VolumeStore
    params: PreprocessParams
    views: tuple[str, ...]
    reader: SeriesReader | None
    summary: PreprocessSummary
    shard: Shard | None = None
    label: str = "preprocess"
    ordered: bool = False

    def select(self) -> tuple[list[SeriesTask], int]:
        return select_tasks(self.db, self.store, self.params, self.views, self.summary.visit, self.shard)

    def units(self, task: SeriesTask) -> int:
        return 1

    def slots(self, task: SeriesTask) -> Sequence[str]:
        return task.views

    def work(self) -> tuple[Callable[..., SeriesOutcome], tuple[Any, ...]]:
        return preprocess_task, (self.params, self.reader)

    def record(self, slots: SlotAllocator, task: SeriesTask, outcome: SeriesOutcome) -> Iterator[Outcome]:
        summary = self.summary
        summary.volumes_written += _record(self.db, self.store, outcome, slots)
        summary.worker_seconds += outcome.seconds
        summary.worker_cpu_seconds += outcome.cpu_seconds
        summary.worker_peak_rss_mb = max(summary.worker_peak_rss_mb, round(outcome.peak_rss_mb, 1))
        where = {"series_id": task.series_id, "subject_id": task.subject_id, "side": task.side}
        yield Outcome(outcome.reason, {**where, "folder": str(task.folder)})

    def finish(self) -> None:
        self.summary.worker_seconds = round(self.summary.worker_seconds, 3)
        self.summary.worker_cpu_seconds = round(self.summary.worker_cpu_seconds, 3)


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
    shard: Shard | None = None,
) -> PreprocessSummary:
    """Preprocess the visit's DESS series into the store at ``store_path``; see the module doc.

    A missing (or empty) store path where the database indexes volumes is an error (an unmounted
    disk must not become a fresh store that replaces the index) unless ``replace_missing_store``.

    ``params`` defaults to the store's own parameters when it exists, else the full preset.
    ``reader`` (a picklable function folder -> series) replaces the DICOM reader in tests.
    ``shard``: write only this shard's series (``runs.slots.Shard``; PostgreSQL), while the other
    shards of the store run at the same time, on this machine or others.
    """
    unknown = [v for v in views if v not in MRI_VIEWS]
    if unknown or not views:
        raise ValueError(f"unknown views {unknown}; choose from {MRI_VIEWS}")
    kind = RunKind(tuple(views), lambda p: p.sequence, "series", "image packages")

    def job_for(store: VolumeStore) -> MriJob:
        summary = PreprocessSummary(str(store.path), str(store.ref.id), store.params_hash, visit, views=tuple(views))
        return MriJob(db, store, store.params, tuple(views), reader, summary, shard)

    summary = run_store(
        db, store_path, params, kind, job_for, visit=visit, workers=workers, strict=strict, limit=limit,
        progress=progress, replace_missing_store=replace_missing_store, shard=shard,
    )  # fmt: skip
    assert isinstance(summary, PreprocessSummary)
    return summary
