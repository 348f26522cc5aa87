"""Both preprocess runs hand their tasks to ``worker_results``: every task once, in task order
when asked, in this process for one worker, and no worker left running when the caller stops."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from oaicohort.imaging.runs.worker_pool import worker_results


def _square_late_first(n: int, delay: float) -> int:
    time.sleep(delay * (5 - n))  # the first tasks finish last
    return n * n


def _pid(n: int) -> int:
    return os.getpid()


def test_ordered_results_follow_the_tasks_whatever_finishes_first() -> None:
    results = list(worker_results(_square_late_first, range(5), (0.1,), workers=2, ordered=True))
    assert results == [(n, n * n) for n in range(5)]


def test_unordered_results_hold_every_task_once() -> None:
    results = list(worker_results(_square_late_first, range(5), (0.02,), workers=2))
    assert sorted(results) == [(n, n * n) for n in range(5)]


def test_one_worker_or_one_task_runs_in_this_process() -> None:
    assert list(worker_results(_pid, [1, 2], workers=1)) == [(1, os.getpid()), (2, os.getpid())]
    assert list(worker_results(_pid, [1], workers=4)) == [(1, os.getpid())]


def _mark_after(n: int, folder: Path, seconds: float) -> int:
    time.sleep(seconds)
    (folder / str(n)).touch()
    return n


def test_stopping_early_stops_the_workers_without_finishing_their_tasks(tmp_path: Path) -> None:
    results = worker_results(_mark_after, range(6), (tmp_path, 2.0), workers=2)
    first, _ = next(results)  # the first tasks done or nearly, the next ones queued
    results.close()  # what write_results does when --strict stops the run or it is interrupted
    assert multiprocessing.active_children() == []
    time.sleep(2.5)  # tasks 2 and 3 would have finished by now
    finished = {p.name for p in tmp_path.iterdir()}
    assert str(first) in finished and finished <= {"0", "1"}
