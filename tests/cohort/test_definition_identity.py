"""Issue 12: a label definition's identity excludes where images live; migration 0005 merges
definitions that differed only by their image store; vocabulary CHECK constraints."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.definitions import preset
from oaicohort.db import Database, open_database
from oaicohort.db.migrate import downgrade, upgrade
from tests.helpers.cohort_rows import add_knee, add_subject

OLD_PANFILOV = {  # as revision 0004's toolkit stored panfilov2022 (hash included image_store)
    "name": "panfilov2022",
    "followup_visits": [1, 3, 5, 8, 10],
    "fast_before_month": 72,
    "horizon_month": 96,
    "count_0_to_1": False,
    "missing_klg": "progression_proxy",
    "non_progressor_requires": "subject_at_last_visit",
    "baseline_klg_allowed": [0, 1, 2, 3],
    "duplicates": "first",
    "exclusions": ["replaced_at_baseline", "bmi_missing", "no_baseline_dess"],
    "dess_sequence": "SAG_3D_DESS",
    "image_store": None,
}
# sha256 of the canonical JSON of OLD_PANFILOV without its name: the published preset hash
PANFILOV_HASH = preset("panfilov2022").hash()


def test_store_is_not_part_of_the_hash() -> None:
    p = preset("panfilov2022")
    assert dataclasses.replace(p, image_store="/data/store.zarr").hash() == p.hash()
    # the hash of definitions stored before the rule is unchanged
    import hashlib

    old = {k: v for k, v in OLD_PANFILOV.items() if k != "name"}
    assert p.hash() == hashlib.sha256(json.dumps(old, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_oai_label_with_and_without_store_is_one_definition(tmp_path: Path) -> None:
    db_file = tmp_path / "oai.sqlite"
    db = open_database(db_file)
    store = tmp_path / "vol.zarr"
    with db.write() as s:
        add_subject(s, 9300001)
        knee = add_knee(s, 9300001, "R", {0: 1, 10: 1})
        s.execute(
            text("INSERT INTO stores (id, path, created_at) VALUES ('store-1', :p, :t)"),
            {"p": str(store.resolve()), "t": dt.datetime(2026, 1, 1)},
        )
        s.execute(
            text(
                "INSERT INTO volumes (knee_id, visit, view, store_id, params_hash, status, created_at) "
                "VALUES (:k, 0, 'sag', 'store-1', 'h', 'ok', :t)"
            ),
            {"k": knee, "t": dt.datetime(2026, 1, 1)},
        )
    db.engine.dispose()
    runner = CliRunner()
    for args in (["label", "--store", str(store)], ["label"]):
        result = runner.invoke(app, ["--db", str(db_file), *args, "--json"])
        assert result.exit_code == 0, result.output
    db = open_database(db_file)
    with db.read() as s:
        rows = s.execute(text("SELECT name, params_hash FROM label_definitions")).all()
    assert [tuple(r) for r in rows] == [("panfilov2022", PANFILOV_HASH)]


def _insert_definition(db: Database, params: dict, params_hash: str, created: dt.datetime) -> int:
    with db.write() as s:
        s.execute(
            text(
                "INSERT INTO label_definitions (name, params, params_hash, created_at) "
                "VALUES ('panfilov2022', :p, :h, :c)"
            ),
            {"p": json.dumps(params), "h": params_hash, "c": created},
        )
        return int(s.execute(text("SELECT max(id) FROM label_definitions")).scalar())


def test_migration_0005_merges_definitions_that_differ_only_by_store(any_db: Database) -> None:
    downgrade(any_db.engine, "0004")
    with any_db.write() as s:
        add_subject(s, 9300011)
        knee = add_knee(s, 9300011, "R", {0: 1, 10: 1})
    plain = _insert_definition(any_db, OLD_PANFILOV, PANFILOV_HASH, dt.datetime(2026, 1, 1))
    stored = dict(OLD_PANFILOV, image_store="/data/store.zarr")
    with_store = _insert_definition(any_db, stored, "f" * 64, dt.datetime(2026, 1, 2))
    with any_db.write() as s:
        for definition, label in ((plain, "none"), (with_store, "fast")):
            s.execute(
                text("INSERT INTO knee_labels (definition_id, knee_id, label) VALUES (:d, :k, :l)"),
                {"d": definition, "k": knee, "l": label},
            )
        for definition, params_hash in ((plain, "s1"), (with_store, "s1"), (with_store, "s2")):
            s.execute(
                text("INSERT INTO splits (definition_id, params, params_hash, created_at) VALUES (:d, '{}', :h, :c)"),
                {"d": definition, "h": params_hash, "c": dt.datetime(2026, 1, 3)},
            )
    upgrade(any_db.engine)
    with any_db.read() as s:
        defs = s.execute(text("SELECT id, params_hash FROM label_definitions")).all()
        labels = s.execute(text("SELECT definition_id, label FROM knee_labels")).all()
        splits = s.execute(text("SELECT definition_id, params_hash FROM splits ORDER BY params_hash")).all()
    # the most recently derived one (with the store) is kept, under the store-free hash
    assert [tuple(r) for r in defs] == [(with_store, PANFILOV_HASH)]
    assert [tuple(r) for r in labels] == [(with_store, "fast")]
    assert [tuple(r) for r in splits] == [(with_store, "s1"), (with_store, "s2")]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO knees (subject_id, side) VALUES (9300021, 'X')",
        "INSERT INTO ingest_runs (source_root, started_at, status, toolkit_version) "
        "VALUES ('/r', '2026-01-01', 'done', '1')",
        "INSERT INTO knee_labels (definition_id, knee_id, label) VALUES (1, 1, 'medium')",
    ],
)
def test_check_constraints_refuse_values_outside_the_vocabulary(any_db: Database, statement: str) -> None:
    with any_db.write() as s:
        add_subject(s, 9300021)
        add_knee(s, 9300021, "R", {0: 1})
        s.execute(text("INSERT INTO label_definitions (name, params, params_hash, created_at) "
                       "VALUES ('x', '{}', 'h', '2026-01-01')"))  # fmt: skip
    with pytest.raises(IntegrityError, match="(?i)check"), any_db.write() as s:
        s.execute(text(statement))


def test_migration_0005_records_pairs_of_variables_ingested_before(any_db: Database) -> None:
    downgrade(any_db.engine, "0004")
    with any_db.write() as s:
        add_subject(s, 9300031)
        for variable, cell in (("V00WOMKPR", "3"), ("V00WOMKPL", "1"), ("P01INJR", "1: Yes")):
            s.execute(
                text(
                    "INSERT INTO clinical_values (subject_id, variable, value_text, value_num, source_file) "
                    "VALUES (9300031, :v, :t, 1, 'AllClinical00.txt')"
                ),
                {"v": variable, "t": cell},
            )
    upgrade(any_db.engine)
    with any_db.read() as s:
        pairs = s.execute(text("SELECT name, right_variable, left_variable, visit FROM knee_variable_pairs")).all()
        codes = s.execute(text("SELECT variable, code, label FROM data_dictionary")).all()
    assert [tuple(r) for r in pairs] == [("WOMKP@V00", "V00WOMKPR", "V00WOMKPL", 0)]
    assert [tuple(r) for r in codes] == [("P01INJR", "1", "Yes")]
