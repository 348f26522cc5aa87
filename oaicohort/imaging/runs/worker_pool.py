"""Preprocessing work in worker processes, fed a few tasks at a time (both ``oai preprocess`` runs).

Reading and preprocessing a series is where a run's time goes; the parent only writes. Workers
are spawned (the parent holds zarr's event-loop thread and database connections, unsafe to
fork) and hold at most two tasks each, so at most that many results wait in memory. An
interrupt, a termination or an error in the parent terminates the workers (``stop_pool``)
instead of letting them finish work that is thrown away.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from oaicohort.interrupts import stop_pool

Task = TypeVar("Task")
Result = TypeVar("Result")


def worker_results(
    work: Callable[..., Result],
    tasks: Sequence[Task],
    args: tuple[Any, ...] = (),
    *,
    workers: int = 1,
    ordered: bool = False,
) -> Generator[tuple[Task, Result], None, None]:
    """``(task, work(task, *args))`` for every task.

    In this process for one worker or one task; else in ``workers`` processes, yielded as they
    finish (in task order when ``ordered``). ``work`` must be picklable and should not raise.
    Close the iterator (``contextlib.closing``) to stop the workers when the caller stops early.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield task, work(task, *args)
        return
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: dict[cf.Future[Result], Task] = {}  # in submission order
        queue = iter(tasks)
        try:
            for task in itertools.islice(queue, 2 * workers):
                pending[pool.submit(work, task, *args)] = task
            while pending:
                if ordered:
                    finished = [next(iter(pending))]
                else:
                    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    finished = list(done)
                for future in finished:
                    task = pending.pop(future)
                    yield task, future.result()
                    for nxt in itertools.islice(queue, 1):
                        pending[pool.submit(work, nxt, *args)] = nxt
        except BaseException:  # interrupted, terminated, failed or closed early: stop the workers now
            stop_pool(pool)
            raise
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
