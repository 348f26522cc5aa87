"""benchmarks/demo_seeds.py: the demo on fresh seeds, held-out AP and ROC AUC as mean ± SD."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.benchmarks import load_benchmark


def test_seeds_used_for_choices_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_benchmark("demo_seeds")
    with pytest.raises(SystemExit) as info:
        script.main(["--model", "3d_shufflenet", "--seeds", "2", "--first-seed", "0"])
    assert info.value.code == 2
    assert "seeds below 100 were used for choices" in capsys.readouterr().err
    assert script.mean_sd([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))
    assert script.mean_sd([0.5, math.nan]) == (0.5, None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_tiny_run_on_a_fresh_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # one seed: the mean and SD over seeds are mean_sd's (test above); this checks one real demo
    # runs on the first fresh seed and is reported and removed
    script = load_benchmark("demo_seeds")
    out = tmp_path / "seeds.json"
    args = ["--model", "3d_shufflenet", "--seeds", "1", "--subjects", "60", "--epochs", "1", "--folds", "0",
            "--bootstrap", "20", "--workers", "1", "--threads", "1", "--out", str(tmp_path / "work"),
            "--json", str(out)]  # fmt: skip
    assert script.main(args) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["seed"] == 100
    assert 0 <= row["ap"] <= 1 and 0 <= row["roc_auc"] <= 1 and 0 < row["prevalence"] < 1
    assert row["subjects"] == 60 and row["epochs"] == 1 and row["test_knees"] > 0
    assert result["summary"]["ap"]["mean"] == pytest.approx(row["ap"]) and result["summary"]["ap"]["sd"] is None
    printed = capsys.readouterr().out
    assert "seed 100: AP" in printed and "held-out AP" in printed and "prevalence" in printed
    assert not (tmp_path / "work" / "seed100").exists()  # each demo folder is removed after its seed
