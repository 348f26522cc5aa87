"""Checks made before a database is used: that it exists (for commands that only read) and that
its schema is one this toolkit knows (not written by a newer version)."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from oaicohort.errors import DatabaseStateError


class SchemaNewerError(DatabaseStateError):
    """The database was migrated by a newer toolkit: this one must not touch it."""


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other back-ends and in-memory databases)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def require_existing(url: str) -> None:
    """A command that only reads never creates a database (or its folders): refuse a missing file."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise DatabaseStateError(
            f"{path}: no database here (nothing was created); check --db / OAI_DB, or run `oai ingest` first"
        )


def known_revisions() -> set[str]:
    from oaicohort.db.migrate import alembic_config

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
