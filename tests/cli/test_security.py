"""Security hygiene: filters reach the database as bound parameters (SQL injection through the
CLI), files are never world-writable whatever the umask, and a crash prints no local values."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import open_database
from oaicohort.db.schema import Knee, KneeLabel, Subject
from tests.helpers.reliability import REPO

ATTACKS = ["A' OR '1'='1", "A'; DROP TABLE knees; --", '" OR 1=1 --', "A\\'); DELETE FROM subjects; --"]


@pytest.fixture(scope="module")
def cohort_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("security")
    runner = CliRunner()
    db = str(base / "cohort.sqlite")
    for args in (
        ["synth", str(base / "release"), "-n", "60", "--seed", "2"],
        ["--db", db, "ingest", str(base / "release"), "--variables", "P01INJR"],
        ["--db", db, "label"],
        ["--db", db, "split", "--folds", "2"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return base / "cohort.sqlite"


def _table_counts(path: Path) -> tuple[int, int, int]:
    db = open_database(path)
    with db.read() as s:
        out = tuple(s.scalar(select(func.count()).select_from(t)) for t in (Subject, Knee, KneeLabel))
    db.dispose()
    return out  # type: ignore[return-value]


@pytest.mark.parametrize("attack", ATTACKS)
def test_sql_injection_through_cli_filters_finds_nothing_and_changes_nothing(cohort_db: Path, attack: str) -> None:
    before = _table_counts(cohort_db)
    runner = CliRunner()
    base = ["--db", str(cohort_db), "cohort", "--json"]
    everyone = json.loads(runner.invoke(app, base).stdout)
    assert everyone
    for option in (
        ["--site", attack],
        ["--var", f"P01INJR={attack}"],
        ["--has-sequence", f"{attack}:0"],
        ["--include-excluded", "--label", attack],
    ):
        result = runner.invoke(app, [*base, *option])
        # values are checked against what exists (a closed set, the sites, the variable's values,
        # the indexed sequences): refused as a usage error, never pasted into SQL
        assert result.exit_code == 2 and "error" in result.output.lower(), result.output
        assert result.stdout == ""
    # names are checked against what exists, never pasted into SQL
    for option, code in ((["--var", f"{attack}=1"], 2), (["--definition", attack], 1)):
        result = runner.invoke(app, [*base, *option])
        assert result.exit_code == code, result.output
    result = runner.invoke(app, ["--db", str(cohort_db), "label", "--definition", attack])
    assert result.exit_code != 0
    assert _table_counts(cohort_db) == before
    assert json.loads(runner.invoke(app, base).stdout) == everyone


def _world_writable(paths: list[Path]) -> list[str]:
    return [f"{p} {stat.filemode(p.stat().st_mode)}" for p in paths if p.stat().st_mode & stat.S_IWOTH]


def test_database_store_and_outputs_are_not_world_writable_under_umask_0(tmp_path: Path) -> None:
    db = tmp_path / "new" / "dir" / "cohort.sqlite"
    store = tmp_path / "vol.zarr"
    release = tmp_path / "release"
    # one process, which still holds the database open (its WAL files exist) when it lists them
    script = textwrap.dedent(
        f"""
        import os
        os.umask(0)
        from pathlib import Path
        from sqlalchemy import text
        from oaicli.main import app
        from oaicohort.db import open_database
        for args in (["synth", {str(release)!r}, "-n", "3", "--images", "--image-size", "small"],
                     ["--db", {str(db)!r}, "ingest", {str(release)!r}],
                     ["--db", {str(db)!r}, "preprocess", "--store", {str(store)!r}, "--preset", "small",
                      "--workers", "1"]):
            try:
                app(args)
            except SystemExit as exc:
                assert not exc.code, exc.code
        with open_database({str(db)!r}).read() as s:
            s.execute(text("SELECT count(*) FROM subjects")).all()
            modes = {{p.name: p.stat().st_mode & 0o777 for p in Path({str(db.parent)!r}).iterdir()}}
        print("MODES", modes)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    modes = ast.literal_eval(result.stdout.rsplit("MODES", 1)[1].strip())
    assert set(modes) >= {"cohort.sqlite", "cohort.sqlite-wal", "cohort.sqlite-shm"}
    assert all(mode & 0o022 == 0 for mode in modes.values()), modes  # as the lead's 0644 database file
    created = [db.parent, db.parent.parent, store, *store.rglob("*"), release, *release.rglob("*")]
    assert _world_writable([p for p in created if not p.is_symlink()]) == []


def test_library_writes_ignore_a_lax_umask(tmp_path: Path) -> None:
    """Callers of the Python API with umask 0 get no world-writable database or store either."""
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.store.volume_store import VolumeStore

    old = os.umask(0)
    try:
        open_database(tmp_path / "a" / "b.sqlite").dispose()
        store = VolumeStore.create(tmp_path / "lib.zarr", PreprocessParams.preset_named("small"), views=("sag",))
    finally:
        os.umask(old)
    made = [tmp_path / "a", *(tmp_path / "a").iterdir(), store.path, *store.path.rglob("*")]
    assert _world_writable(made) == []


SENTINEL = "SENTINEL-participant-9000001"

CRASH = textwrap.dedent(
    f"""
    import sys
    import oaicohort.ingest.run as ingest

    def broken(db, root, **kwargs):
        participant = {SENTINEL!r}  # a local value that must never reach the terminal or a log
        raise RuntimeError("an unexpected bug")

    ingest.ingest_release = broken
    from oaicli.main import app
    app(prog_name="oai")
    """
)


def test_an_unexpected_exception_prints_no_local_values(tmp_path: Path) -> None:
    root = tmp_path / f"release-{SENTINEL}-path"
    root.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CRASH, "--db", str(tmp_path / "db.sqlite"), "-v", "ingest", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "RuntimeError" in output and "an unexpected bug" in output  # the traceback is there
    assert SENTINEL not in output  # neither the function's local nor the command's argument
