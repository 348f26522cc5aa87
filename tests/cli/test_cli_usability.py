"""The CLI as a person meets it: version, -h, flags shown as flags, global options anywhere,
what Ctrl-C says, progress lines without a terminal, and the demo reusing its release."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.core
import typer.main
from typer.testing import CliRunner

from oaicli.common import INVOKED, interrupted_message
from oaicli.main import app, hoist_global_options
from oaicli.progress import LineProgress
from oaicohort import __version__
from oaimodels.demo import DemoConfig, _release_identity, _release_matches, disk_usage
from tests.helpers.reliability import REPO

runner = CliRunner()


def test_version_and_short_help() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"oai {__version__}"
    res = runner.invoke(app, ["label", "-h"])
    assert res.exit_code == 0 and "--json" in res.output


@pytest.mark.parametrize(
    "command", ["synth", "ingest", "label", "split", "cohort", "preprocess", "models", "train", "eval", "demo"]
)
def test_flags_are_shown_as_flags_and_every_option_has_help(command: str) -> None:
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "<bool>" not in res.output
    group = app.registered_commands
    callback = next(c.callback for c in group if c.name == command)
    cmd = typer_command(callback)
    missing = [p.name for p in cmd.params if isinstance(p, typer.core.TyperOption) and not p.help]
    assert missing == [], f"options without help: {missing}"


def typer_command(callback: object) -> typer.core.TyperCommand:
    probe = typer.Typer()
    probe.command()(callback)  # type: ignore[arg-type]
    command = typer.main.get_command(probe)
    assert isinstance(command, typer.core.TyperCommand)
    return command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["label", "--db", "x.sqlite"], ["--db", "x.sqlite", "label"]),
        (["label", "--db=x.sqlite", "--json"], ["--db=x.sqlite", "label", "--json"]),
        (["--db", "a", "cohort", "-v", "--site", "A"], ["--db", "a", "-v", "cohort", "--site", "A"]),
        (["db", "upgrade", "--db", "x", "-q"], ["--db", "x", "-q", "db", "upgrade"]),
        (["cohort", "--", "--db", "x"], ["cohort", "--", "--db", "x"]),
        (["--db", "label", "label"], ["--db", "label", "label"]),
        ([], []),
    ],
)
def test_global_options_move_in_front_of_the_command(argv: list[str], expected: list[str]) -> None:
    assert hoist_global_options(argv) == expected


def test_db_after_the_command_reaches_the_root(tmp_path: Path) -> None:
    db = tmp_path / "given-after.sqlite"
    res = subprocess.run(
        [sys.executable, "-m", "oaicli.main", "db", "upgrade", "--db", str(db)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert db.exists()


def test_ctrl_c_says_how_to_continue() -> None:
    assert "--resume" in interrupted_message("train")
    assert interrupted_message("ingest") == "interrupted: nothing was changed; run the command again"
    assert interrupted_message("cohort") == interrupted_message(None) == "interrupted"


def test_ctrl_c_in_a_command_prints_that_commands_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint comes from the command the root callback saw invoked (typer's own API), not from
    a context lookup, so it shows whichever click typer runs on (tests/models: a real process)."""
    import oaicohort.ingest.run

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(oaicohort.ingest.run, "ingest_release", interrupted)
    monkeypatch.setattr(INVOKED, "command", None)
    res = CliRunner().invoke(app, ["--db", str(tmp_path / "x.sqlite"), "ingest", str(tmp_path)])
    assert res.exit_code == 130
    assert "interrupted: nothing was changed; run the command again" in res.output


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_without_a_terminal() -> None:
    out, clock = io.StringIO(), FakeClock()
    report = LineProgress(out, clock=clock)
    for i in range(51):  # a quick task: nothing
        report("reading files", i, 50)
    for epoch in range(4):  # a slow one: a line per epoch, a heartbeat inside a long epoch
        for step in range(10):
            clock.now += 5.0 if epoch < 3 else 31.0
            report("fold 0", epoch + (step + 1) / 10, 4)
    lines = out.getvalue().splitlines()
    assert not [line for line in lines if "reading files" in line]  # done within 2 s: silent
    fold = [line for line in lines if "fold 0" in line]
    shown = [float(re.search(r"fold 0: ([\d.]+)/4", line).group(1)) for line in fold]  # type: ignore[union-attr]
    # after 2 s: each tenth of the total and each whole epoch, then every step of the last epoch
    # because each of those came more than 30 s after the previous line
    assert shown == [0.4, 0.8, 1.0, 1.2, 1.6, 2.0, 2.4, 2.8, 3.0, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0]
    assert fold[-1].split(" ", 1)[1].startswith("fold 0: 4/4 (100%)")
    report("fold 0", 4, 4)  # nothing after the end
    assert len(out.getvalue().splitlines()) == len(lines)


def test_demo_reuses_only_a_complete_release_of_the_same_config(tmp_path: Path) -> None:
    config = DemoConfig(out=tmp_path, subjects=40, seed=3)
    release = tmp_path / "release"
    release.mkdir()
    assert not _release_matches(release, config)
    (release / ".oai-demo-release.json").write_text(__import__("json").dumps(_release_identity(config)))
    assert _release_matches(release, config)
    assert not _release_matches(release, DemoConfig(out=tmp_path, subjects=40, seed=4))
    (release / "table.txt").write_bytes(b"x" * 1000)
    assert disk_usage(tmp_path) == 1000 + (release / ".oai-demo-release.json").stat().st_size


@pytest.mark.slow
def test_demo_without_a_terminal_logs_every_step_and_reuses_its_release(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "oaicli.main", "demo", "--out", str(tmp_path / "demo"), "--subjects", "60"]
    args += ["--epochs", "1", "--folds", "0", "--workers", "1", "--threads", "1"]
    for attempt in range(2):
        log = tmp_path / f"log{attempt}"
        with log.open("w") as err:
            res = subprocess.run(args, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, timeout=600)
        text = log.read_text()
        assert res.returncode == 0, text
        for step in range(8):  # a line as each step starts, and at the end
            assert re.search(rf"^\d\d:\d\d:\d\d demo: {step}/7 ", text, re.M), text
        if attempt == 0:  # the second run finds fold 0 finished
            assert "fold 0:" in text
        assert re.search(r"holds [\d,]+ MB", text)
    assert "reused the synthetic release" in text


def test_step_tasks_get_a_line_per_step_however_quick() -> None:
    out, clock = io.StringIO(), FakeClock()
    report = LineProgress(out, clock=clock, step_tasks=frozenset({"demo", "fold *"}))
    for step in range(8):
        report("demo", step, 7)
    for epoch in range(3):
        for batch in range(4):
            report("fold 2", epoch + (batch + 1) / 4, 3)
    report("writing database", 3, 7)  # not a step task, and quick: silent
    shown = [line.split(" ", 1)[1].split(",")[0] for line in out.getvalue().splitlines()]
    assert shown == [f"demo: {k}/7 ({round(100 * k / 7)}%)" for k in range(8)] + [
        "fold 2: 0.25/3 (8%)",  # the fold starts
        "fold 2: 1/3 (33%)",
        "fold 2: 2/3 (67%)",
        "fold 2: 3/3 (100%)",
    ]
