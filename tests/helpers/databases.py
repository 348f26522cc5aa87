"""Throw-away databases for tests: the back-ends, the PostgreSQL test server, fresh (empty) and
migrated copies. tests/conftest.py builds its database fixtures on these."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oaicohort.db import open_database

POSTGRES_ENV = "OAI_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]
IN_CI = os.environ.get("CI", "").lower() == "true"


def postgres_server_url() -> str:
    """The test server's URL, or a skip (locally) / failure (in CI) saying why there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    reason = f"no PostgreSQL test server: set {POSTGRES_ENV} (`source .ci/postgres.sh start` starts a throw-away one)"
    if IN_CI:
        pytest.fail(f"CI must run the PostgreSQL tests but {reason}")
    pytest.skip(reason)


def _postgres_statement(sql: str) -> None:
    admin = create_engine(postgres_server_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(sql))
    finally:
        admin.dispose()


def _postgres_database(template: str | None = None, prefix: str = "oai_test") -> str:
    """Create a PostgreSQL database (empty, or a copy of ``template``) and return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _postgres_statement(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def _postgres_url(name: str) -> str:
    return make_url(postgres_server_url()).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(name: str) -> None:
    _postgres_statement(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database of ``backend``; drop it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'cohort.sqlite'}"
        return
    name = _postgres_database()
    try:
        yield _postgres_url(name)
    finally:
        drop_postgres_database(name)


def sqlite_template(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "sqlite" not in templates:
        path = tmp_path_factory.mktemp("template") / "migrated.sqlite"
        open_database(path).dispose()
        templates["sqlite"] = str(path)
    return Path(templates["sqlite"])


def migrated_copy(
    backend: str, tmp_path: Path, templates: dict[str, str], factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Yield the URL of a new, migrated database of ``backend`` (a copy of the session's template);
    drop it afterwards."""
    if backend == "sqlite":
        target = tmp_path / "cohort.sqlite"
        shutil.copyfile(sqlite_template(templates, factory), target)
        yield f"sqlite:///{target}"
        return
    if "postgresql" not in templates:
        template = _postgres_database(prefix="oai_template")
        open_database(_postgres_url(template)).dispose()
        templates["postgresql"] = template
    name = _postgres_database(template=templates["postgresql"])
    try:
        yield _postgres_url(name)
    finally:
        drop_postgres_database(name)
