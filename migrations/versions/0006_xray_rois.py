"""knee radiograph ROIs: where each stored X-ray crop came from (box, pixel size, localiser)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xray_rois",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("volume_id", sa.Integer(), nullable=False),
        sa.Column("localiser", sa.String(length=32), nullable=False),
        sa.Column("centre_row", sa.Float(), nullable=False),
        sa.Column("centre_col", sa.Float(), nullable=False),
        sa.Column("box", sa.JSON(), nullable=False),
        sa.Column("source_spacing_mm", sa.Float(), nullable=False),
        sa.Column("source_shape", sa.JSON(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["volume_id"], ["volumes.id"], name=op.f("fk_xray_rois_volume_id_volumes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_xray_rois")),
        sa.UniqueConstraint("volume_id", name=op.f("uq_xray_rois_volume_id")),
    )


def downgrade() -> None:
    op.drop_table("xray_rois")
