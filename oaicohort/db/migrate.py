"""Alembic migrations applied programmatically (on open, or by ``oai db upgrade``)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url

from oaicohort.db.locks import take_postgres_write_lock
from oaicohort.errors import DatabaseStateError

log = logging.getLogger(__name__)


def migrations_folder() -> Path:
    """The Alembic script folder, installed as ``oaicohort.db.migrations`` (the repository's ``migrations/``)."""
    spec = importlib.util.find_spec("oaicohort.db.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("oaicohort.db.migrations is not installed: reinstall the toolkit (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_folder()))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _writer_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in ONE transaction that holds the database's writer lock throughout.

    Two processes migrating at once serialise here (SQLite: BEGIN IMMEDIATE; PostgreSQL: the
    writer lock), and the second then finds the work done. The whole upgrade must be one
    transaction: Alembic, left to itself on SQLite (no transactional DDL in its book), commits
    after every revision, releasing the lock between revisions; a second process could then
    read the half-way version and both would run the next revision ("trigger ... already
    exists"). Alembic sees the transaction as external and leaves committing to us.
    """
    with engine.connect() as conn:
        conn.info["write"] = True
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    take_postgres_write_lock(conn, engine.url.render_as_string(hide_password=True))
                yield conn
        finally:
            conn.info.pop("write", None)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``; a no-op (one cheap query) when already there."""
    current = current_revision(engine)
    if revision == "head" and current == head_revision():
        return
    check_schema_known(current, engine.url.render_as_string(hide_password=True))
    cfg = alembic_config(engine)
    with _writer_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    log.info("database migrated to %s", revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine)
    with _writer_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


# --------------------------------------------------------------------------- a schema from a newer toolkit


class SchemaNewerError(DatabaseStateError):
    """The database was migrated by a newer toolkit: this one must not touch it."""


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def is_newer_schema(revision: str | None) -> bool:
    """True when ``revision`` is not one of this toolkit's migrations (a newer toolkit wrote it)."""
    return revision is not None and revision not in known_revisions()


def check_schema_known(revision: str | None, url: str) -> None:
    if is_newer_schema(revision):
        shown = make_url(url).render_as_string(hide_password=True)
        raise SchemaNewerError(
            f"{shown}: the database schema (revision {revision}) is newer than this toolkit knows; "
            "upgrade the toolkit (pip install -U) to use it; nothing was changed"
        )
