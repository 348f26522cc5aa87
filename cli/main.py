"""Root of the ``oai`` command line. Each command lives in its own module under ``cli/``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
import typer.core

from oaicli.cohort import cohort_command
from oaicli.common import INVOKED, QUIET, CliState, configure_logging, needs_models_extra, out_console
from oaicli.db import db_app
from oaicli.demo import demo_command
from oaicli.errors import DEBUG_ENV
from oaicli.eval import eval_command
from oaicli.explain import explain_command
from oaicli.ingest import ingest_command
from oaicli.label import label_command
from oaicli.models import models_command
from oaicli.predict import predict_command
from oaicli.preprocess import preprocess_command
from oaicli.runs import runs_app
from oaicli.split import split_command
from oaicli.store import store_app
from oaicli.synth import synth_command
from oaicli.train import train_command
from oaicohort import __version__
from oaicohort.files import tighten_umask
from oaicohort.interrupts import install_sigterm_handler

app = typer.Typer(
    name="oai",
    help="Knee OA progression research on the Osteoarthritis Initiative cohort.",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,  # no participant data in tracebacks
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        out_console.print(f"oai {__version__}", highlight=False)
        raise typer.Exit()


def _hide_flag_types() -> None:
    """Show on/off flags as flags: Typer renders every option's type, so a flag read ``<bool>``."""
    original = typer.core.TyperOption.display_type_rich

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        if self.is_flag and not self.count:
            return None
        return original(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()


@app.callback()
def root(
    ctx: typer.Context,
    db: str | None = typer.Option(
        None,
        "--db",
        envvar="OAI_DB",
        help="Cohort database: a file path (SQLite, default ./oai.sqlite) or a SQLAlchemy URL.",
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-vv: debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors: no progress, no warnings."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the toolkit's version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of a failure (also OAI_DEBUG=1)."),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"
    ctx.obj = CliState(db=db, verbose=verbose, quiet=quiet)
    ctx.call_on_close(ctx.obj.close)
    QUIET.active = quiet
    INVOKED.command = ctx.invoked_subcommand  # whose resume hint Ctrl-C prints
    configure_logging(verbose, quiet)
    tighten_umask()  # nothing the toolkit writes is world-writable
    install_sigterm_handler()  # SIGTERM unwinds like Ctrl-C: rollback, workers stopped


MODELS_EXTRA_COMMANDS = frozenset({"models", "train", "runs", "eval", "predict", "explain", "demo"})
"""Every command that needs torch (the ``models`` extra), in this one place: without torch each
says how to install it and exits 1 (tests/test_packaging.py runs every one of them so)."""


def _command(name: str, func: Any) -> None:
    app.command(name)(needs_models_extra(name)(func) if name in MODELS_EXTRA_COMMANDS else func)


def _group(name: str, group: typer.Typer) -> None:
    """A command group; one named in :data:`MODELS_EXTRA_COMMANDS` has each command guarded."""
    if name in MODELS_EXTRA_COMMANDS:
        for command in group.registered_commands:
            if command.callback is not None:
                command.callback = needs_models_extra(name)(command.callback)
    app.add_typer(group, name=name)


app.add_typer(db_app, name="db")

# One module per command, in data-flow order.
_command("synth", synth_command)
_command("ingest", ingest_command)
_command("label", label_command)
_command("split", split_command)
_command("cohort", cohort_command)
_command("preprocess", preprocess_command)
app.add_typer(store_app, name="store")
_command("models", models_command)
_command("train", train_command)
_group("runs", runs_app)
_command("eval", eval_command)
_command("predict", predict_command)
_command("explain", explain_command)
_command("demo", demo_command)


GLOBAL_VALUE_OPTIONS = ("--db",)
GLOBAL_FLAGS = ("--verbose", "-v", "-vv", "-vvv", "--quiet", "-q", "--debug")


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move root options given after the command (``oai label --db X``) in front of it.

    Click only accepts a group's options before the subcommand; users write them anywhere. Only
    the root's own option names move, and nothing after a ``--`` separator.
    """
    args = list(argv)
    first = next(
        (
            i
            for i, a in enumerate(args)
            if not a.startswith("-") and (i == 0 or args[i - 1] not in GLOBAL_VALUE_OPTIONS)
        ),
        None,
    )
    if first is None:
        return args
    head, tail = args[:first], args[first:]
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tail):
        arg = tail[i]
        if arg == "--":
            rest.extend(tail[i:])
            break
        if arg in GLOBAL_VALUE_OPTIONS and i + 1 < len(tail):
            moved.extend(tail[i : i + 2])
            i += 2
            continue
        if arg in GLOBAL_FLAGS or any(arg.startswith(f"{name}=") for name in GLOBAL_VALUE_OPTIONS):
            moved.append(arg)
        else:
            rest.append(arg)
        i += 1
    return head + moved + rest


def main() -> None:
    app(args=hoist_global_options(sys.argv[1:]), prog_name="oai")


if __name__ == "__main__":
    main()
