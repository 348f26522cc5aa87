"""``oai preprocess --launcher slurm|local --shards N``: one job per shard of a store.

Each job (:class:`ShardJob`) is ``run_preprocess(..., shard=Shard(k, n))`` in a fresh process on
a compute node (or a local process): it opens the database by its URL, so the nodes need to reach
the PostgreSQL server, and the store's file system. On SLURM the N jobs are one job array
(``--array-parallelism`` caps how many run at once). submitit's scripts and logs go beside the
store, in ``<store>.jobs/<job id>/``. A shard that fails (or is killed) is rerun alone with
``oai preprocess --shard K/N``; the others' work is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oaicohort.cluster import LauncherOptions, check_launcher, make_executor
from oaicohort.db import open_database
from oaicohort.db.stores import canonical_path
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.slots import Shard

log = logging.getLogger(__name__)

JOBS_SUFFIX = ".jobs"  # <store>.jobs/: submitit's pickles, scripts and logs, by job id


@dataclass(frozen=True)
class ShardJob:
    """One shard's ``oai preprocess`` (picklable: submitit runs it on the compute node)."""

    db_url: str
    store: str
    params: PreprocessParams | None
    views: tuple[str, ...]
    visit: int
    workers: int
    strict: bool
    shard: Shard

    def __call__(self) -> dict[str, Any]:
        from oaicohort.imaging.runs.mri import run_preprocess

        db = open_database(self.db_url)
        try:
            summary = run_preprocess(
                db, self.store, self.params, views=self.views, visit=self.visit, workers=self.workers,
                strict=self.strict, shard=self.shard,
            )  # fmt: skip
        finally:
            db.dispose()
        log.info("shard %s: %d done, %d failed", self.shard.label, summary.done, summary.failed)
        return summary.to_dict()


@dataclass(frozen=True)
class SubmittedShard:
    shard: str
    job_id: str
    stdout: str


def jobs_folder(store: str | os.PathLike[str]) -> Path:
    root = canonical_path(store)
    return root.with_name(root.name + JOBS_SUFFIX)


def submit_shards(job: ShardJob, shards: int, options: LauncherOptions) -> tuple[list[SubmittedShard], list[Any]]:
    """Submit ``shards`` jobs, shard 1/N to N/N of ``job``; returns them and submitit's jobs."""
    check_launcher(options)
    if options.cpus_per_job is None:
        options = dataclasses.replace(options, cpus_per_job=job.workers)
    executor = make_executor(options, jobs_folder(job.store), name=f"oai-preprocess-{canonical_path(job.store).name}")
    jobs = [dataclasses.replace(job, shard=Shard(k, shards)) for k in range(1, shards + 1)]
    if options.launcher == "slurm":
        with executor.batch():  # one job array
            futures = [executor.submit(j) for j in jobs]
    else:
        futures = [executor.submit(j) for j in jobs]
    submitted = [
        SubmittedShard(j.shard.label, str(f.job_id), str(f.paths.stdout)) for j, f in zip(jobs, futures, strict=True)
    ]
    return submitted, futures
