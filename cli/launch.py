"""``oai train --launcher slurm|local``: submit one job per (model, fold) instead of training here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from oaicli.common import emit_json, err_console

if TYPE_CHECKING:
    from oaicohort.db import Database
    from oaimodels.training.config import TrainConfig
    from oaimodels.training.launcher import LauncherOptions

# CLI parameters of train_command that describe jobs, not the training (kept out of TrainConfig)
LAUNCH_PARAMS = (
    "launcher", "partition", "account", "gpus_per_job", "cpus_per_job", "time", "array_parallelism", "wait",
)  # fmt: skip


def launcher_options(params: dict[str, Any], config_file: Path | None) -> LauncherOptions:
    """:class:`LauncherOptions` from the config file's ``[launcher]`` table, then the options given."""
    from oaimodels.training.launcher import LauncherOptions, parse_time, read_launcher_table

    values = read_launcher_table(config_file) if config_file is not None else {}
    for name in ("partition", "account", "gpus_per_job", "cpus_per_job", "array_parallelism"):
        if params.get(name) is not None:
            values[name] = params[name]
    if params.get("time") is not None:
        try:
            values["time_min"] = parse_time(params["time"])
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--time") from None
    values["launcher"] = params["launcher"] or values.get("launcher")
    options = LauncherOptions(**values)
    options.check()
    return options


def launch(
    config: TrainConfig,
    db: Database,
    options: LauncherOptions,
    *,
    study: bool,
    resume: bool,
    wait: bool,
    json_out: bool,
) -> None:
    from oaimodels.training.launcher import submit_study

    submitted, jobs = submit_study(config, options, db, study=study, resume=resume)
    rows = []
    for s in submitted:
        for r in s.records:
            rows.append({"run_dir": str(s.run_dir), "fold": r.fold, "job_id": r.job_id, "stdout": r.stdout})
            if not json_out:
                err_console.print(f"{s.run_dir.name} fold {r.fold}: job {r.job_id}  log {r.stdout}", highlight=False)
        for fold, why in s.skipped.items():
            if not json_out:
                err_console.print(f"{s.run_dir.name} fold {fold}: {why}, not submitted", highlight=False)
    failed = []
    if wait:
        for job in jobs:
            try:
                job.result()
            except Exception as exc:  # a job's own failure: reported per job, the others still counted
                failed.append((job.job_id, str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)))
    run_dirs = " ".join(str(s.run_dir) for s in submitted)
    if json_out:
        emit_json({"jobs": rows, "failed": [{"job_id": j, "error": e} for j, e in failed]})
    else:
        for job_id, error in failed:
            err_console.print(f"[red]job {job_id} failed[/]: {error}", highlight=False)
        err_console.print(f"follow with: oai runs status {run_dirs}", highlight=False)
        err_console.print(f"evaluate when finished: oai eval {run_dirs}", highlight=False)
    if failed:
        raise typer.Exit(1)
