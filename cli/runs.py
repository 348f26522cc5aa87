"""``oai runs status RUN...``: the state of each (model, fold) of training runs, on a cluster or not."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from oaicli.common import emit_json, handles_errors, out_console

runs_app = typer.Typer(help="Follow training runs (jobs submitted with oai train --launcher).", no_args_is_help=True)

_STYLE = {"finished": "green", "running": "cyan", "queued": "yellow", "failed": "red"}


@runs_app.command("status")
@handles_errors
def status_command(
    runs: list[Path] = typer.Argument(..., help="Run folders, or folders of run folders (oai train --model all)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Each (model, fold): queued, running, finished or failed, with its job id and log path.

    Exit code 0 whatever the states; --json lists them for scripts.
    """
    from oaimodels.training.jobs import fold_statuses, run_folders, statuses_json

    statuses = [s for run_dir in run_folders(runs) for s in fold_statuses(run_dir)]
    if json_out:
        emit_json({"folds": statuses_json(statuses)})
        return
    table = Table("run", "fold", "state", "epochs", "job", "log")
    for s in statuses:
        style = _STYLE.get(s.state, "")
        table.add_row(
            Path(s.run_dir).name, str(s.fold), f"[{style}]{s.state}[/]" if style else s.state,
            str(s.epochs), s.job_id or "-", s.log or "-",
        )  # fmt: skip
    out_console.print(table)
