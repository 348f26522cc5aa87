"""Checks made before a database is used: that it exists (for commands that only read). That its
schema is one this toolkit knows is checked by ``oaicohort.db.migrate``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from oaicohort.errors import DatabaseStateError


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
