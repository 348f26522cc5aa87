"""cohort studies: vocabulary CHECKs; one label definition whatever the image store; knee-side
variable pairs, data dictionary and saved cohorts

Revision ID: 0005
Revises: 0004

Data step: a label definition's identity no longer includes the volume store it was derived for
(``image_store`` is hashed as null). Rows that differed only by their store are merged into the
one most recently derived (whose labels are current); their splits move to it unless it already
has a split of the same parameters (then the duplicate split is dropped with its assignments).
Clinical variables ingested before this revision get their knee-side pairs and data dictionary.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# frozen copies of oaicohort.vocabulary at this revision (migrations never import the app)
_CHECKS: list[tuple[str, str, str]] = [
    ("ingest_runs", "status", "status IN ('running', 'succeeded', 'unchanged', 'failed', 'interrupted')"),
    ("knees", "side", "side IN ('R', 'L')"),
    ("knee_labels", "label", "label IN ('none', 'fast', 'slow') OR label IS NULL"),
    ("split_assignments", "role", "role IN ('train', 'test')"),
    ("volumes", "status", "status IN ('ok', 'failed')"),
]


def _identity_hash(params: dict[str, Any]) -> str:
    """The definition hash of this revision for parameters stored by an earlier one."""
    hashed = {k: v for k, v in params.items() if k != "name"}
    hashed["image_store"] = None
    return hashlib.sha256(json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _merge_store_duplicates(conn: sa.Connection) -> None:
    defs = sa.table(
        "label_definitions",
        sa.column("id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("params", sa.JSON),
        sa.column("params_hash", sa.String),
        sa.column("created_at", sa.DateTime),
    )
    splits = sa.table(
        "splits", sa.column("id", sa.Integer), sa.column("definition_id", sa.Integer), sa.column("params_hash")
    )
    rows = conn.execute(sa.select(defs.c.id, defs.c.name, defs.c.params, defs.c.created_at)).all()
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        params = row.params if isinstance(row.params, dict) else json.loads(row.params)
        groups.setdefault((row.name, _identity_hash(params)), []).append(row)
    for (_name, new_hash), members in groups.items():
        members.sort(key=lambda r: (r.created_at, r.id))
        keep, drop = members[-1], [m.id for m in members[:-1]]
        for old in drop:
            for split_id, split_hash in conn.execute(
                sa.select(splits.c.id, splits.c.params_hash).where(splits.c.definition_id == old)
            ).all():
                clash = conn.execute(
                    sa.select(splits.c.id).where(splits.c.definition_id == keep.id, splits.c.params_hash == split_hash)
                ).first()
                if clash is None:
                    conn.execute(sa.update(splits).where(splits.c.id == split_id).values(definition_id=keep.id))
                else:
                    conn.execute(sa.text("DELETE FROM split_assignments WHERE split_id = :s"), {"s": split_id})
                    conn.execute(sa.delete(splits).where(splits.c.id == split_id))
            conn.execute(sa.text("DELETE FROM knee_labels WHERE definition_id = :d"), {"d": old})
            conn.execute(sa.delete(defs).where(defs.c.id == old))
        conn.execute(sa.update(defs).where(defs.c.id == keep.id).values(params_hash=new_hash))


def _add_checks() -> None:
    """CHECK constraints on PostgreSQL; the same rules as triggers on SQLite.

    SQLite can add a CHECK only by rebuilding the table (batch mode), and dropping the old
    ``knees`` or ``ingest_runs`` would cascade-delete every reading, label, volume and file
    record that refers to them (foreign keys are on, and cannot be turned off inside the
    migration's transaction). Triggers enforce the rule without touching the rows.
    """
    bind = op.get_bind()
    for table, name, expression in _CHECKS:
        constraint = f"ck_{table}_{name}"
        if bind.dialect.name == "sqlite":
            for event in ("INSERT", "UPDATE"):
                op.execute(
                    f"CREATE TRIGGER {constraint}_{event.lower()} BEFORE {event} ON {table} "
                    f"WHEN NOT ({expression.replace(name, 'NEW.' + name)}) "
                    f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {constraint}'); END"
                )
        else:
            op.create_check_constraint(op.f(constraint), table, expression)


def _drop_checks() -> None:
    bind = op.get_bind()
    for table, name, _expression in reversed(_CHECKS):
        constraint = f"ck_{table}_{name}"
        if bind.dialect.name == "sqlite":
            for event in ("insert", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {constraint}_{event}")
        else:
            op.drop_constraint(op.f(constraint), table, type_="check")


def _record_existing_variables(conn: sa.Connection) -> None:
    """Pairs and dictionary of variables ingested before this revision (an unchanged re-ingest
    would not record them). Uses the ingest's own rule, as it is at this revision."""
    import pandas as pd

    from oaicohort.ingest.dictionary import detect_pairs, dictionary_entries

    clinical = pd.DataFrame(
        conn.execute(sa.text("SELECT variable, value_text, source_file FROM clinical_values")).all(),
        columns=["variable", "value_text", "source_file"],
    )
    if clinical.empty:
        return
    entries = dictionary_entries(clinical)
    if len(entries):
        conn.execute(
            sa.text(
                "INSERT INTO data_dictionary (variable, code, label, source_file) "
                "VALUES (:variable, :code, :label, :source_file)"
            ),
            entries.to_dict("records"),
        )
    pairs = detect_pairs(clinical[["variable", "source_file"]].drop_duplicates())
    if len(pairs):
        conn.execute(
            sa.text(
                "INSERT INTO knee_variable_pairs (name, stem, prefix, visit, right_variable, left_variable, "
                "source_file) VALUES (:name, :stem, :prefix, :visit, :right_variable, :left_variable, :source_file)"
            ),
            [{**r, "visit": None if pd.isna(r["visit"]) else int(r["visit"])} for r in pairs.to_dict("records")],
        )


def upgrade() -> None:
    _add_checks()
    _merge_store_duplicates(op.get_bind())

    op.create_table(
        "knee_variable_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("stem", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=8), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=True),
        sa.Column("right_variable", sa.String(length=64), nullable=False),
        sa.Column("left_variable", sa.String(length=64), nullable=False),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knee_variable_pairs")),
        sa.UniqueConstraint("name", name=op.f("uq_knee_variable_pairs_name")),
    )
    op.create_table(
        "data_dictionary",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("variable", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_dictionary")),
        sa.UniqueConstraint("variable", "code", name=op.f("uq_data_dictionary_variable_code")),
    )
    with op.batch_alter_table("data_dictionary") as batch:
        batch.create_index(batch.f("ix_data_dictionary_variable"), ["variable"], unique=False)
    op.create_table(
        "saved_cohorts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("query", sa.JSON(), nullable=False),
        sa.Column("definition_name", sa.String(length=64), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("split_id", sa.Integer(), nullable=True),
        sa.Column("knees", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("ingest_run_id", sa.Integer(), nullable=True),
        sa.Column("toolkit_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saved_cohorts")),
        sa.UniqueConstraint("name", name=op.f("uq_saved_cohorts_name")),
    )
    _record_existing_variables(op.get_bind())


def downgrade() -> None:
    op.drop_table("saved_cohorts")
    with op.batch_alter_table("data_dictionary") as batch:
        batch.drop_index(batch.f("ix_data_dictionary_variable"))
    op.drop_table("data_dictionary")
    op.drop_table("knee_variable_pairs")
    # merged label definitions stay merged: their old hashes named the same labels
    _drop_checks()
