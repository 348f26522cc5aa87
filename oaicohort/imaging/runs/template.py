"""One store run for every kind of input (MRI series, radiographs): ``run_store``.

``run_store`` owns what every ``oai preprocess`` run does, in this order:

1. the target: the store at the given path, named by its identity (``StoreRef``), and the run's
   parameters (given, else the existing store's own, else the full preset);
2. the database must index series of the run's kind at the visit (else nothing is created);
3. the missing-store guard (``identity.claim_store``): a missing or empty path where the database
   indexes a store, a store that moved without ``oai store relocate``, or another store in the
   place of the indexed one is refused, and nothing is changed;
4. the store opened or created, locked against a second writer (``writer_lock``; shards of one
   store, ``--shard K/N`` on PostgreSQL, share it and each holds its own shard: ``slots.run_locks``)
   and recorded in the database (``identity.record_store``);
5. the job's selection of what is not yet ``ok`` (of its shard), its share under ``--limit``, the
   slots it needs claimed at once in the database (``slots.SlotAllocator``), the workers' results written and counted as they arrive (``--strict`` stops
   at the first failure), then the job's last step.

What differs between kinds (which series, the work a worker does, how a result is written) is the
job's (``StoreJob``): ``runs.mri`` and ``runs.xray`` each define one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from sqlalchemy import func, select

from oaicohort.db import Database
from oaicohort.db.schema import ImageSeries
from oaicohort.db.stores import StoreRef
from oaicohort.errors import DatabaseStateError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.slots import Shard, SlotAllocator, check_shard, owner_of, run_locks, take_back
from oaicohort.imaging.runs.writer import count_outcome, take_tasks, write_results, writer_lock
from oaicohort.imaging.store.identity import claim_store, params_at, record_store
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.progress import ProgressCallback

log = logging.getLogger(__name__)

Task = TypeVar("Task")
Result = TypeVar("Result")


@dataclass
class RunSummary:
    """The counts every run keeps (in series for MRI, in knees for radiographs) and its failures."""

    store_path: str
    store_id: str
    params_hash: str
    visit: int
    selected: int = 0  # of the visit, with a knee side
    skipped: int = 0  # already ok
    done: int = 0
    failed: int = 0
    remaining: int = 0  # left for a later run by --limit
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Outcome(NamedTuple):
    """One counted unit of a written result: done (no reason) or failed, and where."""

    reason: str | None
    where: dict[str, Any]


@dataclass(frozen=True)
class RunKind:
    """What a kind of run reads: its views, the indexed sequence it selects, and its words."""

    views: tuple[str, ...]
    sequence: Callable[[PreprocessParams], str]
    series: str  # "series" | "radiographs"
    packages: str  # which image packages the index needs
    # the visits whose series a run of a visit reads (a baseline X-ray run: also the screening's)
    visits: Callable[[PreprocessParams, int], tuple[int, ...]] = lambda _params, visit: (visit,)


class StoreJob(Protocol[Task, Result]):
    """The part of a run that differs between kinds; ``run_store`` does the rest."""

    @property
    def summary(self) -> RunSummary: ...

    @property
    def label(self) -> str:
        """The name of the progress display."""
        ...

    @property
    def ordered(self) -> bool:
        """Whether results are written in task order (the X-ray QC montages follow the subjects)."""
        ...

    def select(self) -> tuple[list[Task], int]:
        """The tasks not yet ``ok``, and how many units the visit has in all."""
        ...

    def units(self, task: Task) -> int:
        """How many counted units (series, knees) ``task`` holds."""
        ...

    def slots(self, task: Task) -> Sequence[str]:
        """The views ``task`` may write one volume of each."""
        ...

    def work(self) -> tuple[Callable[..., Result], tuple[Any, ...]]:
        """The worker function (picklable) and the arguments it takes after the task."""
        ...

    def record(self, slots: SlotAllocator, task: Task, result: Result) -> Iterator[Outcome]:
        """Write ``result`` to the store and the index; yields each unit's outcome once written."""
        ...

    def finish(self) -> None:
        """The last step, still under the writer lock."""
        ...


def has_series(db: Database, visit: int, sequence: str) -> bool:
    """Whether the database indexes any series of ``sequence`` at ``visit``."""
    with db.read() as session:
        count = session.execute(
            select(func.count())
            .select_from(ImageSeries)
            .where(ImageSeries.visit == visit, ImageSeries.sequence == sequence)
        ).scalar_one()
    return bool(count)


def run_store(
    db: Database,
    store_path: str | os.PathLike[str],
    params: PreprocessParams | None,
    kind: RunKind,
    job_for: Callable[[VolumeStore], StoreJob[Any, Any]],
    *,
    visit: int,
    workers: int,
    strict: bool,
    limit: int | None,
    progress: ProgressCallback,
    replace_missing_store: bool,
    shard: Shard | None = None,
) -> RunSummary:
    """One run of ``job_for(store)`` into the store at ``store_path``; returns the job's summary.

    ``shard``: this run is one shard of the store (``runs.slots``; the job selects its tasks)."""
    start = time.perf_counter()
    check_shard(db, shard)
    ref = StoreRef.at(store_path)
    if params is None:
        params = params_at(ref.path)
    sequence = kind.sequence(params)
    if not any(has_series(db, v, sequence) for v in kind.visits(params, visit)):
        raise DatabaseStateError(
            f"no {sequence} {kind.series} of visit {visit} in the database {db.url}; "
            f"run `oai ingest` on a release with its {kind.packages} first (indexed by contents.csv or "
            "image03.txt, or the downloaded image folders themselves)"
        )
    claim_store(db, ref, replace_missing_store=replace_missing_store)
    if shard is None:
        store = VolumeStore.open_or_create(ref.path, params, views=kind.views)
    else:
        with db.write():  # the database's lock: shards starting together make the store (and its arrays) once
            store = VolumeStore.open_or_create(ref.path, params, views=kind.views)
    with writer_lock(store) if shard is None else nullcontext():  # shards share the store
        record_store(db, store, replace_missing_store=replace_missing_store)
        with run_locks(db, store, shard):
            take_back(db, store, shard)
            job = job_for(store)
            summary = job.summary
            tasks, selected = job.select()
            tasks = take_tasks(summary, tasks, selected, limit, job.units)
            log.info(
                "%s%s: %d selected, %d already done, %d to do",
                store.path, f" shard {shard.label}" if shard else "", summary.selected, summary.skipped, len(tasks),
            )  # fmt: skip
            slots = SlotAllocator(db, store, kind.views, owner_of(shard))
            try:
                _write(job, tasks, slots, kind, workers=workers, strict=strict, progress=progress)
            finally:
                _release(slots)
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


def _write(
    job: StoreJob[Any, Any],
    tasks: list[Any],
    slots: SlotAllocator,
    kind: RunKind,
    *,
    workers: int,
    strict: bool,
    progress: ProgressCallback,
) -> None:
    """Reserve the slots ``tasks`` need at once, then run the workers and write their results."""
    summary = job.summary
    for view in kind.views:
        slots.reserve(view, sum(list(job.slots(task)).count(view) for task in tasks))

    def write(task: Any, result: Any) -> None:
        for outcome in job.record(slots, task, result):
            count_outcome(summary, outcome.reason, strict=strict, **outcome.where)

    function, args = job.work()
    write_results(
        function, tasks, args, write, workers=workers, progress=progress, label=job.label, ordered=job.ordered
    )
    job.finish()


def _release(slots: SlotAllocator) -> None:
    try:
        slots.release()
    except Exception as exc:  # the run's own outcome matters more; the next run takes the claims back
        log.warning(
            "%s: could not release the run's slot claims (%s); the next run takes them back", slots.store.path, exc
        )
