"""One fold of one run as a scheduler job: :class:`FoldJob`, the run folder's ``jobs.json``, and
each fold's state (queued, running, finished, failed).

A job holds only the run folder, the fold and the options that change how it executes (device,
processes, loader): what it computes is read from the run folder's ``config.json`` and
``knees.csv``, written once by the submitting process. So every job trains exactly what the
sequential ``oai train`` would, needs no database on the compute node, and a rerun (requeue,
``--resume``) continues from ``last.pt``.

:class:`FoldJob` follows submitit's checkpoint protocol: on preemption or time-out submitit
calls :meth:`FoldJob.checkpoint`, which returns the same job; the requeued job resumes from the
fold's last finished epoch (training state is saved after every epoch, so nothing else is kept).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oaimodels import run_folder as rf

log = logging.getLogger(__name__)

# Environment variable: "module:function" callables (comma-separated) each job calls before it
# trains, e.g. to register models defined in the user's own code.
SETUP_ENV = "OAI_JOB_SETUP"
STATES = ("not submitted", "queued", "running", "finished", "failed", "unknown")
_SLURM_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESIZING"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclass
class FoldJob:
    """Train fold ``fold`` of the prepared run folder ``run_dir`` (a picklable callable)."""

    run_dir: str
    fold: int
    operational: dict[str, Any] = field(default_factory=dict)  # device, nproc, loader, workers, threads
    setup: tuple[str, ...] = ()

    def __call__(self) -> str:
        run_setup(self.setup)
        # imported here: unpickling a job must not need torch before the job runs
        import pandas as pd

        from oaimodels.training.config import TrainConfig
        from oaimodels.training.run import train_run

        run_dir = Path(self.run_dir)
        saved = rf.read_json(run_dir / rf.CONFIG)
        config = dataclasses.replace(TrainConfig.from_dict(saved["config"]), **self.operational)
        knees = pd.read_csv(run_dir / rf.KNEES)
        labels_info = rf.read_json(run_dir / rf.LABELS)
        log.info("%s fold %d: training (resumes from last.pt if present)", run_dir.name, self.fold)
        train_run(config, knees=knees, labels_info=labels_info, resume=True, folds=[self.fold])
        return str(rf.fold_dir(run_dir, self.fold))

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook: the same job again (it resumes from ``last.pt``)."""
        import submitit

        return submitit.helpers.DelayedSubmission(FoldJob(self.run_dir, self.fold, self.operational, self.setup))


def run_setup(setup: tuple[str, ...]) -> None:
    for item in setup:
        module, _, name = item.partition(":")
        getattr(importlib.import_module(module), name)()


def setup_from_env() -> tuple[str, ...]:
    value = os.environ.get(SETUP_ENV, "")
    return tuple(s.strip() for s in value.split(",") if s.strip())


# --------------------------------------------------------------------------- jobs.json


@dataclass
class JobRecord:
    """One submitted job of a run folder, as ``jobs.json`` keeps it."""

    fold: int
    launcher: str  # slurm | local
    job_id: str
    stdout: str
    stderr: str
    submitted: str  # ISO time
    folder: str  # submitit's job folder (pickles, submission script)


def read_jobs(run_dir: Path) -> dict[int, JobRecord]:
    """The newest job of each fold recorded in ``run_dir/jobs.json`` (empty without one)."""
    path = Path(run_dir) / rf.JOBS
    if not path.is_file():
        return {}
    data = rf.read_json(path)
    return {int(r["fold"]): JobRecord(**r) for r in data.get("jobs", [])}


def record_jobs(run_dir: Path, records: list[JobRecord]) -> None:
    """Add ``records`` to ``jobs.json`` (a resubmitted fold's record replaces its older one)."""
    jobs = read_jobs(run_dir)
    jobs.update({r.fold: r for r in records})
    rf.write_json(Path(run_dir) / rf.JOBS, {"jobs": [dataclasses.asdict(jobs[k]) for k in sorted(jobs)]})


# --------------------------------------------------------------------------- states


@dataclass(frozen=True)
class FoldStatus:
    run_dir: str
    fold: int
    state: str
    job_id: str | None
    log: str | None
    epochs: int  # finished epochs (log.jsonl)


def fold_statuses(run_dir: Path) -> list[FoldStatus]:
    """The state of every fold of a run folder (its config's folds, plus any with a job)."""
    run_dir = Path(run_dir)
    jobs = read_jobs(run_dir)
    folds = sorted(set(rf.read_json(run_dir / rf.CONFIG).get("folds") or []) | set(jobs))
    out = []
    for fold in folds:
        record = jobs.get(fold)
        epochs = len(rf.read_log(rf.fold_dir(run_dir, fold) / rf.LOG))
        if rf.is_fold_complete(run_dir, fold):
            state = "finished"
        elif record is None:
            state = "not submitted"
        else:
            state = job_state(record)
        out.append(
            FoldStatus(
                str(run_dir),
                fold,
                state,
                record.job_id if record else None,
                record.stderr if record else None,
                epochs,
            )
        )
    return out


def job_state(record: JobRecord) -> str:
    """queued, running, failed (ended without finishing its fold) or unknown (no scheduler to ask)."""
    if record.launcher == "local":
        return "running" if _local_alive(int(record.job_id)) else "failed"
    state = slurm_state(record.job_id)
    if state == "unknown" and (Path(record.folder) / f"{record.job_id}_0_result.pkl").is_file():
        return "failed"  # ended (submitit wrote its result) without finishing the fold; no sacct to ask
    return state


def _local_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # a recycled pid runs something else; a zombie has an empty command line
    return b"submitit" in cmdline


def slurm_state(job_id: str) -> str:
    """A SLURM job's state through ``squeue`` (live jobs), then ``sacct`` (ended ones)."""
    raw = _ask(["squeue", "-h", "-j", job_id, "-o", "%T"]) or _ask(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"]
    )
    if raw is None:
        return "unknown"
    words = raw.split()
    word = words[0].upper() if words else ""
    if word in _SLURM_QUEUED:
        return "queued"
    if word in _SLURM_RUNNING:
        return "running"
    return "failed" if word else "unknown"


def _ask(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def statuses_json(statuses: list[FoldStatus]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in statuses]


def run_folders(paths: list[Path]) -> list[Path]:
    """Run folders named directly, or found one level down in a study folder; a path that is
    neither is an error naming it."""
    from oaicohort.errors import InputFileError

    out: list[Path] = []
    for path in paths:
        path = Path(path)
        if (path / rf.CONFIG).is_file():
            out.append(path)
            continue
        inside = sorted(p.parent for p in path.glob(f"*/{rf.CONFIG}")) if path.is_dir() else []
        if not inside:
            raise InputFileError(path, "not a run folder (no config.json) nor a folder of run folders")
        out.extend(inside)
    return out
