"""Fixtures shared by the integrity tests (read-only: tests damage copies), and a guard: no
test of this suite may show a user an "unexpected error" (a failure nobody foresaw)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.helpers.toy_run import ToyRun, train_toy_run

UNEXPECTED = "unexpected error"


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> ToyRun:
    from tests.helpers.training import make_toy_cohort

    root = tmp_path_factory.mktemp("toyrun")
    store, knees = make_toy_cohort(root, n_subjects=12)
    return ToyRun(train_toy_run(root / "run", store, knees), store, knees)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory, imaging_release: tuple[Path, Path]) -> tuple[Path, Path]:
    """A database (3 subjects, ingested) and its store of small sagittal DESS volumes."""
    import shutil

    from oaicohort.db import open_database
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.runs.mri import run_preprocess

    base = tmp_path_factory.mktemp("store")
    db_path = Path(shutil.copyfile(imaging_release[1], base / "template.sqlite"))
    db = open_database(db_path)
    run_preprocess(db, base / "store.zarr", PreprocessParams.preset_named("small"), views=("sag",), workers=1)
    db.dispose()
    return db_path, base / "store.zarr"


def unexpected_errors(*outputs: Any) -> list[str]:
    """The lines of ``outputs`` (text or bytes, None skipped) that show an unexpected error."""
    found = []
    for output in outputs:
        if output is None:
            continue
        text = output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
        found += [line.strip() for line in text.splitlines() if UNEXPECTED in line]
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shows_unexpected_error: the test provokes an 'unexpected error' on purpose (the guard's own test)"
    )


@pytest.fixture(autouse=True)
def no_unexpected_error(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test when a command it ran (in process through CliRunner, or as a subprocess) showed
    an "unexpected error" line: every failure a user can meet has a clear message of its own."""
    seen: list[str] = []
    invoke, run, communicate = CliRunner.invoke, subprocess.run, subprocess.Popen.communicate

    def checked_invoke(self: CliRunner, *args: Any, **kwargs: Any) -> Any:
        result = invoke(self, *args, **kwargs)
        seen.extend(unexpected_errors(result.output, getattr(result, "stderr_bytes", None)))
        return result

    def checked_run(*args: Any, **kwargs: Any) -> Any:
        done = run(*args, **kwargs)
        seen.extend(unexpected_errors(done.stdout, done.stderr))
        return done

    def checked_communicate(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        out, err = communicate(self, *args, **kwargs)
        seen.extend(unexpected_errors(out, err))
        return out, err

    monkeypatch.setattr(CliRunner, "invoke", checked_invoke)
    monkeypatch.setattr(subprocess, "run", checked_run)
    monkeypatch.setattr(subprocess.Popen, "communicate", checked_communicate)
    yield seen
    if seen and request.node.get_closest_marker("shows_unexpected_error") is None:
        pytest.fail(f"a user was shown an unexpected error: {seen[0]}", pytrace=False)
