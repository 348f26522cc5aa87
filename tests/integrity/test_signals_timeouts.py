"""Class 5: signals and time-outs, with real processes and a real silent server.

SIGINT and SIGTERM stop a command promptly with its worker processes (no orphans); Ctrl-C while
waiting for the writer lock exits at once without blaming another writer; every connection has
a connect and a statement time-out; an unreachable or silent server is a one-line error within
seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from oaicli.errors import translate
from oaicohort.db import Database, open_database
from oaicohort.ingest.run import ingest_release
from tests.helpers.reliability import REPO, run_oai, spawn_oai


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def imaging_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from oaicohort.synth import write_release
    from oaicohort.synth.images import write_images

    base = tmp_path_factory.mktemp("signals")
    write_release(base / "release", subjects=60, seed=2)  # ~120 series: seconds of work to interrupt
    write_images(base / "release", size="small", seed=2)
    db = open_database(base / "template.sqlite")
    ingest_release(db, base / "release")
    db.dispose()
    return base / "release", base / "template.sqlite"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_preprocess_and_its_workers(imaging_db: tuple[Path, Path], tmp_path: Path, sig: int) -> None:
    _, template = imaging_db
    db = tmp_path / "db.sqlite"
    db.write_bytes(template.read_bytes())
    proc = spawn_oai(
        f"sqlite:///{db}", "preprocess", "--store", str(tmp_path / "v.zarr"), "--preset", "small", "--workers", "2"
    )
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 2:
        workers = {p for p in _children(proc.pid) if _alive(p)}
        workers |= {g for p in list(workers) for g in _children(p)}
        time.sleep(0.2)
    assert len(workers) >= 2, "the worker processes never started"
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert took < 15, f"took {took:.1f} s to stop"
    assert "Traceback" not in err and ("interrupted" in err or "terminated" in err)
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "worker processes were left behind"


HOLD_WRITE = textwrap.dedent(
    """
    import sys, time
    from oaicohort.db import open_database
    db = open_database(sys.argv[1])
    with db.write() as s:
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_ctrl_c_while_waiting_for_the_writer_lock_exits_at_once(any_db: Database, pristine_release: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE, any_db.url, "60"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        waiter = spawn_oai(any_db.url, "ingest", str(pristine_release), env={"OAI_DB_LOCK_TIMEOUT": "60"})
        time.sleep(6)  # started, and now waiting for the lock
        assert waiter.poll() is None
        t0 = time.monotonic()
        waiter.send_signal(signal.SIGINT)
        _, err = waiter.communicate(timeout=30)
        assert time.monotonic() - t0 < 5
        assert waiter.returncode == 130, err
        assert "another process is writing" not in err and "interrupted" in err
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


class SilentServer:
    """Accepts TCP connections and never answers (a hung database server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_silent_server_is_a_one_line_error_within_seconds(silent_server: SilentServer) -> None:
    url = f"postgresql+psycopg://oai@127.0.0.1:{silent_server.port}/oai"
    t0 = time.monotonic()
    done = run_oai(url, "db", "runs", env={"OAI_DB_CONNECT_TIMEOUT": "2"}, timeout=60)
    took = time.monotonic() - t0
    assert done.returncode == 1, done.stderr
    assert took < 20, f"{took:.1f} s"
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) <= 3, done.stderr
    assert "did not answer in time" in " ".join(done.stderr.split())


def test_an_unreachable_server_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_oai(f"postgresql+psycopg://oai@127.0.0.1:{port}/oai", "db", "runs", timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot reach the database server" in " ".join(done.stderr.split()), done.stderr


def test_statement_timeout_on_both_backends(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAI_DB_STATEMENT_TIMEOUT", "1")
    db = open_database(database_url)
    slow = (
        "SELECT pg_sleep(4)"
        if db.engine.dialect.name == "postgresql"
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    t0 = time.monotonic()
    with pytest.raises(Exception) as err, db.read() as s:
        s.execute(text(slow)).all()
    assert time.monotonic() - t0 < 4
    assert "did not answer in time" in translate(err.value).message
    with db.read() as s:  # the connection is usable again
        assert s.execute(text("SELECT 1")).scalar() == 1
    db.dispose()


def test_timeouts_are_documented_with_their_defaults() -> None:
    from oaicohort.db import timeouts

    doc = timeouts.__doc__ or ""
    for name, default in (("OAI_DB_CONNECT_TIMEOUT", "10 s"), ("OAI_DB_STATEMENT_TIMEOUT", "900 s")):
        assert name in doc and default in doc
    assert timeouts.DEFAULT_CONNECT_TIMEOUT_S == 10 and timeouts.DEFAULT_STATEMENT_TIMEOUT_S == 900
