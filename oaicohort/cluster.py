"""Submitting jobs to SLURM (or as local processes) through ``submitit``: the one home of the
launcher options and the executor, for training (``oaimodels.training.launcher``: a job per
(model, fold)) and preprocessing (``oaicohort.imaging.runs.shard_jobs``: a job per shard).

``submitit`` is the ``[cluster]`` extra, imported only when jobs are submitted
(:func:`require_submitit` names the extra when it is missing).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oaicohort.errors import OAIError

LAUNCHERS = ("slurm", "local")
INSTALL_HINT = 'pip install "oai-toolkit[cluster]"'


class LauncherError(OAIError):
    """Jobs cannot be submitted: bad launcher options, submitit or sbatch missing."""


@dataclass
class LauncherOptions:
    """Where and with what resources the jobs run."""

    launcher: str = "slurm"  # slurm | local
    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_min: int = 24 * 60
    array_parallelism: int = 64
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: the job requeues itself

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise LauncherError(f"--launcher {self.launcher!r}: choose slurm or local")
        for name in ("gpus_per_job", "time_min", "array_parallelism", "signal_delay_s"):
            if getattr(self, name) < (0 if name == "gpus_per_job" else 1):
                raise LauncherError(f"launcher option {name} must be positive, got {getattr(self, name)}")


def parse_time(text: str | int) -> int:
    """A time limit in minutes: ``90``, ``"90"``, ``"H:MM:SS"`` or ``"D-HH:MM:SS"`` (as sbatch writes it)."""
    if isinstance(text, int):
        return text
    text = text.strip()
    if text.isdigit():
        return int(text)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d):(\d\d)", text)
    if not m:
        raise ValueError(f"{text!r}: expected minutes, H:MM:SS or D-HH:MM:SS")
    days, hours, minutes, seconds = (int(x) if x else 0 for x in m.groups())
    return days * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise LauncherError(f"--launcher needs submitit; install it with: {INSTALL_HINT}") from None
    return submitit


def check_launcher(options: LauncherOptions) -> Any:
    """submitit, once the options are valid and (for SLURM) ``sbatch`` is on the PATH."""
    options.check()
    submitit = require_submitit()
    if options.launcher == "slurm" and shutil.which("sbatch") is None:
        raise LauncherError("--launcher slurm: sbatch not found; submit from a SLURM login node (or --launcher local)")
    return submitit


def make_executor(options: LauncherOptions, folder: Path, name: str) -> Any:
    submitit = check_launcher(options)
    params: dict[str, Any] = dict(gpus_per_node=options.gpus_per_job, signal_delay_s=options.signal_delay_s)
    if options.launcher == "slurm":
        executor = submitit.SlurmExecutor(folder=str(folder / "%j"))
        params.update(
            job_name=name, time=options.time_min, nodes=1, ntasks_per_node=1,
            array_parallelism=options.array_parallelism,
            partition=options.partition, account=options.account, cpus_per_task=options.cpus_per_job,
            mem=f"{options.mem_gb:g}GB" if options.mem_gb else None,
        )  # fmt: skip
        params = {k: v for k, v in params.items() if v is not None}
    else:
        executor = submitit.LocalExecutor(folder=str(folder / "%j"))
        params.update(timeout_min=options.time_min, tasks_per_node=1)
    executor.update_parameters(**params)
    return executor
