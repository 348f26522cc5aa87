"""Shared CLI plumbing: global state, error handling, JSON output, Rich progress bars.

Conventions: ``--json`` writes only JSON to stdout; progress and logs go to stderr; usage errors
exit 2; the toolkit's own failures (``OAIError``) print one clear line and exit with the error's
``exit_code`` (1 by default, 3 for a concurrent writer).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from oaicli.errors import debug_enabled, printable, translate
from oaicohort.cohort.export import dumps
from oaicohort.db import Database, open_database
from oaicohort.interrupts import Terminated
from oaicohort.progress import ProgressCallback

err_console = Console(stderr=True)
out_console = Console()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    """Global options of the root command (``--db``, ``--verbose``)."""

    db: str | None = None
    verbose: int = 0

    def open_db(self, *, create: bool = True) -> Database:
        """The database of ``--db``; ``create=False`` for commands that only read (never creates one)."""
        return open_database(self.db, create=create)


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


def configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


def _is_cli_exit(exc: BaseException) -> bool:
    # typer vendors its own click: match the exception classes by name, whichever click it is
    return any(c.__name__ in {"ClickException", "Exit", "Abort"} for c in type(exc).__mro__)


def handles_errors(func: F) -> F:
    """Turn every failure into one red line on stderr and an exit code (oaicli.errors); with
    ``--debug`` / ``OAI_DEBUG=1`` the traceback is printed too."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            what = "terminated (SIGTERM)" if terminated else "interrupted"
            err_console.print(f"[bold red]{what}[/]: stopped; nothing of an unfinished write was committed")
            raise typer.Exit(code=143 if terminated else 130) from None
        except Exception as exc:
            if _is_cli_exit(exc):  # usage errors (exit 2), typer.Exit: the CLI framework's own
                raise
            if debug_enabled():
                err_console.print_exception(show_locals=False)
            failure = translate(exc)
            message = escape(printable(failure.message))
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=failure.exit_code) from None

    return wrapper  # type: ignore[return-value]


def emit_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (nothing else goes to stdout under ``--json``)."""
    sys.stdout.write(dumps(obj, indent=2) + "\n")  # strict JSON: NaN/Infinity as null
    sys.stdout.flush()


@contextmanager
def rich_progress(enabled: bool = True) -> Iterator[ProgressCallback]:
    """A progress callback drawing one Rich bar per task on stderr (silent when not a terminal)."""
    if not enabled:
        yield lambda task, completed, total: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=not err_console.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def update(task: str, completed: float, total: float | None) -> None:
        if task not in tasks:
            tasks[task] = progress.add_task(task, total=total)
        progress.update(tasks[task], completed=completed, total=total)

    with progress:
        yield update
