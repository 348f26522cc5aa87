"""Opening databases: URL resolution, automatic migrations, SQLite settings, transactions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database, open_database, resolve_url, table_names
from oaicohort.db.engine import make_engine
from oaicohort.db.migrate import current_revision, downgrade, head_revision, upgrade
from oaicohort.db.schema import Base, Subject

EXPECTED_TABLES = {
    "subjects",
    "subject_visits",
    "clinical_values",
    "knees",
    "xray_readings",
    "knee_replacements",
    "image_series",
    "ingest_runs",
    "ingest_files",
    "label_definitions",
    "knee_labels",
    "splits",
    "split_assignments",
    "volumes",
}


def test_resolve_url_path_env_and_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OAI_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'oai.sqlite'}"
    assert resolve_url("a/b.sqlite") == f"sqlite:///{tmp_path / 'a' / 'b.sqlite'}"
    monkeypatch.setenv("OAI_DB", "postgresql+psycopg://u@localhost/oai")
    assert resolve_url(None) == "postgresql+psycopg://u@localhost/oai"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"


def test_open_migrates_empty_database_to_head(any_db: Database) -> None:
    assert current_revision(any_db.engine) == head_revision()
    assert set(table_names(any_db.engine)) >= EXPECTED_TABLES


def test_models_match_migrations(any_db: Database) -> None:
    with any_db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_up_again(any_db: Database) -> None:
    downgrade(any_db.engine, "base")
    assert set(table_names(any_db.engine)) == {"alembic_version"}
    upgrade(any_db.engine)
    assert set(table_names(any_db.engine)) >= EXPECTED_TABLES


def test_an_upgrade_is_one_transaction_so_the_writer_lock_is_never_let_go(database_url: str) -> None:
    # Alembic alone commits after each revision on SQLite: another process could take the lock
    # between two revisions and both would then run the next one (a flaky "already exists")
    engine = make_engine(database_url)
    commits: list[str] = []
    event.listen(engine, "commit", lambda conn: commits.append("commit"))
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert commits == ["commit"]
    finally:
        engine.dispose()


def test_a_failing_revision_leaves_the_database_as_it_was(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:  # an object a later revision creates is in the way
            conn.execute(text("CREATE TABLE xray_rois (id INTEGER PRIMARY KEY)"))
        with pytest.raises(DBAPIError, match="xray_rois"):
            upgrade(engine)
        assert current_revision(engine) is None
        assert set(table_names(engine)) == {"xray_rois"}
    finally:
        engine.dispose()


def test_sqlite_settings(sqlite_db: Database, db_path: Path) -> None:
    with sqlite_db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    mode = db_path.stat().st_mode
    assert not mode & stat.S_IWOTH and not mode & stat.S_IWGRP


def test_write_rolls_back_on_error(any_db: Database) -> None:
    with any_db.write() as s:
        s.add(Subject(id=9000001, site="A", sex="F"))
    with pytest.raises(RuntimeError), any_db.write() as s:
        s.add(Subject(id=9000002, site="B", sex="M"))
        s.flush()
        raise RuntimeError("boom")
    with any_db.read() as s:
        assert s.get(Subject, 9000001) is not None
        assert s.get(Subject, 9000002) is None


def test_cli_db_current_and_upgrade(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "cli.sqlite"
    res = runner.invoke(app, ["--db", str(target), "db", "current", "--json"])
    assert res.exit_code == 0, res.output
    assert '"current": null' in res.stdout
    res = runner.invoke(app, ["--db", str(target), "db", "upgrade"])
    assert res.exit_code == 0, res.output
    reopened = open_database(target, migrate=False)
    assert current_revision(reopened.engine) == head_revision()
