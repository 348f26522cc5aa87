"""The single writer of a store and of its ``volumes`` index: the pieces the store-run template
(``oaicohort.imaging.runs.template``) puts together for every kind of run.

The store is locked against a second writer (``writer_lock``); what is not yet ``ok`` is selected
(``index_knees``, ``ok_volumes``), a run takes its share under ``--limit`` (``take_tasks``), slots
are handed out (``slots.SlotAllocator``, through the database) and each worker's result is written as it arrives
(``write_results``): volume data and keys first, then, in one transaction, the rows that describe
them (``replace_rows``), so a row always describes complete data. Failures are counted with their
reasons (``count_outcome``); ``--strict`` stops at the first. Rows name their store by its id.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any, Protocol, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oaicohort.db.schema import Knee, Volume
from oaicohort.errors import ConcurrentWriteError, OAIError
from oaicohort.imaging.runs.worker_pool import worker_results
from oaicohort.imaging.store.volume_store import VolumeStore
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
            Volume.store_id == store.ref.id,
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


def volume_row(
    store: VolumeStore, *, knee_id: int, series_id: int, visit: int, view: str, reason: str | None, **data: Any
) -> Volume:
    """A ``volumes`` row of this store: ``ok`` with its ``data``, or ``failed`` with its ``reason``."""
    return Volume(
        knee_id=knee_id,
        series_id=series_id,
        visit=visit,
        view=view,
        store_id=store.ref.id,
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
            Volume.store_id == store.ref.id,
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
