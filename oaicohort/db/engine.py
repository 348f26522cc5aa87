"""Opening the cohort database: URL resolution, SQLite pragmas, automatic Alembic migration.

``--db`` / ``OAI_DB`` accept a file path (SQLite, the embedded default ``./oai.sqlite``) or any
SQLAlchemy URL (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from oaicohort.db.guards import require_existing
from oaicohort.db.lock_wait import begin_immediate
from oaicohort.db.locks import concurrent_write_error, lock_timeout_s, take_postgres_write_lock
from oaicohort.db.timeouts import (
    check_timeout_settings,
    install_postgres_statement_timeout,
    install_sqlite_statement_timeout,
    postgres_connect_args,
)

log = logging.getLogger(__name__)

DEFAULT_DB = "oai.sqlite"
ENV_VAR = "OAI_DB"


def resolve_url(db: str | os.PathLike[str] | None = None) -> str:
    """Turn ``--db`` (a path or URL; falls back to ``$OAI_DB``, then ``./oai.sqlite``) into a URL."""
    value = str(db) if db is not None else os.environ.get(ENV_VAR) or DEFAULT_DB
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy (not pysqlite) issue BEGIN so that a transaction really spans the
        # whole unit of work; BEGIN IMMEDIATE for writers is chosen per transaction.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(lock_timeout_s() * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        try:
            mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode and str(mode[0]).lower() != "wal":
                log.debug("SQLite WAL not available here; journal mode is %s", mode[0])
        except Exception:  # some filesystems (network mounts) refuse WAL
            log.debug("SQLite WAL not available; using the default journal")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        if conn.info.get("write"):
            begin_immediate(conn)  # waits in Python: Ctrl-C interrupts the wait at once
        else:
            conn.exec_driver_sql("BEGIN")


def make_engine(url: str) -> Engine:
    """Create an engine with the toolkit's connection settings (no migration)."""
    parsed = make_url(url)
    check_timeout_settings()
    if parsed.get_backend_name() == "sqlite":
        # a "file:" URI (uri=true, e.g. mode=ro) is opened as given, never created
        if parsed.database and parsed.database != ":memory:" and "uri" not in parsed.query:
            db_path = Path(parsed.database)
            # created without group/world write permission (SQLite gives its -wal and -shm
            # files the database file's mode)
            old = os.umask(0o022)
            try:
                db_path.parent.mkdir(parents=True, exist_ok=True)
                if not db_path.exists():
                    db_path.touch(mode=0o644)
            finally:
                os.umask(old)
        engine = create_engine(url, connect_args={"timeout": lock_timeout_s()})
        _configure_sqlite(engine)
        install_sqlite_statement_timeout(engine)
        return engine
    if parsed.get_backend_name() != "postgresql":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, pool_pre_ping=True, connect_args=postgres_connect_args())
    install_postgres_statement_timeout(engine)
    return engine


@dataclass
class Database:
    """An open cohort database: its URL, engine and a session factory."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    # sessions of read(): on PostgreSQL REPEATABLE READ, READ ONLY (see read())
    read_sessions: sessionmaker[Session] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work: one consistent snapshot, however many SELECTs it runs.

        SQLite (WAL) gives a read transaction one snapshot by itself; PostgreSQL's default READ
        COMMITTED would let every statement see a newer commit (a reader could count subjects
        before an ingest and readings after it), so reads run REPEATABLE READ, READ ONLY there.
        """
        with (self.read_sessions or self.sessions)() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed at the end, rolled back on any exception.

        Writers are serialised: on SQLite by taking the write lock at BEGIN
        (``BEGIN IMMEDIATE``), on PostgreSQL by a transaction-scoped advisory lock. A writer
        that cannot get the lock within ``OAI_DB_LOCK_TIMEOUT`` seconds (default 60) fails with
        ``ConcurrentWriteError`` before changing anything, never half-way through.
        """
        with self.engine.connect() as conn:
            conn.info["write"] = True
            try:
                try:
                    transaction = conn.begin()
                except OperationalError as exc:
                    raise concurrent_write_error(self.url) from exc
                with transaction:
                    if conn.dialect.name == "postgresql":
                        take_postgres_write_lock(conn, self.url)
                    session = Session(bind=conn, expire_on_commit=False)
                    try:
                        yield session
                        session.flush()
                    finally:
                        session.close()
            finally:
                conn.info.pop("write", None)

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(db: str | os.PathLike[str] | None = None, *, migrate: bool = True, create: bool = True) -> Database:
    """Open (and by default migrate to head) the cohort database named by ``db``.

    ``create=False`` (commands that only read): a missing SQLite file is an error, not created."""
    url = resolve_url(db)
    if not create:
        require_existing(url)
    engine = make_engine(url)
    if migrate:
        from oaicohort.db.migrate import upgrade

        try:
            upgrade(engine)
        except BaseException:  # refused (a newer schema, a lock time-out...): close what was opened
            engine.dispose()
            raise
    readers = engine
    if engine.dialect.name == "postgresql":
        readers = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return Database(
        url=url,
        engine=engine,
        sessions=sessionmaker(engine, expire_on_commit=False),
        read_sessions=sessionmaker(readers, expire_on_commit=False),
    )


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())
