"""Waiting for SQLite's write lock in Python, so that Ctrl-C stops the wait at once.

SQLite's own busy handler sleeps inside one C call: a Ctrl-C is only seen when the whole
``OAI_DB_LOCK_TIMEOUT`` has passed, and then the command reports "another process is writing"
although the user interrupted it. Here ``BEGIN IMMEDIATE`` is tried with a short busy timeout in
a Python loop; ``KeyboardInterrupt`` (and SIGTERM, see ``oaicohort.interrupts``) ends the wait
at the next step and propagates as what it is.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.exc import OperationalError

from oaicohort.db.locks import lock_timeout_s

_STEP_MS = 50  # SQLite's busy wait per attempt


def begin_immediate(conn: Any) -> None:
    """``BEGIN IMMEDIATE`` on ``conn`` (a SQLAlchemy connection), waiting up to the lock time-out."""
    deadline = time.monotonic() + lock_timeout_s()
    dbapi = conn.connection.dbapi_connection
    (previous,) = dbapi.execute("PRAGMA busy_timeout").fetchone()
    dbapi.execute(f"PRAGMA busy_timeout = {_STEP_MS}")
    try:
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise
            time.sleep(0.02)  # interruptible: Ctrl-C lands here, not inside SQLite
    finally:
        dbapi.execute(f"PRAGMA busy_timeout = {int(previous)}")
