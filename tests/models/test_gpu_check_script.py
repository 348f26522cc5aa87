"""benchmarks/gpu_check.sh: its CPU-safe parts (syntax, --dry-run plan, option errors)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, timeout=30).returncode == 0


def test_dry_run_lists_the_four_steps_within_eight_minutes(tmp_path: Path) -> None:
    result = run("--dry-run", "--out", str(tmp_path / "never"))
    assert result.returncode == 0, result.stderr
    steps = [line.split()[0] for line in result.stdout.splitlines()[1:] if re.match(r"^\w+\s+\d+s\s", line)]
    assert steps == ["gpu_tests", "latency", "throughput", "precision"]
    assert "-m gpu" in result.stdout and "--precision bf16" in result.stdout and "2d_trf,3d_shufflenet" in result.stdout
    worst = int(re.search(r"worst case (\d+) s", result.stdout).group(1))  # type: ignore[union-attr]
    assert worst <= 480
    assert not (tmp_path / "never").exists()  # a dry run writes nothing


def test_unknown_option_is_refused() -> None:
    result = run("--fast")
    assert result.returncode == 2 and "unknown option" in result.stderr
