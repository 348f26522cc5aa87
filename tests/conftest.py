"""Shared fixtures: throw-away databases (SQLite and, when a server is available, PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oaicohort.db import Database, open_database

POSTGRES_ENV = "OAI_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]


def postgres_server_url() -> str:
    """The test server's URL, or a skip (locally) / failure (in CI) saying why there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    reason = f"no PostgreSQL test server: set {POSTGRES_ENV} (`source .ci/postgres.sh start` starts a throw-away one)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the PostgreSQL tests but {reason}")
    pytest.skip(reason)


def fresh_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database of ``backend``; drop it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'cohort.sqlite'}"
        return
    server = postgres_server_url()
    name = f"oai_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL, once per back-end (SQLite, PostgreSQL)."""
    yield from fresh_database_url(request.param, tmp_path)


@pytest.fixture
def any_db(database_url: str) -> Iterator[Database]:
    """An open, migrated database on each back-end."""
    database = open_database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cohort.sqlite"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    """An open, migrated SQLite database in a temporary folder."""
    database = open_database(db_path)
    yield database
    database.dispose()
