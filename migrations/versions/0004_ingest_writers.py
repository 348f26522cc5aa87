"""ingest run writers (for marking runs of killed processes interrupted); 64-bit file sizes

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ingest_runs") as batch:
        batch.add_column(sa.Column("writer_host", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("writer_pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("writer_start", sa.String(length=64), nullable=True))
    with op.batch_alter_table("ingest_files") as batch:
        batch.alter_column("size_bytes", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("ingest_files") as batch:
        batch.alter_column("size_bytes", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("ingest_runs") as batch:
        batch.drop_column("writer_start")
        batch.drop_column("writer_pid")
        batch.drop_column("writer_host")
