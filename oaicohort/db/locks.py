"""The toolkit's single-writer rule: PostgreSQL advisory lock, timeout and the error a waiting writer gets."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from oaicohort.envconfig import env_seconds
from oaicohort.errors import ConcurrentWriteError

# arbitrary constant naming the toolkit's writer lock among PostgreSQL advisory locks
POSTGRES_WRITE_LOCK_KEY = 0x0A1C_0407


def lock_timeout_s() -> float:
    """Seconds a writer waits for another writer to finish (``OAI_DB_LOCK_TIMEOUT``, default 60)."""
    return env_seconds("OAI_DB_LOCK_TIMEOUT", 60.0, allow_zero=True)


def concurrent_write_error(url: str) -> ConcurrentWriteError:
    shown = make_url(url).render_as_string(hide_password=True)
    return ConcurrentWriteError(
        f"{shown}: another process is writing to this database (waited {lock_timeout_s():g} s); "
        "nothing was changed - run the command again when it has finished "
        "(or raise OAI_DB_LOCK_TIMEOUT)"
    )


def take_postgres_write_lock(conn: Connection, url: str) -> None:
    """Take the writer lock in ``conn``'s transaction (held until it ends); refuse after the timeout."""
    timeout_ms = int(lock_timeout_s() * 1000)
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {timeout_ms}")
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POSTGRES_WRITE_LOCK_KEY})")
    except OperationalError as exc:
        raise concurrent_write_error(url) from exc
    conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
