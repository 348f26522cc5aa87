"""A small synthetic release shared by the integrity tests (read-only: tests damage copies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oaicohort.synth import write_release

ASCII = "OAICompleteData_ASCII"


@pytest.fixture(scope="session")
def pristine_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity") / "release"
    write_release(root, subjects=30, seed=3)
    return root
