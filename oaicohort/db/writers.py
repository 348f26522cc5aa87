"""Who is writing: the process behind a ``running`` ingest run, and whether it is still alive.

An ingest commits its provenance row as ``running`` before it starts, so that a killed ingest
leaves a trace. The next ingest marks such rows ``interrupted``, but only when their writer is
certainly gone: a concurrent ingest that is still reading files holds no database lock, so
"I hold the write lock" proves nothing about it.

- PostgreSQL: a running ingest holds a session-level advisory lock keyed by its run id, on a
  connection of its own, from before its row is committed until its outcome is. The server
  drops the lock when the process dies (its connection closes), so on any host "the lock can be
  taken" means "the writer is gone".
- SQLite (one machine): the row names the writer's host, pid and the start time of that process
  (boot id and start ticks from ``/proc``, against pid reuse). A writer on another host cannot be
  checked; its row is left as it is.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from oaicohort.db import Database

log = logging.getLogger(__name__)

# first key of the two-key advisory locks (class, run id); the two-key space is apart from the
# one-key space of the writer lock (oaicohort.db.POSTGRES_WRITE_LOCK_KEY)
RUN_LOCK_CLASS = 0x0A1C


@dataclass(frozen=True)
class WriterIdentity:
    """Host, pid and an opaque start token ("" where unknown) of a writing process."""

    host: str
    pid: int
    start: str

    @classmethod
    def current(cls) -> WriterIdentity:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _start_token(pid) or "")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name; None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses


def _start_token(pid: int) -> str | None:
    if not Path("/proc/self/stat").exists():
        return None
    fields = _proc_stat(pid)
    return None if fields is None else f"{_boot_id()}:{fields[19]}"  # field 22: start ticks


def process_alive(pid: int, start: str = "") -> bool:
    """Whether process ``pid`` of this host runs (not a zombie) and, when ``start`` is given, is
    the same process that recorded it (a recycled pid is not)."""
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return not start or f"{_boot_id()}:{fields[19]}" == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def writer_gone(session: Session, run_id: int, host: str | None, pid: int | None, start: str | None) -> bool:
    """Whether the writer of a ``running`` run has certainly ended (see the module docstring).

    On PostgreSQL a positive answer holds the run's lock until the session's transaction ends,
    so two processes never both act on one dead run at the same time.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        taken = conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:cls, :run)"), {"cls": RUN_LOCK_CLASS, "run": run_id}
        ).scalar()
        return bool(taken)
    if host != socket.gethostname() or pid is None:
        return False  # another machine's process (or an unknown one): cannot tell
    return not process_alive(pid, start or "")


class RunLease:
    """A run's liveness lock on PostgreSQL, held on a connection of its own (no-op on SQLite)."""

    def __init__(self, conn: Connection | None, run_id: int) -> None:
        self._conn = conn
        self.run_id = run_id

    @classmethod
    def take(cls, db: Database, run_id: int) -> RunLease:
        if db.is_sqlite:
            return cls(None, run_id)
        conn = db.engine.connect()
        try:
            conn.execute(text("SELECT pg_advisory_lock(:cls, :run)"), {"cls": RUN_LOCK_CLASS, "run": run_id})
            conn.commit()  # the session-level lock outlives the transaction; the connection idles
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return cls(conn, run_id)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:cls, :run)"), {"cls": RUN_LOCK_CLASS, "run": self.run_id})
            conn.commit()
        except Exception:  # a broken connection has lost the lock anyway; never reuse it
            log.debug("could not release the lease of ingest run %d", self.run_id, exc_info=True)
            conn.invalidate()
        finally:
            conn.close()
