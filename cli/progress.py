"""Progress on stderr: Rich bars on a terminal, plain timestamped lines everywhere else.

Under nohup, SLURM, CI or ``2>log`` a bar would print nothing for the whole run, so without a
terminal a task that has run for 2 s writes a line at every 10 % or whole unit of a short total
that comes at least 2 s after the previous line, at every unit of a total of a dozen or fewer (the
demo's steps, a run's epochs), at least every 30 s while it moves, and when it ends. A task done
within 2 s writes nothing, so a quick command's output is its result (or its one error line).
"""

from __future__ import annotations

import fnmatch
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from oaicohort.progress import ProgressCallback

LINE_INTERVAL_S = 30.0
"""Longest silence between two progress lines of a moving task without a terminal."""
STEP_FRACTION = 0.1
"""A line at every tenth of a task's total."""
UNIT_TOTAL_MAX = 100
"""Totals up to this many units (epochs, files) also get a line per whole unit."""
QUIET_START_S = 2.0
"""A task writes nothing until it has run this long."""
MIN_GAP_S = 2.0
"""Step and unit lines closer than this to the previous line are skipped..."""
FEW_UNITS = 12
"""...except whole units of a total this small (the demo's steps, a run's epochs): each gets its line."""
PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d [^:\n]+: [-+.\deE]+(?:/[-+.\deE]+ \(\d+%\))?, \d+ s$")
"""A line :class:`LineProgress` writes (``12:03:04 reading files: 3/9 (33%), 3 s``): how many there
are depends on how fast the machine is, so output checks count the other lines (``is_progress_line``)."""


def is_progress_line(line: str) -> bool:
    """Whether ``line`` is a plain progress line (see :data:`PROGRESS_LINE`), not a message."""
    return PROGRESS_LINE.match(line.strip()) is not None


@dataclass
class _TaskLine:
    started: float
    last_line: float
    last_step: int = -1
    last_unit: int = -1
    done: bool = False


@dataclass
class LineProgress:
    """A progress callback writing plain lines (no terminal control codes) to ``stream``."""

    stream: IO[str]
    clock: Callable[[], float] = time.monotonic
    interval_s: float = LINE_INTERVAL_S
    min_gap_s: float = MIN_GAP_S
    quiet_start_s: float = QUIET_START_S
    step_tasks: frozenset[str] = frozenset()
    """Name patterns (fnmatch) of tasks whose units are steps - the demo's steps, a fold's epochs:
    each step gets its line, however quick."""
    tasks: dict[str, _TaskLine] = field(default_factory=dict)

    def __call__(self, task: str, completed: float, total: float | None) -> None:
        now = self.clock()
        state = self.tasks.get(task)
        if state is None:
            state = self.tasks[task] = _TaskLine(started=now, last_line=now)
            if self._is_step(task):
                self._write(task, completed, total, 0.0)
            self._mark(state, completed, total)
            return
        if self._is_step(task) and not state.done and self._unit(completed, total) > state.last_unit:
            self._write(task, completed, total, now - state.started)
            state.last_line = now
            self._mark(state, completed, total)
            state.done = total is not None and total > 0 and completed >= total
            return
        if state.done or now - state.started < self.quiet_start_s:
            state.done = state.done or (total is not None and total > 0 and completed >= total)
            return
        finished = total is not None and total > 0 and completed >= total
        due = now - state.last_line >= self.interval_s
        few = total is not None and 0 < total <= FEW_UNITS and self._unit(completed, total) > state.last_unit
        crossed = few or (now - state.last_line >= self.min_gap_s and self._crossed(state, completed, total))
        if finished or due or crossed:
            self._write(task, completed, total, now - state.started)
            state.last_line = now
            self._mark(state, completed, total)
            state.done = finished

    def _is_step(self, task: str) -> bool:
        return any(fnmatch.fnmatchcase(task, pattern) for pattern in self.step_tasks)

    @staticmethod
    def _step(completed: float, total: float | None) -> int:
        if not total or total <= 0:
            return -1
        return math.floor(completed / total / STEP_FRACTION + 1e-9)

    @staticmethod
    def _unit(completed: float, total: float | None) -> int:
        if not total or total > UNIT_TOTAL_MAX:
            return -1
        return math.floor(completed + 1e-9)

    def _crossed(self, state: _TaskLine, completed: float, total: float | None) -> bool:
        return self._step(completed, total) > state.last_step or self._unit(completed, total) > state.last_unit

    def _mark(self, state: _TaskLine, completed: float, total: float | None) -> None:
        state.last_step = self._step(completed, total)
        state.last_unit = self._unit(completed, total)

    def _write(self, task: str, completed: float, total: float | None, elapsed: float) -> None:
        stamp = time.strftime("%H:%M:%S")
        if total:
            shown = f"{completed:g}/{total:g} ({100 * completed / total:.0f}%)"
        else:
            shown = f"{completed:g}"
        self.stream.write(f"{stamp} {task}: {shown}, {elapsed:.0f} s\n")
        self.stream.flush()


def _silent(task: str, completed: float, total: float | None) -> None:
    return None


@contextmanager
def progress_reporter(
    console: Console, enabled: bool = True, step_tasks: frozenset[str] = frozenset()
) -> Iterator[ProgressCallback]:
    """One Rich bar per task on a terminal; plain lines on a pipe or file; nothing if disabled."""
    if not enabled:
        yield _silent
        return
    if not console.is_terminal:
        yield LineProgress(console.file if console.file is not None else sys.stderr, step_tasks=step_tasks)
        return
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    ids: dict[str, TaskID] = {}

    def update(task: str, completed: float, total: float | None) -> None:
        if task not in ids:
            ids[task] = bars.add_task(task, total=total)
        bars.update(ids[task], completed=completed, total=total)

    with bars:
        yield update
