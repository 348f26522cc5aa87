"""Root of the ``oai`` command line. Each command lives in its own module under ``cli/``."""

from __future__ import annotations

import os

import typer

from oaicli.cohort import cohort_command
from oaicli.common import CliState, configure_logging
from oaicli.db import db_app
from oaicli.demo import demo_command
from oaicli.errors import DEBUG_ENV
from oaicli.eval import eval_command
from oaicli.ingest import ingest_command
from oaicli.label import label_command
from oaicli.models import models_command
from oaicli.preprocess import preprocess_command
from oaicli.split import split_command
from oaicli.store import store_app
from oaicli.synth import synth_command
from oaicli.train import train_command
from oaicohort.files import tighten_umask
from oaicohort.interrupts import install_sigterm_handler

app = typer.Typer(
    name="oai",
    help="Knee OA progression research on the Osteoarthritis Initiative cohort.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # no participant data in tracebacks
    rich_markup_mode="rich",
)


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
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of a failure (also OAI_DEBUG=1)."),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"
    ctx.obj = CliState(db=db, verbose=verbose)
    configure_logging(verbose)
    tighten_umask()  # nothing the toolkit writes is world-writable
    install_sigterm_handler()  # SIGTERM unwinds like Ctrl-C: rollback, workers stopped


app.add_typer(db_app, name="db")

# One module per command, in data-flow order.
app.command("synth")(synth_command)
app.command("ingest")(ingest_command)
app.command("label")(label_command)
app.command("split")(split_command)
app.command("cohort")(cohort_command)
app.command("preprocess")(preprocess_command)
app.add_typer(store_app, name="store")
app.command("models")(models_command)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("demo")(demo_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
