"""``oai train --launcher local``: one submitit job per (model, fold) trains the same run folders as
the sequential ``oai train``; a killed job rerun, or a preempted one requeued, resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from oaimodels import run_folder as rf
from oaimodels.training.checkpoint import load_checkpoint
from oaimodels.training.config import TrainConfig
from oaimodels.training.jobs import fold_statuses, read_jobs
from oaimodels.training.launcher import LauncherOptions, submit_study
from oaimodels.training.study import train_all
from tests.helpers.launcher import MODELS, SETUP, launch_cohort, register_models
from tests.helpers.training import toy_model

pytest.importorskip("submitit")

REPO = Path(__file__).resolve().parents[2]
TIMING_KEYS = {"volumes_per_s", "train_seconds", "data_wait_seconds", "seconds"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, pd.DataFrame]]:
    with launch_cohort(tmp_path_factory.mktemp("launch")) as made:
        yield made


@pytest.fixture(autouse=True)
def _job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # jobs are fresh interpreters: they import tests.helpers.launcher (SETUP) and use one thread
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(REPO)


def config(store: Path, out: Path, **kw: Any) -> TrainConfig:
    base = dict(
        store=str(store), out=str(out), epochs=2, batch_size=8, lr=3e-3, warmup_epochs=0, loader="resident",
        workers=0, device="cpu", threads=1, deterministic=True, folds=[0, 1], init="scratch", tensorboard=False,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _open(db_path: Path) -> Any:
    from oaicohort.db import open_database

    return open_database(db_path)


def _log(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rf.read_log(path)]


def assert_same_fold(a: Path, b: Path) -> None:
    assert _log(a / rf.LOG) == _log(b / rf.LOG)
    sa, sb = rf.read_json(a / rf.SUMMARY), rf.read_json(b / rf.SUMMARY)
    assert (sa["best_epoch"], sa["best_val_ap"]) == (sb["best_epoch"], sb["best_val_ap"])
    wa, wb = load_checkpoint(a / rf.BEST)["model"], load_checkpoint(b / rf.BEST)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert pd.read_csv(a / rf.VAL_PREDICTIONS).equals(pd.read_csv(b / rf.VAL_PREDICTIONS))


def _without_paths(config_json: dict) -> dict:
    out = json.loads(json.dumps(config_json))
    out["config"].pop("out")
    out.pop("config_hash")  # covers "out", the one option that differs
    return out


def _eval(db_path: Path, run_dir: Path) -> dict:
    from oaicli.main import app

    result = CliRunner().invoke(
        app, ["--db", str(db_path), "eval", str(run_dir), "--json", "--resamples", "50", "--no-latency"]
    )
    assert result.exit_code == 0, result.output
    # the two studies differ only in their folders
    return json.loads(result.stdout.replace(str(run_dir.resolve()), "RUN").replace(str(run_dir), "RUN"))


@pytest.mark.slow
def test_local_jobs_train_the_same_study_as_sequential_training(
    cohort: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    store, db_path, _ = cohort
    db = _open(db_path)
    try:
        sequential = train_all(config(store, tmp_path / "seq"), db, models=MODELS)
        submitted, jobs = submit_study(
            config(store, tmp_path / "jobs"), LauncherOptions("local"), db, models=MODELS, study=True, setup=SETUP
        )
    finally:
        db.dispose()
    assert sorted((s.run_dir.name, r.fold) for s in submitted for r in s.records) == [
        ("toy3d_narrow_scratch", 0), ("toy3d_narrow_scratch", 1), ("toy3d_scratch", 0), ("toy3d_scratch", 1),
    ]  # fmt: skip
    assert len({j.job_id for j in jobs}) == 4  # one job per (model, fold)
    for job in jobs:
        job.result()  # raises with the job's traceback if it failed
    for seq in sequential:
        run = tmp_path / "jobs" / seq.name
        assert _without_paths(rf.read_json(seq / rf.CONFIG)) == _without_paths(rf.read_json(run / rf.CONFIG))
        assert (seq / rf.KNEES).read_text() == (run / rf.KNEES).read_text()
        assert rf.read_json(seq / rf.LABELS) == rf.read_json(run / rf.LABELS)
        for fold in (0, 1):
            assert_same_fold(rf.fold_dir(seq, fold), rf.fold_dir(run, fold))
        records = read_jobs(run)
        assert sorted(records) == [0, 1] and all(Path(r.stdout).is_file() for r in records.values())
        assert [s.state for s in fold_statuses(run)] == ["finished", "finished"]
        with toy_model():
            register_models()
            assert _eval(db_path, seq) == _eval(db_path, run)  # the same oai eval report, number for number

    from oaicli.main import app

    result = CliRunner().invoke(app, ["runs", "status", str(tmp_path / "jobs"), "--json"])
    assert result.exit_code == 0, result.output
    folds = json.loads(result.stdout)["folds"]
    assert [(Path(f["run_dir"]).name, f["fold"], f["state"]) for f in folds] == [
        ("toy3d_narrow_scratch", 0, "finished"), ("toy3d_narrow_scratch", 1, "finished"),
        ("toy3d_scratch", 0, "finished"), ("toy3d_scratch", 1, "finished"),
    ]  # fmt: skip
    assert all(f["job_id"] and Path(f["log"]).is_file() for f in folds)


def _wait_epochs(log_path: Path, n: int, job: Any) -> None:
    deadline = time.monotonic() + 240
    while len(rf.read_log(log_path)) < n:
        assert not job.done(), f"the job ended before epoch {n}: {job.stderr()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _task_pid(controller: int) -> int:
    """The training process the submitit controller started (its child)."""
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert children, "the job's controller has no task process"
    return int(children[0])


@pytest.mark.slow
def test_a_killed_job_rerun_and_a_preempted_job_requeued_end_like_an_uninterrupted_run(
    cohort: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    store, db_path, _ = cohort
    single = dict(model="toy3d", folds=[0], epochs=5, warmup_epochs=2, loader="workers")
    db = _open(db_path)
    try:
        full = train_all(config(store, tmp_path / "full", **single), db, models=["toy3d"])[0]
        # SIGKILL mid-fold: the job fails (nothing can checkpoint), rerunning the fold resumes it
        killed_cfg = config(store, tmp_path / "killed", **single)
        (_sub,), (job,) = submit_study(killed_cfg, LauncherOptions("local"), db, study=False, setup=SETUP)
        fold_log = tmp_path / "killed" / "fold_0" / rf.LOG
        _wait_epochs(fold_log, 2, job)
        os.kill(_task_pid(int(job.job_id)), signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 - submitit's own failure type
            job.result()
        assert [s.state for s in fold_statuses(tmp_path / "killed")] == ["failed"]
        before = len(rf.read_log(fold_log))
        assert 2 <= before < 5
        (_sub2,), (job2,) = submit_study(killed_cfg, LauncherOptions("local"), db, resume=True, setup=SETUP)
        job2.result()
        assert read_jobs(tmp_path / "killed")[0].job_id == job2.job_id != job.job_id
        assert_same_fold(rf.fold_dir(full, 0), tmp_path / "killed" / "fold_0")

        # preemption / time-out: SIGUSR2 -> FoldJob.checkpoint -> requeued, resumes from last.pt
        pre_cfg = config(store, tmp_path / "preempted", **single)
        (_,), (job3,) = submit_study(pre_cfg, LauncherOptions("local"), db, setup=SETUP)
        _wait_epochs(tmp_path / "preempted" / "fold_0" / rf.LOG, 2, job3)
        first = _task_pid(int(job3.job_id))
        # SLURM signals the job's task before its time limit or on preemption (LocalJob._interrupt
        # signals the controller instead, which has no handler for it in submitit 1.5)
        os.kill(first, signal.SIGUSR2)
        seen = {first}
        while not job3.done():  # the controller starts a second task: the requeued job
            children = Path(f"/proc/{job3.job_id}/task/{job3.job_id}/children")
            seen.update(int(p) for p in (children.read_text().split() if children.exists() else []))
            time.sleep(0.05)
        job3.result()
        assert len(seen) == 2, "the preempted job was not requeued"
        assert_same_fold(rf.fold_dir(full, 0), tmp_path / "preempted" / "fold_0")
    finally:
        db.dispose()


def test_submitting_twice_skips_finished_and_running_folds(
    cohort: tuple[Path, Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, db_path, _knees = cohort
    import oaimodels.training.launcher as L

    submitted_jobs: list[Any] = []

    class FakeJob:
        def __init__(self, n: int, folder: Path) -> None:
            self.job_id = str(4000 + n)
            self.paths = type("P", (), {"stdout": folder / "o", "stderr": folder / "e", "folder": folder})()

    def fake_submit(executor: Any, options: Any, jobs: list[Any]) -> list[Any]:
        first = len(submitted_jobs) + 1
        submitted_jobs.extend(jobs)
        return [FakeJob(first + i, tmp_path) for i in range(len(jobs))]

    monkeypatch.setattr(L, "_submit", fake_submit)
    monkeypatch.setattr(L, "job_state", lambda record: "queued")
    monkeypatch.setattr("oaimodels.training.jobs.job_state", lambda record: "queued")
    db = _open(db_path)
    try:
        cfg = config(store, tmp_path / "run", model="toy3d")
        (s,), _ = submit_study(cfg, LauncherOptions("local"), db)
        assert [r.fold for r in s.records] == [0, 1] and [j.fold for j in submitted_jobs] == [0, 1]
        assert submitted_jobs[0].operational == {
            "device": "cpu", "nproc": 1, "loader": "resident", "workers": 0, "threads": 1, "compile": False,
        }  # fmt: skip
        (s,), jobs = submit_study(cfg, LauncherOptions("local"), db, resume=True)
        assert jobs == [] and s.skipped == {0: "queued as job 4001", 1: "queued as job 4002"}
        # without --resume an existing run folder is refused, as by oai train
        with pytest.raises(Exception, match="pass --resume"):
            submit_study(cfg, LauncherOptions("local"), db)
    finally:
        db.dispose()
    # a job run in this process trains its fold into the prepared folder
    dataclasses.replace(submitted_jobs[0], setup=SETUP)()
    assert rf.is_fold_complete(tmp_path / "run", 0) and not rf.is_fold_complete(tmp_path / "run", 1)
    statuses = fold_statuses(tmp_path / "run")
    assert [(s.fold, s.state, s.job_id) for s in statuses] == [(0, "finished", "4001"), (1, "queued", "4002")]


def test_eval_of_a_launched_run_names_the_unfinished_folds(
    cohort: tuple[Path, Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oaicli.main import app
    from oaimodels.training.jobs import JobRecord, record_jobs

    store, db_path, knees = cohort
    with toy_model():
        from oaimodels.training.run import train_run

        run = train_run(config(store, tmp_path / "run", model="toy3d", epochs=1, folds=[0, 1]), knees=knees)
    (rf.fold_dir(run, 1) / rf.SUMMARY).unlink()  # fold 1 still training
    record_jobs(run, [JobRecord(1, "local", "999999", "o", "e", "now", "f")])
    result = CliRunner().invoke(app, ["--db", str(db_path), "eval", str(run), "--no-latency"])
    assert result.exit_code != 0
    assert f"fold(s) [1] not finished; see `oai runs status {run}`" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["runs", "status", str(run), "--json"])
    states = [(f["fold"], f["state"], f["job_id"]) for f in json.loads(result.stdout)["folds"]]
    assert states == [(0, "finished", None), (1, "failed", "999999")]  # no such process: failed


def test_launcher_options_from_the_config_file_and_the_command_line(tmp_path: Path) -> None:
    from oaicli.launch import launcher_options
    from oaicohort.errors import InputFileError
    from oaimodels.training.launcher import parse_time

    path = tmp_path / "train.toml"
    path.write_text(
        'epochs = 3\n[launcher]\nlauncher = "slurm"\npartition = "gpu"\ngpus_per_job = 1\n'
        'time = "1-02:30:00"\naccount = "oai"\narray_parallelism = 8\n'
    )
    from oaimodels.training.config_file import read_config_file

    assert read_config_file(path)["epochs"] == 3  # the table is not a training option
    options = launcher_options({"launcher": None, "partition": "long", "time": None}, path)
    assert (options.launcher, options.partition, options.gpus_per_job, options.time_min) == ("slurm", "long", 1, 1590)
    assert (options.account, options.array_parallelism) == ("oai", 8)
    assert launcher_options({"launcher": "local", "time": "90"}, path).time_min == 90
    assert parse_time("2:00:01") == 121
    path.write_text("[launcher]\ngpus = 2\n")
    with pytest.raises(InputFileError, match="unknown key 'launcher.gpus'"):
        launcher_options({"launcher": "local"}, path)
    path.write_text('[launcher]\ntime = "soon"\n')
    with pytest.raises(InputFileError, match="launcher.time"):
        launcher_options({"launcher": "local"}, path)


def test_cli_launcher_errors(
    cohort: tuple[Path, Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oaicli.main import app

    store, db_path, _ = cohort
    base = ["--db", str(db_path), "train", "--store", str(store), "--model", "toy3d", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*base, "--launcher", "pbs"])
    assert result.exit_code != 0 and "choose slurm or local" in result.output
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with toy_model():
        result = CliRunner().invoke(app, [*base, "--launcher", "slurm", "--folds", "0-1"])
    assert result.exit_code != 0 and "sbatch not found" in result.output
    assert not (tmp_path / "r").exists()  # refused before the run folder was written
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)  # the [cluster] extra absent
    result = CliRunner().invoke(app, [*base, "--launcher", "local"])
    assert result.exit_code != 0 and 'pip install "oai-toolkit[cluster]"' in result.output


def test_fold_ranges() -> None:
    from oaicli.train import parse_folds

    assert parse_folds("0-4") == [0, 1, 2, 3, 4] and parse_folds("0,2-3") == [0, 2, 3] and parse_folds("all") is None


def test_a_gpu_job_is_prepared_for_its_gpu_on_a_login_node_without_one(tmp_path: Path) -> None:
    import oaimodels.training.launcher as L

    cfg = TrainConfig(store="s", out=str(tmp_path / "o"), device="auto")
    assert L.job_device(cfg, LauncherOptions("slurm", gpus_per_job=4)) == "cuda"
    assert L.job_device(cfg, LauncherOptions("slurm")) == "cpu"
    prep = L._preparation_config(cfg, "cuda")  # precision and memory layout of the GPU it will train on
    if not torch.cuda.is_available():
        assert (prep.device, prep.precision, prep.channels_last) == ("cpu", "bf16", True)
