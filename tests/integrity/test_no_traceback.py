"""Class 6: no raw traceback anywhere. Every foreseeable failure is one short line naming the
path or value and what to do; ``--debug`` / ``OAI_DEBUG=1`` shows the traceback; commands that
only read never create a database or its folders."""

from __future__ import annotations

import errno
import json
import os
import pickle
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import text
from typer.testing import CliRunner

from oaicli.errors import translate
from oaicli.main import app
from oaicohort.db import Database, open_database
from tests.helpers.reliability import REPO, message_lines, run_oai


def _oai(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    output = result.output
    assert "Traceback" not in output, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), output
    return result.exit_code, " ".join(output.split())


def _short(output: str) -> None:
    assert len(output) < 400, output


# --------------------------------------------------------------------------- file system


def test_db_under_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    code, out = _oai("--db", str(tmp_path / "afile" / "oai.sqlite"), "ingest", str(tmp_path))
    assert code == 1 and "afile" in out and ("not a directory" in out or "already exists" in out), out
    _short(out)


def test_db_that_is_a_directory(tmp_path: Path, pristine_release: Path) -> None:
    (tmp_path / "db.sqlite").mkdir()
    code, out = _oai("--db", str(tmp_path / "db.sqlite"), "ingest", str(pristine_release))
    assert code == 1 and "database" in out, out
    _short(out)


def test_name_too_long(tmp_path: Path, pristine_release: Path) -> None:
    code, out = _oai("--db", str(tmp_path / ("x" * 300) / "db.sqlite"), "ingest", str(pristine_release))
    assert code == 1 and "file name too long" in out, out


def test_release_root_missing_or_a_file(tmp_path: Path) -> None:
    db = str(tmp_path / "db.sqlite")
    code, out = _oai("--db", db, "ingest", str(tmp_path / "nowhere"))
    assert code == 1 and "nowhere: no such directory" in out
    (tmp_path / "f.txt").write_text("x")
    code, out = _oai("--db", db, "ingest", str(tmp_path / "f.txt"))
    assert code == 1 and "f.txt: not a directory" in out


@pytest.mark.parametrize(
    ("number", "fragment"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only file system"),
        (errno.ENAMETOOLONG, "file name too long"),
        (errno.EISDIR, "is a directory"),
        (errno.ENOTDIR, "not a directory"),
        (errno.ENOENT, "no such file or directory"),
    ],
)
def test_os_errors_are_one_line_with_the_path(number: int, fragment: str) -> None:
    # as root, EACCES and read-only mounts cannot be provoked for real (an immutable file's EPERM
    # can: test_real_permission_errors_are_one_line_and_change_nothing)
    failure = translate(OSError(number, os.strerror(number), "/data/oai/cohort.sqlite"))
    assert failure.exit_code == 1
    assert failure.message.startswith("/data/oai/cohort.sqlite: ") and fragment in failure.message


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Make paths immutable (``chattr +i``): writes fail for real, with EPERM, even as root.
    Skips where the file system or the container does not allow it."""
    made: list[Path] = []

    def make(path: Path) -> None:
        try:
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, timeout=30)
        except OSError:
            pytest.skip("no chattr here")
        if done.returncode != 0:
            pytest.skip(f"chattr +i not permitted here: {done.stderr.decode(errors='replace').strip()}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, timeout=30)


def test_real_permission_errors_are_one_line_and_change_nothing(
    tmp_path: Path, pristine_release: Path, immutable: Callable[[Path], None]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    immutable(locked)
    code, out = _oai("--db", str(locked / "new.sqlite"), "ingest", str(pristine_release))
    assert code == 1 and out.startswith(f"error: {locked / 'new.sqlite'}: operation not permitted"), out
    code, out = _oai("synth", str(locked / "release"), "--subjects", "20")
    assert code == 1 and f"{locked / 'release'}: operation not permitted" in out, out
    assert not any(locked.iterdir())

    db = tmp_path / "cohort.sqlite"
    assert _oai("--db", str(db), "ingest", str(pristine_release))[0] == 0
    assert _oai("--db", str(db), "label")[0] == 0
    code, out = _oai("--db", str(db), "cohort", "--out", str(locked / "knees.csv"))
    assert code == 1 and f"{locked / 'knees.csv'}: operation not permitted" in out, out
    immutable(db)
    code, out = _oai("--db", str(db), "split", "--folds", "2")
    assert code == 1 and "the database is read-only" in out, out
    _short(out)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:  # nothing went to the WAL either
        assert conn.execute("SELECT count(*) FROM splits").fetchone() == (0,)


def test_disk_full_from_a_command_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "synth" / "Enrollees.txt"))

    monkeypatch.setattr("oaicli.synth.write_release", full)
    code, out = _oai("synth", str(tmp_path / "synth"), "--subjects", "20")
    assert code == 1 and "Enrollees.txt: no space left on the device" in out, out


def test_non_utf8_path_is_shown_with_its_bytes(tmp_path: Path) -> None:
    bad = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    done = subprocess.run(
        [sys.executable, "-m", "oaicli.main", "--db", str(tmp_path / "db.sqlite"), "ingest", bad],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, err
    text = " ".join(err.split())
    assert "Traceback" not in err and "caf\\xe9: a file or folder name that is not valid UTF-8" in text, text


# --------------------------------------------------------------------------- databases


def test_not_a_database_and_damaged_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is a text file, not a database\n" * 200)
    code, out = _oai("--db", str(junk), "db", "runs")
    assert code == 1 and "not a SQLite database" in out, out
    damaged = tmp_path / "damaged.sqlite"
    open_database(damaged).dispose()
    data = bytearray(damaged.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page
    damaged.write_bytes(bytes(data))
    code, out = _oai("--db", str(damaged), "db", "runs")
    assert code == 1 and ("damaged" in out or "not a SQLite database" in out), out
    _short(out)


def test_read_only_database_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a "file:" URI must not create anything (it once made a ./file: folder)
    path = tmp_path / "ro.sqlite"
    open_database(path).dispose()
    code, out = _oai("--db", f"sqlite:///file:{path}?mode=ro&uri=true", "ingest", str(tmp_path))
    assert code == 1 and "read-only" in out, out


def test_schema_newer_than_the_toolkit_is_said_so(any_db: Database) -> None:
    with any_db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    code, out = _oai("--db", any_db.url, "cohort")
    assert code == 1 and "revision 9999_future) is newer than this toolkit" in out, out
    code, out = _oai("--db", any_db.url, "db", "current")
    assert code == 0 and "newer than this toolkit" in out and "pending" not in out, out
    code, out = _oai("--db", any_db.url, "db", "upgrade")
    assert code == 1 and "newer than this toolkit" in out, out
    with any_db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9999_future"


@pytest.mark.parametrize(
    "command",
    [["cohort"], ["db", "runs"], ["db", "current"], ["store", "verify", "STORE"], ["eval", "RUN"]],
)
def test_read_only_commands_never_create_a_database_or_its_folders(command: list[str], tmp_path: Path) -> None:
    target = tmp_path / "not" / "there" / "oai.sqlite"
    args = [a.replace("STORE", str(tmp_path / "store")).replace("RUN", str(tmp_path / "run")) for a in command]
    code, out = _oai("--db", str(target), *args)
    assert not (tmp_path / "not").exists(), out
    if command != ["db", "current"]:
        assert code == 1, out


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize("variable", ["OAI_DB_LOCK_TIMEOUT", "OAI_DB_CONNECT_TIMEOUT", "OAI_DB_STATEMENT_TIMEOUT"])
@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_environment_values_name_the_variable(variable: str, value: str, tmp_path: Path) -> None:
    code, out = _oai("--db", str(tmp_path / "db.sqlite"), "db", "runs", env={variable: value})
    if code == 1 and "no database here" in out:  # db runs refuses a missing database first
        open_database(tmp_path / "db.sqlite").dispose()
        code, out = _oai("--db", str(tmp_path / "db.sqlite"), "label", env={variable: value})
    assert code == 1 and f"{variable}={value!r}: expected a number of seconds" in out, out


# --------------------------------------------------------------------------- checkpoints and run folders


def _run_folder(tmp_path: Path, config: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config)
    return run


def test_invalid_json_config_names_the_file(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, '{"config": {"model": "2d_trf",')
    code, out = _oai("eval", str(run))
    assert code == 1 and "config.json" in out and "invalid JSON" in out, out


def test_damaged_config_or_unknown_model_in_config(tmp_path: Path) -> None:
    run = _run_folder(tmp_path, json.dumps({"config": {"model": "no_such_net", "store": "x", "out": "y"}}))
    code, out = _oai("eval", str(run))
    assert code == 1 and "config.json: damaged run config: no layout, folds" in out, out
    layout = {"model": "no_such_net", "source_view": "sag"}
    (run / "config.json").write_text(json.dumps({"config": {}, "layout": layout, "folds": [0]}))
    code, out = _oai("eval", str(run))
    assert code == 1 and "config.json: damaged run config (unknown model 'no_such_net'" in out, out
    layout["model"] = "2d_trf"
    (run / "config.json").write_text(json.dumps({"config": {}, "layout": layout, "folds": [0]}))
    code, out = _oai("eval", str(run))
    assert code == 1 and "config.json: damaged run config (no stored_shape)" in out, out
    _short(out)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_checkpoint_errors_are_one_line(tmp_path: Path) -> None:
    from oaimodels.training.checkpoint import load_checkpoint

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(3)}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, evil)
    for path, fragment in [(truncated, "truncated"), (evil, "refused: not a plain state dict")]:
        with pytest.raises(BaseException) as err:
            load_checkpoint(path)
        assert fragment in translate(err.value).message
    net = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError) as err:
        net.load_state_dict({"weight": torch.zeros(5, 5), "bias": torch.zeros(2)})
    assert "wrong shapes" in translate(err.value).message and "weight" in translate(err.value).message
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)


# --------------------------------------------------------------------------- --debug


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 500)
    quiet = run_oai(str(junk), "db", "runs")
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert len(message_lines(quiet.stderr)) <= 3
    loud = run_oai(str(junk), "--debug", "db", "runs")
    assert loud.returncode == 1 and "Traceback" in loud.stderr
    env = run_oai(str(junk), "db", "runs", env={"OAI_DEBUG": "1"})
    assert "Traceback" in env.stderr
    assert sqlite3.sqlite_version  # the SQLite library raised, not the toolkit
