"""Class 11: reports never mix incomparable runs, and an unfinished run says so.

``oai eval`` of runs tested on other knees (another split, other test sites, another label
definition) reports them in separate tables, each saying what it was tested on and why it stands
apart; the cohort section describes each group. A fold that stopped before its last epoch
(``best.pt``, no ``summary.json``) is stated in ``metrics.json`` and the report; ``oai predict``
and ``oai explain`` refuse such a run unless given ``--allow-incomplete``. Two ``oai train
--resume`` of one run at once: the second exits 3."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.errors import ConcurrentWriteError
from oaimodels.evaluation.held_out import evaluate_runs
from tests.helpers.reliability import REPO
from tests.helpers.toy_run import TOY_LABELS, ToyRun, copy_toy_run, train_toy_run
from tests.helpers.training import toy_model


def _oai(*args: str) -> tuple[int, str]:
    with toy_model():
        result = CliRunner().invoke(app, list(args))
    output = " ".join(result.output.split())
    assert "Traceback" not in result.output and "unexpected error" not in output, output
    return result.exit_code, output


@pytest.fixture
def run_copy(toy_run: ToyRun, tmp_path: Path) -> ToyRun:
    return copy_toy_run(toy_run, tmp_path)


def _labels(test_sites: list[str]) -> dict:
    labels = copy.deepcopy(TOY_LABELS)
    labels["split"]["params"]["test_sites"] = test_sites
    labels["split"]["id"] = 2 if test_sites != ["D"] else 1
    return labels


def test_runs_with_other_test_sites_are_never_in_one_table(run_copy: ToyRun, tmp_path: Path) -> None:
    other = train_toy_run(tmp_path / "site_c", run_copy.store, run_copy.knees, seed=1, labels=_labels(["C"]))
    same = train_toy_run(tmp_path / "site_d", run_copy.store, run_copy.knees, seed=2, labels=_labels(["D"]))
    with toy_model():
        result = evaluate_runs([run_copy.run, other, same], out_dir=tmp_path / "cmp", n_resamples=20, latency=False)
    assert result["comparable"] is False
    assert [g["runs"] for g in result["groups"]] == [["run", "site_d"], ["site_c"]]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "not tested on the same knees: they are reported in 2 separate tables" in report
    first, second = report.split("## Table 1, group 2")
    assert "| run |" in first and "| site_d |" in first and "| site_c |" not in first
    assert "| site_c |" in second and "Apart from group 1: test sites C vs D" in second
    assert "test site(s) D" in first and "test site(s) C" in second
    assert "split id 1" in first and "split id 2" in second  # each group's own cohort section
    assert (tmp_path / "cmp" / "roc_1.png").is_file() and (tmp_path / "cmp" / "roc_2.png").is_file()
    code, out = _oai("eval", str(run_copy.run), str(other), "--out", str(tmp_path / "cli"), "--no-latency")
    assert code == 0 and "not tested on the same knees: 2 separate tables" in out, out


def test_comparable_runs_share_one_table(run_copy: ToyRun, tmp_path: Path) -> None:
    same = train_toy_run(tmp_path / "again", run_copy.store, run_copy.knees, seed=3)
    with toy_model():
        result = evaluate_runs([run_copy.run, same], out_dir=tmp_path / "cmp", n_resamples=20, latency=False)
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert result["comparable"] is True and "separate tables" not in report
    assert report.count("| toy3d | sag | scratch |") == 2 and "![ROC](roc.png)" in report


def test_an_unfinished_fold_is_stated_and_refused_by_predict_and_explain(run_copy: ToyRun, tmp_path: Path) -> None:
    (run_copy.run / "fold_1" / "summary.json").unlink()  # killed during fold 1, after a best.pt
    with toy_model():
        evaluate_runs([run_copy.run], out_dir=tmp_path / "ev", n_resamples=20, latency=False)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["incomplete_folds"] == [1]
    assert (
        "**Unfinished run:** fold(s) 1 of `run` stopped before their last epoch"
        in (tmp_path / "ev" / "report.md").read_text()
    )
    for command in (
        ["predict", str(run_copy.run), str(run_copy.store), "--out", str(tmp_path / "p.csv")],
        ["explain", str(run_copy.run), "--out", str(tmp_path / "ex"), "--steps", "2", "--top", "0"],
    ):
        code, out = _oai(*command)
        assert code == 1 and "fold(s) [1] stopped before their last epoch" in out and "--allow-incomplete" in out, out
        code, out = _oai(*command, "--allow-incomplete")
        assert code == 0, out
    notes = pd.read_csv(tmp_path / "p.csv")["notes"]
    assert notes.str.contains(r"unfinished fold\(s\) \[1\]", regex=True).all()


HOLD_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from oaimodels.training.run import run_lock
    with run_lock(Path(sys.argv[1])):
        print("training", flush=True)
        time.sleep(60)
    """
)


def test_two_resumes_of_one_run_the_second_exits_3(run_copy: ToyRun) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_RUN, str(run_copy.run)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "training"
        before = {p: p.stat().st_mtime_ns for p in run_copy.run.rglob("*")}
        with pytest.raises(ConcurrentWriteError, match="another `oai train` is training this run folder") as err:
            train_toy_run(run_copy.run, run_copy.store, run_copy.knees, resume=True)
        assert err.value.exit_code == 3
        assert {p: p.stat().st_mtime_ns for p in run_copy.run.rglob("*")} == before  # the second changed nothing
        os.kill(holder.pid, signal.SIGKILL)  # the first dies: its lock goes with it
        holder.wait()
        assert train_toy_run(run_copy.run, run_copy.store, run_copy.knees, resume=True) == run_copy.run
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
