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


def test_fresh_seeds_are_run_summarised_and_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script's own work around each demo: the fresh seeds in order, the config each demo gets,
    mean and SD over seeds, the JSON and the folders removed. The demo itself is run_demo's, whole
    and tested end to end in test_demo; here it is replaced by one that writes a folder and returns a
    real DemoResult with per-seed numbers."""
    from oaimodels.demo import DemoConfig, DemoResult

    script = load_benchmark("demo_seeds")
    given: list[DemoConfig] = []
    aps = {100: 0.5, 101: 0.7}

    def demo(config: DemoConfig) -> DemoResult:
        given.append(config)
        config.out.mkdir(parents=True)
        metrics = {"ap": aps[config.seed], "roc_auc": 0.6, "prevalence": 0.25, "n_knees": 40}
        return DemoResult(config.out, {}, {}, metrics, config.out / "report.md", {}, subjects=60, epochs=1)

    monkeypatch.setattr(script, "run_demo", demo)
    out = tmp_path / "seeds.json"
    args = ["--model", "3d_shufflenet", "--seeds", "2", "--subjects", "60", "--epochs", "1", "--folds", "0",
            "--bootstrap", "20", "--workers", "1", "--threads", "1", "--out", str(tmp_path / "work"),
            "--json", str(out)]  # fmt: skip
    assert script.main(args) == 0
    assert [(c.seed, c.model, c.subjects, c.epochs, c.folds, c.bootstrap, c.fresh) for c in given] == [
        (100, "3d_shufflenet", 60, 1, [0], 20, True), (101, "3d_shufflenet", 60, 1, [0], 20, True),
    ]  # fmt: skip
    result = json.loads(out.read_text())
    assert [r["seed"] for r in result["rows"]] == [100, 101]
    assert [r["ap"] for r in result["rows"]] == [0.5, 0.7] and all(r["test_knees"] == 40 for r in result["rows"])
    assert result["summary"]["ap"]["mean"] == pytest.approx(0.6)
    assert result["summary"]["ap"]["sd"] == pytest.approx(math.sqrt(0.02))
    printed = capsys.readouterr().out
    assert "seed 100: AP" in printed and "held-out AP" in printed and "prevalence" in printed
    assert not (tmp_path / "work" / "seed100").exists()  # each demo folder is removed after its seed
