"""A command's output folder is written whole or not at all (``oaicohort.files.staged_folder``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from oaicohort.files import staged_folder


def _listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else "/" for p in sorted(root.rglob("*"))}


def test_a_new_folder_appears_whole_and_not_world_writable(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = os.umask(0)
    try:
        with staged_folder(out) as stage:
            assert stage.parent == tmp_path and stage != out and not out.exists()
            (stage / "knees").mkdir()
            (stage / "knees" / "a.csv").write_text("a")
    finally:
        os.umask(old)
    assert _listing(out) == {"knees": "/", "knees/a.csv": "a"}
    assert not out.stat().st_mode & stat.S_IWOTH
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_entries_replace_their_namesakes_and_the_rest_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "knees" / "old").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "explanations.csv").write_text("old")
    with staged_folder(out) as stage:
        (stage / "knees" / "new").mkdir(parents=True)
        (stage / "explanations.csv").write_text("new")
    assert _listing(out) == {"explanations.csv": "new", "knees": "/", "knees/new": "/", "notes.txt": "mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failure_leaves_the_folder_as_it_was(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "out"
    (out / "knees" / "old").mkdir(parents=True)
    (out / "explanations.csv").write_text("old")
    before = _listing(out)
    with pytest.raises(type(error)), staged_folder(out) as stage:
        (stage / "explanations.csv").write_text("half")
        raise error
    assert _listing(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
