"""benchmarks/xray_augment_scale.py: radiographs augmented at 1x and 2x the model's input, compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.benchmarks import load_benchmark


def test_fresh_seeds_and_full_size_training_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_benchmark("xray_augment_scale")
    for args, needle in (
        (["--seeds", "0", "100"], "seeds [100] are kept fresh"),
        (["--size", "full"], "--size full goes with --inputs-only"),
    ):
        with pytest.raises(SystemExit) as info:
            script.main(args)
        assert info.value.code == 2 and needle in capsys.readouterr().err


def test_inputs_of_both_scales_are_measured_under_the_same_draws(tmp_path: Path) -> None:
    script = load_benchmark("xray_augment_scale")
    out = tmp_path / "inputs.json"
    args = ["--inputs-only", "--subjects", "6", "--seeds", "0", "--workers", "1", "--out", str(tmp_path / "w")]
    assert script.main([*args, "--keep", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["stored_shapes"] == {"1": [1, 70, 70], "2": [1, 140, 140]} and result["knees"] > 4
    # the same draws: the inputs differ by far less than the augmentations change them
    assert 0 < result["scale2_vs_scale1"] < 0.2 * result["augmentation_effect"]
    assert 0 < result["scale2_vs_scale1_unaugmented"] <= result["scale2_vs_scale1"]
