"""Connect and statement time-outs of every database connection, so that no command hangs.

=============================  =======  =====================================================
variable                       default  bounds
=============================  =======  =====================================================
``OAI_DB_CONNECT_TIMEOUT``     10 s     establishing a connection (PostgreSQL: TCP, TLS and
                                        the server's first answer; a server that accepts the
                                        connection and never answers fails after this time)
``OAI_DB_STATEMENT_TIMEOUT``   900 s    one SQL statement (PostgreSQL ``statement_timeout``;
                                        SQLite: a progress handler interrupts the statement)
``OAI_DB_LOCK_TIMEOUT``        60 s     waiting for another writer (oaicohort.db.locks)
=============================  =======  =====================================================

A statement that runs past its time-out is cancelled and its transaction rolled back, like any
other failure: nothing of it is committed.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, event

from oaicohort.envconfig import env_seconds

CONNECT_TIMEOUT_ENV = "OAI_DB_CONNECT_TIMEOUT"
STATEMENT_TIMEOUT_ENV = "OAI_DB_STATEMENT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_STATEMENT_TIMEOUT_S = 900.0
# SQLite calls the progress handler every this many virtual-machine instructions (microseconds)
_SQLITE_PROGRESS_STEPS = 100_000


def connect_timeout_s() -> float:
    return env_seconds(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S)


def statement_timeout_s() -> float:
    return env_seconds(STATEMENT_TIMEOUT_ENV, DEFAULT_STATEMENT_TIMEOUT_S)


def check_timeout_settings() -> None:
    """Refuse a bad value of any time-out variable on every back-end (not only where it is used)."""
    connect_timeout_s()
    statement_timeout_s()


def postgres_connect_args() -> dict[str, Any]:
    """psycopg connection arguments: libpq's ``connect_timeout`` (whole seconds, at least 2, as
    libpq requires)."""
    return {"connect_timeout": max(2, math.ceil(connect_timeout_s()))}


def install_postgres_statement_timeout(engine: Engine) -> None:
    """``SET statement_timeout`` on every new connection (a SET rather than the ``options``
    startup parameter, which connection poolers such as PgBouncer refuse)."""
    limit_ms = int(statement_timeout_s() * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {limit_ms}")
        dbapi_conn.commit()


def install_sqlite_statement_timeout(engine: Engine) -> None:
    """Interrupt any SQLite statement that runs longer than ``OAI_DB_STATEMENT_TIMEOUT``.

    SQLite has no statement time-out of its own: a progress handler checks a deadline set when
    each statement starts (``sqlite3.OperationalError: interrupted`` then rolls it back)."""
    limit = statement_timeout_s()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, record: Any) -> None:
        deadline = [math.inf]
        record.info["oai_deadline"] = deadline
        dbapi_conn.set_progress_handler(lambda: int(time.monotonic() > deadline[0]), _SQLITE_PROGRESS_STEPS)

    @event.listens_for(engine, "before_cursor_execute")
    def _on_execute(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool) -> None:
        deadline = conn.connection.info.get("oai_deadline")
        if deadline is not None:
            deadline[0] = time.monotonic() + limit
