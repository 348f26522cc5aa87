"""Several processes on one database: writers are serialised or refused cleanly, readers never
block and never see a half-finished write. Real processes, bounded in count and time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from oaicohort.db import Database
from oaicohort.db.schema import Subject

HOLD_WRITE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from oaicohort.db import open_database
    from oaicohort.db.schema import Subject
    db = open_database(sys.argv[1])
    with db.write() as s:
        for i in range(50):
            s.add(Subject(id=9100000 + i, site="A"))
        s.flush()
        print("locked", flush=True)
        # hold the lock until the test creates the release file (bounded, so nothing hangs)
        release, deadline = Path(sys.argv[2]), time.monotonic() + 240
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    print("done", flush=True)
    """
)

TRY_WRITE = textwrap.dedent(
    """
    import sys
    from oaicohort.db import open_database
    from oaicohort.errors import ConcurrentWriteError
    from oaicohort.db.schema import Subject
    db = open_database(sys.argv[1])
    try:
        with db.write() as s:
            s.add(Subject(id=9200000, site="B"))
    except ConcurrentWriteError as exc:
        print("refused:", exc, flush=True)
        sys.exit(3)
    print("written", flush=True)
    """
)

COUNT = textwrap.dedent(
    """
    import sys
    from sqlalchemy import func, select
    from oaicohort.db import open_database
    from oaicohort.db.schema import Subject
    db = open_database(sys.argv[1])
    with db.read() as s:
        print(s.scalar(select(func.count()).select_from(Subject)), flush=True)
    """
)


def _spawn(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_locked(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read() if proc.stderr else line


@pytest.mark.slow
def test_second_writer_refused_cleanly_when_lock_times_out(any_db: Database, tmp_path: Path) -> None:
    release = tmp_path / "release-holder"
    holder = _spawn(HOLD_WRITE, any_db.url, str(release))
    try:
        _wait_locked(holder)
        second = _spawn(TRY_WRITE, any_db.url, env={"OAI_DB_LOCK_TIMEOUT": "1"})
        # the holder keeps the lock until released below, so the second can only have been
        # refused by its own 1 s lock timeout, whatever its start-up took
        out, err = second.communicate(timeout=120)
        assert second.returncode == 3, err
        assert "another process is writing to this database" in out
        assert "nothing was changed" in out
        assert holder.poll() is None
        # a reader is not blocked by the writer and does not see its uncommitted rows
        reader = _spawn(COUNT, any_db.url)
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        assert out.strip() == "0"
    finally:
        release.touch()
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    with any_db.read() as s:
        assert s.get(Subject, 9200000) is None
        assert s.get(Subject, 9100049) is not None


@pytest.mark.slow
def test_second_writer_waits_and_then_succeeds(any_db: Database, tmp_path: Path) -> None:
    release = tmp_path / "release-holder"
    holder = _spawn(HOLD_WRITE, any_db.url, str(release))
    try:
        _wait_locked(holder)
        second = _spawn(TRY_WRITE, any_db.url, env={"OAI_DB_LOCK_TIMEOUT": "120"})
        time.sleep(2)  # the second is started and, whenever it gets to its write, waits
        assert second.poll() is None, second.communicate()
        release.touch()
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err
        assert out.strip() == "written"
    finally:
        release.touch()
        holder.communicate(timeout=60)
    with any_db.read() as s:
        assert s.get(Subject, 9200000) is not None
        assert s.get(Subject, 9100000) is not None
