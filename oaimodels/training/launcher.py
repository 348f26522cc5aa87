"""Training on a SLURM cluster (or as local processes) through ``submitit``: one job per
(model, fold), each a :class:`~oaimodels.training.jobs.FoldJob`.

:func:`submit_study` prepares every run folder in the submitting process (config, knees,
labels, exactly as the sequential ``oai train`` writes them), then submits one job per fold
that has not finished, and records the jobs in each run folder's ``jobs.json``. On SLURM the
jobs of one submission form one job array (``--array-parallelism`` caps how many run at once).

Resources come from :class:`LauncherOptions`: command-line options or a ``[launcher]`` table of
the training config file (:func:`launcher_table`); the options and the executor are shared with
``oai preprocess --launcher`` (``oaicohort.cluster``). ``submitit`` is the ``[cluster]`` extra.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oaicohort.cluster import (  # re-exported: the launcher's options and executor live in the cohort layer
    LauncherOptions,
    check_launcher,
    make_executor,
    parse_time,
)
from oaicohort.errors import InputFileError
from oaimodels import run_folder as rf
from oaimodels.training.config import TrainConfig
from oaimodels.training.jobs import FoldJob, JobRecord, job_state, read_jobs, record_jobs, setup_from_env

if TYPE_CHECKING:
    from oaicohort.db import Database

log = logging.getLogger(__name__)

LAUNCHER_TABLE = "launcher"  # the config file's table of job resources
LOGS_DIR = "submitit"  # beside the run folders: submitit's pickles, scripts and logs, by job id
# Options of a job that change how it executes, not what it computes (TrainConfig.OPERATIONAL)
_JOB_OPERATIONAL = ("device", "nproc", "loader", "workers", "threads", "compile")


_TABLE_KEYS = {
    "partition": str, "account": str, "gpus_per_job": int, "cpus_per_job": int, "mem_gb": float,
    "time": str, "array_parallelism": int, "signal_delay_s": int, "launcher": str,
}  # fmt: skip


def read_launcher_table(path: Path | str) -> dict[str, Any]:
    """The ``[launcher]`` table of a TOML/JSON training config file (empty without one)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    table = data.get(LAUNCHER_TABLE, {}) if isinstance(data, dict) else {}
    if not isinstance(table, dict):
        raise InputFileError(path, "key 'launcher': expected a table of launcher options")
    return launcher_table(table, path)


def launcher_table(data: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """The checked ``[launcher]`` table of a config file, as :class:`LauncherOptions` fields."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        kind = _TABLE_KEYS.get(key)
        if kind is None:
            raise InputFileError(path, f"unknown key 'launcher.{key}' (known: {', '.join(sorted(_TABLE_KEYS))})")
        if key == "time":
            try:
                out["time_min"] = parse_time(value if isinstance(value, (int, str)) else repr(value))
            except ValueError as exc:
                raise InputFileError(path, f"key 'launcher.time': {exc}") from None
            continue
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise InputFileError(path, f"key 'launcher.{key}': expected {kind.__name__}, got {value!r}")
        out[key] = value
    return out


# --------------------------------------------------------------------------- submitting


@dataclass(frozen=True)
class Submitted:
    run_dir: Path
    records: list[JobRecord]
    skipped: dict[int, str]  # fold -> why no job (finished, already queued/running)


def job_device(config: TrainConfig, options: LauncherOptions) -> str:
    """The device a job trains on: ``auto`` means a GPU when the job asks for GPUs."""
    if config.device != "auto":
        return config.device
    if options.launcher == "slurm":
        return "cuda" if options.gpus_per_job > 0 else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _preparation_config(config: TrainConfig, device: str) -> TrainConfig:
    """The config the submitting host prepares the run folder with: the job's device decides
    precision and memory layout, even where the submitting host has no GPU."""
    import torch

    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        return dataclasses.replace(
            config,
            device="cpu",
            precision="bf16" if config.precision == "auto" else config.precision,
            channels_last=True if config.channels_last is None else config.channels_last,
        )
    return dataclasses.replace(config, device=device)


def submit_study(
    config: TrainConfig,
    options: LauncherOptions,
    db: Database | None = None,
    *,
    models: Sequence[str] | None = None,
    study: bool = False,
    resume: bool = False,
    setup: Sequence[str] = (),
) -> tuple[list[Submitted], list[Any]]:
    """Prepare the run folder(s) and submit one job per unfinished fold.

    ``study``: ``config.out`` is a folder of run folders, one per model (``oai train --model all``;
    ``models`` limits them), as :func:`~oaimodels.training.study.train_all` names them. Returns what
    was submitted per run folder and the submitit jobs (to wait on).
    """
    from oaimodels.training.run import prepare_run
    from oaimodels.training.study import study_configs

    check_launcher(options)  # before any run folder is written
    configs = study_configs(config, models) if study else [config]
    device = job_device(config, options)
    operational = {k: getattr(config, k) for k in _JOB_OPERATIONAL} | {"device": device}
    if device.startswith("cuda") and options.gpus_per_job > 1 and config.nproc == 1:
        operational["nproc"] = options.gpus_per_job  # DDP over the job's GPUs, one process each
    setup = tuple(setup) + setup_from_env()
    todo: list[tuple[Path, int]] = []
    results: dict[Path, Submitted] = {}
    for sub in configs:
        run_dir = Path(sub.out).expanduser().resolve()
        skipped: dict[int, str] = {}
        if rf.is_run_complete(run_dir):
            folds = rf.read_json(run_dir / rf.CONFIG).get("folds") or []
            results[run_dir] = Submitted(run_dir, [], dict.fromkeys(folds, "finished"))
            continue
        prepared = prepare_run(_preparation_config(sub, device), db, resume=resume)
        jobs = read_jobs(run_dir)
        for fold in prepared.folds:
            if rf.is_fold_complete(run_dir, fold):
                skipped[fold] = "finished"
                continue
            state = job_state(jobs[fold]) if fold in jobs else None
            if state in ("queued", "running"):
                skipped[fold] = f"{state} as job {jobs[fold].job_id}"
                continue
            todo.append((run_dir, fold))
        results[run_dir] = Submitted(run_dir, [], skipped)
    if not todo:
        return list(results.values()), []
    root = Path(config.out).expanduser().resolve()
    logs = (root if study else root.parent) / LOGS_DIR
    executor = make_executor(options, logs, name=f"oai-{root.name}")
    jobs_out = _submit(executor, options, [FoldJob(str(r), k, operational, setup) for r, k in todo])
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for (run_dir, fold), job in zip(todo, jobs_out, strict=True):
        record = JobRecord(
            fold=fold,
            launcher=options.launcher,
            job_id=str(job.job_id),
            stdout=str(job.paths.stdout),
            stderr=str(job.paths.stderr),
            submitted=now,
            folder=str(job.paths.folder),
        )
        results[run_dir].records.append(record)
    for submitted in results.values():
        if submitted.records:
            record_jobs(submitted.run_dir, submitted.records)
    return list(results.values()), jobs_out


def _submit(executor: Any, options: LauncherOptions, jobs: list[FoldJob]) -> list[Any]:
    if options.launcher == "slurm":
        with executor.batch():  # one job array
            futures = [executor.submit(job) for job in jobs]
        return futures
    if options.gpus_per_job and jobs[0].operational.get("device", "").startswith("cuda"):
        import torch

        count = max(1, torch.cuda.device_count())
        out = []
        for i, job in enumerate(jobs):  # a workstation: jobs take turns over its GPUs
            gpus = tuple((i * options.gpus_per_job + j) % count for j in range(options.gpus_per_job))
            executor.update_parameters(visible_gpus=gpus)
            out.append(executor.submit(job))
        return out
    return [executor.submit(job) for job in jobs]
