"""`oai demo` end to end on a tiny configuration (the README's first command, scaled down)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaimodels.demo import DemoConfig, run_demo


@pytest.mark.slow
@pytest.mark.timeout(600)  # the slowest test by far (151 s at load 11 on two cores)
def test_demo_runs_every_step_and_writes_the_report(tmp_path: Path) -> None:
    config = DemoConfig(out=tmp_path / "demo", subjects=120, epochs=1, folds=[0], workers=1, threads=1, bootstrap=50)
    result = run_demo(config)

    assert set(result.seconds) == {"synth", "ingest", "preprocess", "label", "split", "train", "eval"}
    assert result.cohort["knees"] > 50
    assert result.cohort["knees"] == result.cohort["none"] + result.cohort["fast"] + result.cohort["slow"]
    assert result.split["params"]["test_sites"] == ["D"]
    m = result.metrics
    assert 0.0 <= m["ap"] <= 1.0 and 0.0 <= m["roc_auc"] <= 1.0
    assert 0.0 < m["prevalence"] < 1.0
    eval_dir = tmp_path / "demo" / "run" / "eval"
    assert result.report == eval_dir / "report.md"
    assert "| AP |" in result.report.read_text() or "AP" in result.report.read_text()
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["n_knees"] == m["n_knees"]
    assert (eval_dir / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the folder is reusable: a second run resumes in place instead of failing
    again = run_demo(config)
    assert again.metrics["ap"] == pytest.approx(m["ap"])


def test_demo_refuses_a_foreign_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "run" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--subjects", "20"])
    assert res.exit_code == 1
    assert "is not a run folder" in res.output
    assert (out / "run" / "notes.txt").read_text() == "mine"
