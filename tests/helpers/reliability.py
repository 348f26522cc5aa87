"""Helpers of the reliability tests (concurrency, crash safety, bad inputs, security): running
the real `oai` command in a subprocess, killing it at chosen points, and comparing databases."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from oaicli.progress import is_progress_line
from oaicohort.db import POSTGRES_WRITE_LOCK_KEY, Database
from oaicohort.db.schema import Knee, Store, Volume
from oaicohort.ingest.writer import TABLES

REPO = Path(__file__).resolve().parents[2]
DATA_TABLES = TABLES  # every table an ingest writes
LABEL_TABLES = ("label_definitions", "knee_labels", "splits", "split_assignments")
# columns that differ between databases holding the same data (surrogate ids, paths, times)
_VOLATILE = {
    "id",
    "knee_id",
    "split_id",
    "definition_id",
    "series_id",
    "created_at",
    "visit_dir",
    "source_file",
    "ingest_run_id",
    "store_path",
    "store_id",
}


def message_lines(output: str) -> list[str]:
    """The lines of a command's output a user reads as its result or error: blank lines and the
    plain progress lines a slow step writes (how many depends on the machine's load) left out.
    Tests that count output lines count these."""
    return [line for line in output.strip().splitlines() if line.strip() and not is_progress_line(line)]


def oai_command(db_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "oaicli.main", "--db", db_url, *args]


def spawn_oai(db_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        oai_command(db_url, *args),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def run_oai(
    db_url: str, *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        oai_command(db_url, *args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_lock_held(db_url: str) -> bool:
    """Whether some process holds the toolkit's writer lock (it is inside a write transaction)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        else:
            conn.execute("ROLLBACK")
            return False
        finally:
            conn.close()
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            held = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid = 0 AND objid = :key AND objsubid = 1 "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": POSTGRES_WRITE_LOCK_KEY},
            ).scalar()
    finally:
        engine.dispose()
    return bool(held)


def write_lock_held_for(db_url: str, seconds: float) -> bool:
    """Whether a writer holds the lock now and still ``seconds`` later: inside a long write
    transaction (a data write), not one of the short ones around it."""
    if not write_lock_held(db_url):
        return False
    time.sleep(seconds)
    return write_lock_held(db_url)


def kill_when(
    proc: subprocess.Popen[str], ready: Callable[[], bool], *, delay: float = 0.0, timeout: float = 120
) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready():
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the command never reached the kill point")
        time.sleep(0.005)
    if delay:
        time.sleep(delay)
    if proc.poll() is not None:
        proc.communicate()
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()  # reap it: a zombie would still look alive
    return True


def table_rows(db: Database, tables: tuple[str, ...]) -> dict[str, list[tuple[Any, ...]]]:
    """Rows of ``tables`` without surrogate ids, paths and times, sorted: equal for equal data."""
    out = {}
    with db.read() as s:
        for table in tables:
            rows = s.execute(text(f"SELECT * FROM {table}")).mappings()
            out[table] = sorted(tuple(sorted((k, _text(v)) for k, v in r.items() if k not in _VOLATILE)) for r in rows)
    return out


def _text(value: Any) -> str:
    # raw SELECTs give SQLite's 0/1 where PostgreSQL gives booleans
    return str(int(value)) if isinstance(value, bool) else str(value)


def counts(db: Database, tables: tuple[str, ...]) -> dict[str, int]:
    with db.read() as s:
        return {t: s.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


def run_statuses(db: Database) -> list[str]:
    with db.read() as s:
        return list(s.execute(text("SELECT status FROM ingest_runs ORDER BY id")).scalars())


def store_checksums(db: Database, store: Path) -> dict[tuple[int, str, str], str]:
    """The checksum of every volume the database indexes in ``store``, by (subject, side, view);
    every row must be ok, and each (knee, view) indexed once."""
    with db.read() as s:
        rows = s.execute(
            select(Knee.subject_id, Knee.side, Volume.view, Volume.checksum, Volume.status)
            .join(Knee, Knee.id == Volume.knee_id)
            .join(Store, Store.id == Volume.store_id)
            .where(Store.path == str(store.resolve()))
        ).all()
    assert {r.status for r in rows} <= {"ok"}
    assert max(Counter((r.subject_id, r.side, r.view) for r in rows).values(), default=1) == 1  # each once
    return {(r.subject_id, r.side, r.view): r.checksum for r in rows}
