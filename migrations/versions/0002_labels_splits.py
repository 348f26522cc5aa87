"""label definitions, knee labels, splits

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "label_definitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("ingest_run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["ingest_run_id"], ["ingest_runs.id"], name=op.f("fk_label_definitions_ingest_run_id_ingest_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_definitions")),
        sa.UniqueConstraint("name", "params_hash", name=op.f("uq_label_definitions_name_params_hash")),
    )
    op.create_table(
        "knee_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("definition_id", sa.Integer(), nullable=False),
        sa.Column("knee_id", sa.Integer(), nullable=False),
        sa.Column("kl_baseline", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(length=8), nullable=True),
        sa.Column("exclusion", sa.String(length=32), nullable=True),
        sa.Column("progression_month", sa.Integer(), nullable=True),
        sa.Column("kl_increase", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["definition_id"],
            ["label_definitions.id"],
            name=op.f("fk_knee_labels_definition_id_label_definitions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["knee_id"], ["knees.id"], name=op.f("fk_knee_labels_knee_id_knees"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knee_labels")),
        sa.UniqueConstraint("definition_id", "knee_id", name=op.f("uq_knee_labels_definition_id_knee_id")),
    )
    with op.batch_alter_table("knee_labels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_knee_labels_definition_id"), ["definition_id"], unique=False)

    op.create_table(
        "splits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("definition_id", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["definition_id"],
            ["label_definitions.id"],
            name=op.f("fk_splits_definition_id_label_definitions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_splits")),
        sa.UniqueConstraint("definition_id", "params_hash", name=op.f("uq_splits_definition_id_params_hash")),
    )
    op.create_table(
        "split_assignments",
        sa.Column("split_id", sa.Integer(), nullable=False),
        sa.Column("knee_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("fold", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["knee_id"], ["knees.id"], name=op.f("fk_split_assignments_knee_id_knees"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["split_id"], ["splits.id"], name=op.f("fk_split_assignments_split_id_splits"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("split_id", "knee_id", name=op.f("pk_split_assignments")),
    )


def downgrade() -> None:
    op.drop_table("split_assignments")
    op.drop_table("splits")
    with op.batch_alter_table("knee_labels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_knee_labels_definition_id"))

    op.drop_table("knee_labels")
    op.drop_table("label_definitions")
