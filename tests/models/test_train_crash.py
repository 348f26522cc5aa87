"""kill -9 of the real `oai train` command (a subprocess) at two points, then `oai train --resume`:
every file left in the run folder is whole, the database and the store are untouched (training
only reads them), and the resumed run ends exactly like an uninterrupted one (CPU, deterministic).

The toy model and cohort of tests/helpers/training.py keep it to seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import open_database
from oaimodels import run_folder as rf
from oaimodels.training.checkpoint import load_checkpoint
from tests.helpers.reliability import LABEL_TABLES, REPO, table_rows
from tests.helpers.training import make_toy_cohort, populate_db, toy_model

pytestmark = pytest.mark.slow

EPOCHS = 12
# `oai` itself, with the toy model registered first (as a plugin would register a model)
OAI_WITH_TOY = (
    "from tests.helpers.training import register_toy_model; register_toy_model(); "
    "from oaicli.main import app; app(prog_name='oai')"
)


def _train_args(db: Path, store: Path, out: Path) -> list[str]:
    return [
        "--db",
        str(db),
        "train",
        "--store",
        str(store),
        "--model",
        "toy3d",
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--loader",
        "workers",
        "--threads",
        "1",
        "--deterministic",
        "--json",
    ]


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", OAI_WITH_TOY, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _epochs_logged(out: Path) -> int:
    return sum(len(rf.read_log(p / rf.LOG)) for p in out.glob("fold_*") if (p / rf.LOG).is_file())


def _kill_after(proc: subprocess.Popen[bytes], out: Path, epochs: int, delay: float) -> int:
    """SIGKILL once ``epochs`` epochs are logged in total, ``delay`` s later; epochs logged then."""
    deadline = time.monotonic() + 180
    while _epochs_logged(out) < epochs:
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)  # reaps it and closes its stderr pipe
    assert proc.returncode == -signal.SIGKILL, "training ended before the kill"
    return _epochs_logged(out)


def _store_digest(store: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        h.update(path.relative_to(store).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def _check_whole(out: Path) -> None:
    """Every file a killed run left is complete: JSON parses, checkpoints load (weights_only)."""
    for path in out.rglob("*"):
        if path.is_dir() or path.name.startswith("."):  # .tmp files of an unfinished write
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            rf.read_log(path)
        elif path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".csv":
            pd.read_csv(path)


def _strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k and not k.endswith("_per_s")} for r in records]


def test_oai_train_killed_twice_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    store, knees = make_toy_cohort(tmp_path, n_subjects=20, folds=2)
    db_path = tmp_path / "cohort.sqlite"
    db = open_database(db_path)
    populate_db(db, store, knees)
    before = (table_rows(db, LABEL_TABLES), _store_digest(store))

    full = tmp_path / "full"
    with toy_model():  # the uninterrupted run, in this process
        result = CliRunner().invoke(app, _train_args(db_path, store, full))
    assert result.exit_code == 0, result.output

    killed = tmp_path / "killed"
    rng = random.Random(3)
    proc = _spawn(_train_args(db_path, store, killed))
    logged = _kill_after(proc, killed, 2, rng.uniform(0.0, 0.05))  # inside fold 0
    _check_whole(killed)
    assert not rf.is_run_complete(killed)

    proc = _spawn([*_train_args(db_path, store, killed), "--resume"])
    logged = _kill_after(proc, killed, EPOCHS + 1, rng.uniform(0.0, 0.05))  # inside fold 1
    _check_whole(killed)
    assert logged < 2 * EPOCHS and not rf.is_run_complete(killed)

    proc = _spawn([*_train_args(db_path, store, killed), "--resume"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert rf.is_run_complete(killed)
    for fold in (0, 1):
        a, b = full / f"fold_{fold}", killed / f"fold_{fold}"
        assert _strip_timing(rf.read_log(a / rf.LOG)) == _strip_timing(rf.read_log(b / rf.LOG))
        wa, wb = load_checkpoint(a / rf.BEST)["model"], load_checkpoint(b / rf.BEST)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert pd.read_csv(a / rf.VAL_PREDICTIONS).equals(pd.read_csv(b / rf.VAL_PREDICTIONS))
    assert (table_rows(db, LABEL_TABLES), _store_digest(store)) == before  # training only reads
    db.dispose()


def test_ctrl_c_stops_oai_train_and_says_how_to_resume(tmp_path: Path) -> None:
    """SIGINT to the real `oai` (python -m oaicli.main, what the `oai` script runs) during an epoch
    of a registered model: exit 130, no traceback, and stderr says to resume with --resume."""
    store, knees = make_toy_cohort(tmp_path, n_subjects=20, folds=2)
    db = open_database(tmp_path / "cohort.sqlite")
    populate_db(db, store, knees)
    db.dispose()
    out = tmp_path / "run"
    args = ["train", "--store", str(store), "--model", "3d_shufflenet", "--out", str(out), "--epochs", "50"]
    args += ["--device", "cpu", "--workers", "0", "--threads", "1", "--db", str(tmp_path / "cohort.sqlite")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "oaicli.main", *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while _epochs_logged(out) < 1:  # training is under way: the interrupt lands inside the loop
        assert proc.poll() is None, f"training ended before it could be interrupted: {proc.stderr.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted: run the same `oai train` command with --resume to continue" in " ".join(err.split())
    assert not rf.is_run_complete(out)
