"""slot claims: the store slots a running ``oai preprocess`` has reserved (shards of one store)

Revision ID: 0010
Revises: 0009

Concurrent shards of one store (``oai preprocess --shard K/N`` on PostgreSQL) reserve their slots
as rows of ``slot_claims`` inside the database's serialised write transaction, instead of under
a file lock on the store. A new, empty table: no data step.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slot_claims",
        sa.Column("store_id", sa.String(length=36), nullable=False),
        sa.Column("view", sa.String(length=8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_slot_claims_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("store_id", "view", "position", name=op.f("pk_slot_claims")),
    )


def downgrade() -> None:
    op.drop_table("slot_claims")
