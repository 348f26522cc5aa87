"""Shared fixtures: throw-away databases (SQLite and, when a server is available, PostgreSQL).

Also the suite's machinery: the ``postgres`` marker on every PostgreSQL-parametrised test, the
``gpu`` marker's skip, the derandomised Hypothesis profile CI uses, and the coverage floor
applying to whole-suite runs only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from oaicohort.db import Database, open_database

POSTGRES_ENV = "OAI_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]
IN_CI = os.environ.get("CI", "").lower() == "true"

# CI runs every property test on the same examples (a failure there reproduces locally with
# HYPOTHESIS_PROFILE=ci); elsewhere Hypothesis keeps exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "default"))


def pytest_configure(config: pytest.Config) -> None:
    # The coverage floor (--cov-fail-under in pyproject) is about the whole suite: a run of some
    # files, or a -k/-m selection, still reports coverage but is not held to it.
    selected = (
        config.args_source != pytest.Config.ArgsSource.TESTPATHS or config.option.keyword or config.option.markexpr
    )
    cov = config.pluginmanager.getplugin("_cov")  # pytest-cov keeps its own copy of the options
    if selected and cov is not None:
        cov.options.cov_fail_under = None


def _postgres_parametrised(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v == "postgresql" for v in callspec.params.values())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda: bool | None = None
    for item in items:
        if _postgres_parametrised(item):
            item.add_marker(pytest.mark.postgres)
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def postgres_server_url() -> str:
    """The test server's URL, or a skip (locally) / failure (in CI) saying why there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    reason = f"no PostgreSQL test server: set {POSTGRES_ENV} (`source .ci/postgres.sh start` starts a throw-away one)"
    if IN_CI:
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
def sqlite_db(db_path: Path) -> Iterator[Database]:
    """An open, migrated SQLite database at ``db_path`` (for what only SQLite has: pragmas, files)."""
    database = open_database(db_path)
    yield database
    database.dispose()


@pytest.fixture
def db(any_db: Database) -> Database:
    """An open, migrated database, once per back-end (SQLite, PostgreSQL)."""
    return any_db
