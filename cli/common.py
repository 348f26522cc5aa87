"""Shared CLI plumbing: global state, error handling, JSON output, Rich progress bars.

Conventions: ``--json`` writes only JSON to stdout; progress and logs go to stderr; usage errors
exit 2; the toolkit's own failures (``OAIError``) print one clear line and exit with the error's
``exit_code`` (1 by default, 3 for a concurrent writer).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from oaicli.errors import debug_enabled, printable, translate
from oaicli.progress import progress_reporter
from oaicohort.cohort.export import dumps
from oaicohort.db import DEFAULT_DB, ENV_VAR, Database, open_database
from oaicohort.errors import OAIError
from oaicohort.interrupts import Terminated
from oaicohort.progress import ProgressCallback

err_console = Console(stderr=True)
out_console = Console()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    """Global options of the root command (``--db``, ``--verbose``, ``--quiet``)."""

    db: str | None = None
    verbose: int = 0
    quiet: bool = False
    opened: list[Database] = field(default_factory=list)

    def open_db(self, *, create: bool = True) -> Database:
        """The database of ``--db``; ``create=False`` for commands that only read (never creates one)."""
        database = open_database(self.db, create=create)
        self.opened.append(database)
        return database

    def open_db_if_configured(self) -> Database | None:
        """The database when one is named (--db / OAI_DB) or ./oai.sqlite exists, else None: for
        commands that work from a run folder or store and use the database only to cross-check."""
        if self.db or os.environ.get(ENV_VAR) or Path(DEFAULT_DB).is_file():
            return self.open_db(create=False)
        return None

    def close(self) -> None:
        """Dispose of every database the command opened (the root command calls this on exit)."""
        while self.opened:
            self.opened.pop().dispose()


@dataclass
class _Quiet:
    active: bool = False


QUIET = _Quiet()
"""Set by the root callback for this process: ``--quiet`` hides progress and warnings."""

RESUME_HINTS: dict[str, str] = {
    "train": "run the same `oai train` command with --resume to continue exactly where it stopped",
    "preprocess": "run the same command again: stored volumes are kept and the rest continue",
    "demo": "run `oai demo` again with the same --out: finished steps are reused, training resumes",
    "ingest": "nothing was changed; run the command again",
    "label": "nothing was changed; run the command again",
    "split": "nothing was changed; run the command again",
    "eval": "nothing was changed; run the command again",
}
"""What an interrupted command tells the user to do next (by command name)."""


@dataclass
class _Invoked:
    command: str | None = None


INVOKED = _Invoked()
"""Set by the root callback for this process: the command it runs (``ctx.invoked_subcommand``).

Typer's own API, not a click context lookup: typer 0.29 vendors its own click, so a separately
installed click sees no context at all, and a lookup through it left every interruption
without its hint."""


def interrupted_message(command: str | None) -> str:
    """What an interruption of ``command`` prints: ``interrupted``, and how to go on when known."""
    hint = RESUME_HINTS.get(command or "")
    return f"interrupted: {hint}" if hint else "interrupted"


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


def configure_logging(verbose: int, quiet: bool = False) -> None:
    if quiet:
        level = logging.ERROR
    else:
        level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    warnings.showwarning = _show_warning


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any
) -> None:
    """A Python warning (from zarr, pandas ...) as one log line: its text, never the library's
    source path and line that ``warnings`` prints by default."""
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


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
            hint = interrupted_message(INVOKED.command).removeprefix("interrupted")
            err_console.print(
                f"[bold red]{what}[/]{escape(hint) or ': stopped; nothing of an unfinished write was committed'}",
                highlight=False,
                soft_wrap=True,
            )
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


MODELS_EXTRA = 'pip install "oai-toolkit[models]"'


class ModelsExtraMissingError(OAIError):
    """A torch-needing command runs in an install without the ``models`` extra."""


def needs_models_extra(command: str) -> Callable[[F], F]:
    """Wrap a command that needs torch: without the ``models`` extra it says how to install it
    (one line, exit 1) before doing anything. ``oaicli.main.MODELS_EXTRA_COMMANDS`` applies it."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            require_models_extra(command)
            return func(*args, **kwargs)

        return handles_errors(guarded)  # type: ignore[return-value]

    return wrap


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


def parse_knees_option(knees: list[str] | None) -> list[tuple[int, str]] | None:
    """The knees of ``--knees`` (names, or files of names); a bad name on the command line is a
    usage error (exit 2), a bad line of a file an input error naming the file and line (exit 1)."""
    from oaicohort.errors import InputFileError
    from oaicohort.imaging.store.selection import SelectionError, parse_knees

    try:
        return parse_knees(knees)
    except InputFileError as exc:
        if str(exc.path) != "--knees":
            raise
        raise typer.BadParameter(exc.reason, param_hint="--knees") from None
    except SelectionError as exc:
        raise typer.BadParameter(str(exc), param_hint="--knees") from None


def chosen_knees(knees: list[str] | None, cohort: str | None, db: Database | None) -> list[tuple[int, str]] | None:
    """The knees of ``--knees`` or of ``--cohort NAME`` (a saved cohort of ``db``); None: all."""
    from oaicohort.cohort.saved import saved_knees

    if cohort is None:
        return parse_knees_option(knees)
    if knees:
        raise typer.BadParameter("--knees and --cohort both choose knees; give one", param_hint="--cohort")
    assert db is not None, "--cohort needs the database: open it before choosing knees"
    return saved_knees(db, cohort)


def emit_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (nothing else goes to stdout under ``--json``)."""
    sys.stdout.write(dumps(obj, indent=2) + "\n")  # strict JSON: NaN/Infinity as null
    sys.stdout.flush()


@contextmanager
def rich_progress(enabled: bool = True, step_tasks: Iterable[str] = ()) -> Iterator[ProgressCallback]:
    """Progress on stderr: Rich bars on a terminal, plain lines otherwise, none under ``--quiet``.

    ``step_tasks``: tasks that count a command's steps; without a terminal each step is a line."""
    with progress_reporter(err_console, enabled and not QUIET.active, frozenset(step_tasks)) as update:
        yield update


STDOUT = "-"


def guard_output(
    ctx: typer.Context,
    path: Path | str,
    option: str,
    *,
    inputs: Iterable[Path | str] = (),
    database: Database | None = None,
    allow: str | None = None,
) -> Path:
    """``path`` resolved, unless writing it would overwrite the database of ``--db``, a store, a run's
    own files, a release or one of ``inputs`` (``oaicohort.outputs``: a one-line error, exit 2)."""
    from oaicohort.db import resolve_url
    from oaicohort.outputs import check_output

    return check_output(
        path,
        option=option,
        inputs=list(inputs),
        database=database,
        database_url=resolve_url(state(ctx).db),
        allow=allow,
    )


def output_path(out: Path | None) -> Path | None:
    """An ``--out`` option's file; None for ``--out -``, which means standard output (as for
    ``oai cohort --out -``), so that commands write there instead of a file named ``-``."""
    return None if out is None or str(out) == STDOUT else out
