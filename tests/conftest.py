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
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from oaicohort.db import Database, open_database
from tests.helpers.databases import (
    BACKENDS,
    IN_CI,
    drop_postgres_database,
    fresh_database_url,
    migrated_copy,
    sqlite_template,
)

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
        drop_postgres_database(templates["postgresql"])


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
    shutil.copyfile(sqlite_template(migrated_templates, tmp_path_factory), db_path)
    database = open_database(db_path)
    yield database
    database.dispose()


@pytest.fixture
def db(any_db: Database) -> Database:
    """An open, migrated database, once per back-end (SQLite, PostgreSQL)."""
    return any_db


# --------------------------------------------------------------------------- shared releases
# Written once per test process, read-only: a test that changes a release or its database works
# on a copy (tests.helpers.releases.copy_release, a file copy of the database). Exception: the
# `victim` fixtures of test_bad_inputs and test_sources_agree damage one series folder of
# imaging_release in place (its database rows name that folder) and restore it in their teardown.


@pytest.fixture(scope="session")
def pristine_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clinical tables of 30 synthetic participants (seed 3)."""
    from tests.helpers import releases  # the synthetic writers: only where a release is asked for

    return releases.clinical_release(tmp_path_factory.mktemp("pristine") / "release", subjects=30, seed=3)


@pytest.fixture(scope="session")
def ascii_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clinical tables of 30 synthetic participants (seed 5): what the distribution tests
    convert into each form (on copies)."""
    from tests.helpers import releases

    return releases.clinical_release(tmp_path_factory.mktemp("ascii") / "release", subjects=30, seed=5)


@pytest.fixture(scope="session")
def imaging_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """3 synthetic participants (seed 5) with small DESS series, and a SQLite database with the
    release ingested (a template: copy it before writing)."""
    from tests.helpers import releases

    return releases.small_imaging_release(tmp_path_factory.mktemp("imaging"), subjects=3, seed=5)


@pytest.fixture(scope="session")
def xray_imaging_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 synthetic participants (seed 5) with small DESS series and small radiographs."""
    from tests.helpers import releases

    root = tmp_path_factory.mktemp("xray_imaging") / "release"
    return releases.imaging_release(root, subjects=3, seed=5, radiographs=True)
