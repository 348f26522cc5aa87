"""The documentation cannot go stale: its examples run, and the README's table of commands is the
CLI's.

Examples that run (docs/*.md):
- a ```console block is a transcript: each `$ ` line is a command (a trailing backslash joins
  the next line; `#` starts a comment), the lines under it are output it must print (each one,
  spaces collapsed, somewhere in the output; `...` stands for anything). Every command must exit 0.
- a fenced block with `title="NAME"` (```toml title="incident_koa.toml"```) is written to the file
  NAME before the commands after it run, so the files a page shows are the files its commands use.
Each page's blocks run top to bottom in one fresh folder (no `OAI_DB`: the database is
`./oai.sqlite` there). `oai ...` commands run in this process (as `oai` would: global options
hoisted); anything else runs in bash, with `oai` and `python` this interpreter. Other blocks
(```bash, ```python without a title) are examples for the real release and are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from oaicli.main import app, hoist_global_options

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass
class Step:
    line: int
    command: str
    expected: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    title: str | None
    text: str


def fenced_blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, indentation (of a list item) removed."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        title = TITLE.search(info)
        blocks.append(Block(i + 1, info.split()[0] if info else "", title["title"] if title else None, "\n".join(body)))
        i = j + 1
    return blocks


def console_steps(block: Block) -> list[Step]:
    """The commands of a ```console block, each with the output lines shown under it."""
    steps: list[Step] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command, start = line[2:], i
            while command.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command.rstrip()[:-1] + " " + lines[i].strip()
            steps.append(Step(block.line + 1 + start, command))
        elif line.strip() and line.strip() != "...":
            assert steps, f"line {block.line + 1 + i}: output before the first `$ ` command"
            steps[-1].expected.append(line)
        i += 1
    return steps


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _pages_with_examples() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*.md") if any(b.lang == "console" for b in fenced_blocks(p.read_text())))


def test_fenced_blocks_and_steps_are_read_as_the_page_shows_them() -> None:
    page = (
        "text\n\n1. a step\n\n   ```console\n   $ oai cohort --sex F \\\n       --out x.csv   # a comment\n"
        "   3 knees written\n   ...\n   $ oai label\n   ```\n\n```toml title=\"d.toml\"\nname = 'x'\n```\n"
    )
    console, toml = fenced_blocks(page)
    assert (console.lang, console.title, console.line) == ("console", None, 5)
    assert (toml.lang, toml.title, toml.text) == ("toml", "d.toml", "name = 'x'")
    first, second = console_steps(console)
    assert shlex.split(first.command, comments=True) == ["oai", "cohort", "--sex", "F", "--out", "x.csv"]
    assert (first.line, first.expected, second.command, second.expected) == (6, ["3 knees written"], "oai label", [])


def test_the_tutorial_runs_the_core_commands() -> None:
    commands = {
        shlex.split(step.command, comments=True)[1]
        for block in fenced_blocks((DOCS / "tutorial.md").read_text())
        if block.lang == "console"
        for step in console_steps(block)
        if step.command.startswith("oai ")
    }
    assert {"synth", "ingest", "label", "split", "cohort"} <= commands


def _shims(folder: Path) -> dict[str, str]:
    """`oai` and `python` in bash steps: this interpreter, whatever PATH holds."""
    folder.mkdir()
    for name, exec_line in (
        ("oai", f'exec "{sys.executable}" -m oaicli.main "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
    ):
        (folder / name).write_text(f"#!/bin/sh\n{exec_line}\n")
        (folder / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "OAI_DB"}
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(step: Step, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    words = shlex.split(step.command, comments=True)
    if words[0] == "oai":
        result = CliRunner().invoke(app, hoist_global_options(words[1:]), env={"OAI_DB": None})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output
    done = subprocess.run(["bash", "-c", step.command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("page", _pages_with_examples())
def test_docs_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = _shims(tmp_path / "bin")
    monkeypatch.chdir(work)
    monkeypatch.delenv("OAI_DB", raising=False)
    for block in fenced_blocks((DOCS / page).read_text()):
        where = f"docs/{page}:{block.line}"
        if block.title is not None:
            target = (work / block.title).resolve()
            assert target.is_relative_to(work), f"{where}: title {block.title!r} names a file outside the folder"
            target.write_text(block.text + "\n")
        if block.lang != "console":
            continue
        for step in console_steps(block):
            code, output = _run(step, work, env)
            where = f"docs/{page}:{step.line}: $ {step.command}"
            assert code == 0, f"{where}\nexit {code}:\n{output}"
            for line in step.expected:
                assert _collapse(line) in _collapse(output), f"{where}\nexpected {line!r} in:\n{output}"


README_COMMAND = re.compile(r"^\| `oai (?P<command>[a-z ]+)` \|")


def registered_commands() -> set[str]:
    """Every command the `oai` app registers, sub-commands as `store info`."""

    def walk(command: object, path: tuple[str, ...]) -> set[str]:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            return {" ".join(path)}
        return set().union(*(walk(sub, (*path, name)) for name, sub in subcommands.items()))

    return walk(typer.main.get_command(app), ())


def test_readme_table_lists_every_command_and_only_those() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    listed = [m["command"] for m in map(README_COMMAND.match, lines) if m]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(c for c in listed if listed.count(c) > 1)}"
    assert set(listed) == registered_commands(), "README.md's table of commands differs from the `oai` app"
    assert {"synth", "store info", "db runs"} <= set(listed)


def test_readme_is_a_front_door_whose_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local and [t for t in local if not (REPO / t).is_file()] == []
