"""``oai train --launcher slurm`` on a real single-node SLURM cluster (started by .ci/slurm.sh).

Skipped, with the reason the cluster script left, where no cluster is up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from oaimodels import run_folder as rf
from tests.helpers.launcher import SETUP, launch_cohort, register_models
from tests.helpers.reliability import REPO
from tests.helpers.training import toy_model

SLURM_DIR = Path(os.environ.get("OAI_SLURM_DIR", "/tmp/oai-slurm"))

pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, pd.DataFrame]]:
    with launch_cohort(tmp_path_factory.mktemp("launch")) as made:
        yield made


def _cluster_or_skip() -> None:
    if not (SLURM_DIR / "ready").is_file():
        why = (SLURM_DIR / "why").read_text().strip() if (SLURM_DIR / "why").is_file() else "not started"
        pytest.skip(f"no SLURM cluster (.ci/slurm.sh: {why})")


@pytest.mark.slow
def test_a_study_trains_as_a_slurm_job_array(cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster_or_skip()
    from oaicli.main import app

    store, db_path, _ = cohort
    monkeypatch.setenv("OAI_JOB_SETUP", SETUP[0])
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(REPO)
    out = tmp_path / "study"
    with toy_model():
        register_models()
        result = CliRunner().invoke(app, [
            "--db", str(db_path), "train", "--store", str(store), "--model", "toy3d", "--out", str(out),
            "--epochs", "1", "--folds", "0-1", "--device", "cpu", "--workers", "0", "--loader", "resident",
            "--deterministic", "--launcher", "slurm", "--partition", "debug", "--time", "0:10:00",
            "--array-parallelism", "2", "--wait", "--json",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.stdout)["jobs"]
    assert [j["fold"] for j in jobs] == [0, 1] and all("_" in j["job_id"] for j in jobs)  # one array
    assert rf.is_run_complete(out)
    script = next(Path(jobs[0]["stdout"]).parent.parent.rglob("*submission.sh")).read_text()
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=10" in script and "%2" in script
    result = CliRunner().invoke(app, ["runs", "status", str(out), "--json"])
    assert [f["state"] for f in json.loads(result.stdout)["folds"]] == ["finished", "finished"]
