"""The parent's side of both ``oai preprocess`` runs (MRI ``preprocess_run``, radiographs
``xray_run``): the single writer of the store and of its ``volumes`` index.

A run resolves its store and parameters (``store_target``), locks the store against a second
writer (``writing``), selects what is not yet ``ok`` (``index_knees``, ``ok_volumes``), takes its
share under ``--limit`` (``take_tasks``), hands out slots (``SlotAllocator``) and writes each
worker's result as it arrives (``write_results``): volume data and keys first, then, in one
transaction, the rows that describe them (``replace_rows``), so a row always describes complete
data. Failures are counted with their reasons; ``--strict`` stops at the first.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session

from oaicohort.db import Database
from oaicohort.db.schema import ImageSeries, Knee, Volume
from oaicohort.errors import ConcurrentWriteError, OAIError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.worker_pool import worker_results
from oaicohort.imaging.store.volume_store import VolumeStore, resolve_store_path
from oaicohort.progress import ProgressCallback

log = logging.getLogger(__name__)

Task = TypeVar("Task")
Result = TypeVar("Result")


class PreprocessFailure(OAIError):
    """A series could not be preprocessed and the run was strict."""


class RunCounts(Protocol):
    """The counts every run summary keeps (in series for MRI, in knees for radiographs)."""

    selected: int
    skipped: int  # already ok
    done: int
    failed: int
    remaining: int  # left for a later run by --limit
    failures: list[dict[str, Any]]


def store_target(
    store_path: str | os.PathLike[str], params: PreprocessParams | None
) -> tuple[Path, PreprocessParams, bool]:
    """The store's resolved path, the run's parameters (``params``, else the existing store's own,
    else the full preset) and whether the store is new (missing or empty)."""
    path = resolve_store_path(store_path)
    created = not path.exists() or not any(path.iterdir())
    if params is None:
        params = VolumeStore.open(path).params if not created else PreprocessParams.full()
    return path, params, created


def has_series(db: Database, visit: int, sequence: str) -> bool:
    """Whether the database indexes any series of ``sequence`` at ``visit``."""
    with db.read() as session:
        count = session.execute(
            select(func.count())
            .select_from(ImageSeries)
            .where(ImageSeries.visit == visit, ImageSeries.sequence == sequence)
        ).scalar_one()
    return bool(count)


# --------------------------------------------------------------------------- the writer's hold on the store


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


def forget_stale_rows(db: Database, store: VolumeStore) -> None:
    """A freshly created store has no volumes: rows left by a deleted store at the path are stale."""
    with db.write() as session:
        # a DML statement returns a CursorResult (with rowcount); the stubs type every execute as Result
        result = cast(CursorResult[Any], session.execute(delete(Volume).where(Volume.store_path == str(store.path))))
    if result.rowcount:
        log.warning("%s: removed %d index rows of an earlier store at this path", store.path, result.rowcount)


@contextmanager
def writing(db: Database, store: VolumeStore, *, created: bool) -> Iterator[None]:
    """The store locked for this run; a new store's stale index rows are removed first."""
    with writer_lock(store):
        if created:
            forget_stale_rows(db, store)
        yield


# --------------------------------------------------------------------------- selection


def index_knees(session: Session, knees: Iterable[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Knee ids by (subject_id, side), adding the ``knees`` rows missing (a knee with an image but
    no X-ray reading still needs a row)."""
    ids = {(k.subject_id, k.side): k.id for k in session.execute(select(Knee)).scalars()}
    for subject_id, side in knees:
        if (subject_id, side) not in ids:
            knee = Knee(subject_id=subject_id, side=side)
            session.add(knee)
            session.flush()
            ids[(subject_id, side)] = knee.id
    return ids


def ok_volumes(session: Session, store: VolumeStore, visit: int) -> set[tuple[int, str]]:
    """(knee_id, view) of the ``ok`` volumes of ``visit`` in this store and parameter set."""
    rows = session.execute(
        select(Volume.knee_id, Volume.view).where(
            Volume.store_path == str(store.path),
            Volume.params_hash == store.params_hash,
            Volume.visit == visit,
            Volume.status == "ok",
        )
    )
    return {(knee_id, view) for knee_id, view in rows}


def take_tasks(
    counts: RunCounts,
    tasks: list[Task],
    selected: int,
    limit: int | None,
    size: Callable[[Task], int] = lambda task: 1,
) -> list[Task]:
    """The tasks this run does under ``limit``; ``counts`` gets selected, skipped and remaining
    (``size``: how many counted units, e.g. knees, a task holds)."""
    counts.selected = selected
    counts.skipped = selected - sum(size(t) for t in tasks)
    if limit is not None and limit >= 0 and len(tasks) > limit:
        counts.remaining = sum(size(t) for t in tasks[limit:])
        tasks = tasks[:limit]
    return tasks


# --------------------------------------------------------------------------- writing


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


def volume_row(
    store: VolumeStore, *, knee_id: int, series_id: int, visit: int, view: str, reason: str | None, **data: Any
) -> Volume:
    """A ``volumes`` row of this store: ``ok`` with its ``data``, or ``failed`` with its ``reason``."""
    return Volume(
        knee_id=knee_id,
        series_id=series_id,
        visit=visit,
        view=view,
        store_path=str(store.path),
        params_hash=store.params_hash,
        status="failed" if reason else "ok",
        reason=reason,
        **data,
    )


def replace_rows(
    session: Session, store: VolumeStore, knee_id: int, visit: int, views: Sequence[str], rows: Sequence[Volume]
) -> None:
    """The knee's rows of these views in this store and parameter set become ``rows``."""
    session.execute(
        delete(Volume).where(
            Volume.store_path == str(store.path),
            Volume.params_hash == store.params_hash,
            Volume.knee_id == knee_id,
            Volume.visit == visit,
            Volume.view.in_(views),
        )
    )
    session.add_all(rows)


def count_outcome(counts: RunCounts, reason: str | None, *, strict: bool, **where: Any) -> None:
    """Count one outcome: done, or failed with ``where`` and its ``reason`` (``--strict``: stop)."""
    if reason is None:
        counts.done += 1
        return
    counts.failed += 1
    counts.failures.append({**where, "reason": reason})
    log.warning("failed: %s", reason)
    if strict:
        raise PreprocessFailure(f"--strict: {reason}")


def write_results(
    work: Callable[..., Result],
    tasks: Sequence[Task],
    args: tuple[Any, ...],
    write: Callable[[Task, Result], None],
    *,
    workers: int,
    progress: ProgressCallback,
    label: str,
    ordered: bool = False,
) -> None:
    """Run ``work(task, *args)`` in the workers and ``write`` each result here, as it arrives."""
    total = len(tasks)
    progress(label, 0, total)
    results = worker_results(work, tasks, args, workers=max(1, workers), ordered=ordered)
    with closing(results):  # a failure here (--strict, an interrupt) stops the workers at once
        for n, (task, result) in enumerate(results, start=1):
            write(task, result)
            progress(label, n, total)
