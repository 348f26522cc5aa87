"""Shared CLI plumbing: global state, error handling, JSON output, Rich progress bars.

Conventions: ``--json`` writes only JSON to stdout; progress and logs go to stderr; usage errors
exit 2; the toolkit's own failures (``OAIError``) print one clear line and exit with the error's
``exit_code`` (1 by default, 3 for a concurrent writer).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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

from oaicohort.db import Database, open_database
from oaicohort.errors import OAIError
from oaicohort.progress import ProgressCallback

err_console = Console(stderr=True)
out_console = Console()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    """Global options of the root command (``--db``, ``--verbose``)."""

    db: str | None = None
    verbose: int = 0
    opened: list[Database] = field(default_factory=list)

    def open_db(self) -> Database:
        database = open_database(self.db)
        self.opened.append(database)
        return database

    def close(self) -> None:
        """Dispose of every database the command opened (the root command calls this on exit)."""
        while self.opened:
            self.opened.pop().dispose()


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


def handles_errors(func: F) -> F:
    """Turn the toolkit's own errors into one red line on stderr and their exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OAIError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


MODELS_EXTRA = 'pip install "oai-toolkit[models]"'


class ModelsExtraMissingError(OAIError):
    """A torch-needing command runs in an install without the ``models`` extra."""


def require_models_extra(command: str) -> None:
    """Stop with one line saying how to install torch when ``command`` needs it and it is missing.

    The base install covers the cohort layer only; torch and torchvision come with the ``models``
    extra, so commands import them lazily and check here first.
    """
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise ModelsExtraMissingError(
            f"`oai {command}` needs torch and torchvision ({exc}); install them with: {MODELS_EXTRA}"
        ) from None


def emit_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (nothing else goes to stdout under ``--json``)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
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
