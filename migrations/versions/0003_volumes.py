"""preprocessed volume index

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("knee_id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=True),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("view", sa.String(length=8), nullable=False),
        sa.Column("store_path", sa.Text(), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("array_path", sa.Text(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("shape", sa.JSON(), nullable=True),
        sa.Column("spacing_mm", sa.JSON(), nullable=True),
        sa.Column("checksum", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("notes", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["knee_id"], ["knees.id"], name=op.f("fk_volumes_knee_id_knees"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["series_id"], ["image_series.id"], name=op.f("fk_volumes_series_id_image_series"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volumes")),
        sa.UniqueConstraint(
            "store_path",
            "params_hash",
            "knee_id",
            "visit",
            "view",
            name=op.f("uq_volumes_store_path_params_hash_knee_id_visit_view"),
        ),
    )
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_volumes_knee_id"), ["knee_id"], unique=False)
        batch_op.create_index("ix_volumes_store_view", ["store_path", "view"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_index("ix_volumes_store_view")
        batch_op.drop_index(batch_op.f("ix_volumes_knee_id"))

    op.drop_table("volumes")
