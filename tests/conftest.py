"""Shared fixtures: throw-away databases (SQLite and, when a server is available, PostgreSQL).

A migrated database is copied from a template migrated once per session and back-end (a file
copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` for PostgreSQL): running the Alembic chain for
each of several hundred tests was a large part of the suite's time. Tests of migrating itself
use ``database_url`` / ``fresh_database_url``, which stay empty.

Also the suite's machinery: the ``postgres`` marker on every PostgreSQL-parametrised test, the
``gpu`` marker's skip, the derandomised Hypothesis profile CI uses, and the coverage floor
applying to whole-suite runs only.
"""

from __future__ import annotations

import os
import shutil
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


def _drop_postgres_database(name: str) -> None:
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
        _drop_postgres_database(name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL, once per back-end (SQLite, PostgreSQL)."""
    yield from fresh_database_url(request.param, tmp_path)


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Per back-end, where a migrated empty database lies: a SQLite file, a PostgreSQL database
    name (made on first use, dropped at the end of the session)."""
    templates: dict[str, str] = {}
    yield templates
    if "postgresql" in templates:
        _drop_postgres_database(templates["postgresql"])


def _sqlite_template(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
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
        shutil.copyfile(_sqlite_template(templates, factory), target)
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
        _drop_postgres_database(name)


@pytest.fixture(params=BACKENDS)
def any_db(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    migrated_templates: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Database]:
    """An open, migrated database on each back-end."""
    for url in migrated_copy(request.param, tmp_path, migrated_templates, tmp_path_factory):
        database = open_database(url)
        yield database
        database.dispose()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cohort.sqlite"


@pytest.fixture
def sqlite_db(
    db_path: Path, migrated_templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """An open, migrated SQLite database at ``db_path`` (for what only SQLite has: pragmas, files)."""
    shutil.copyfile(_sqlite_template(migrated_templates, tmp_path_factory), db_path)
    database = open_database(db_path)
    yield database
    database.dispose()


@pytest.fixture
def db(any_db: Database) -> Database:
    """An open, migrated database, once per back-end (SQLite, PostgreSQL)."""
    return any_db
