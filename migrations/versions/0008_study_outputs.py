"""time-to-event labels (knee_labels.time_months, event_type) and matched saved cohorts
(saved_cohorts.matching)

Revision ID: 0008
Revises: 0007

The new columns are nullable and filled only by what writes them (a time-to-event definition's
labels, a matched cohort's save): existing rows stay as they are. ``event_type`` is checked like
``label`` (migration 0005): a CHECK constraint on PostgreSQL, triggers on SQLite, where adding a
CHECK would rebuild ``knee_labels``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# as written by oaicohort.db.schema.one_of(..., nullable=True) with the vocabulary's EVENT_TYPES
# at this revision (a migration never changes with later code)
_EVENT_CHECK = "event_type IN ('progression', 'knee_replacement') OR event_type IS NULL"
_CONSTRAINT = "ck_knee_labels_event_type"


def upgrade() -> None:
    op.add_column("knee_labels", sa.Column("time_months", sa.Float(), nullable=True))
    op.add_column("knee_labels", sa.Column("event_type", sa.String(length=16), nullable=True))
    op.add_column("saved_cohorts", sa.Column("matching", sa.JSON(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER {_CONSTRAINT}_{event.lower()} BEFORE {event} ON knee_labels "
                f"WHEN NOT ({_EVENT_CHECK.replace('event_type', 'NEW.event_type')}) "
                f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {_CONSTRAINT}'); END"
            )
    else:
        op.create_check_constraint(op.f(_CONSTRAINT), "knee_labels", _EVENT_CHECK)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {_CONSTRAINT}_{event}")
    else:
        op.drop_constraint(op.f(_CONSTRAINT), "knee_labels", type_="check")
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch rebuild of knee_labels would
    # drop the triggers migration 0005 put on it
    op.drop_column("saved_cohorts", "matching")
    op.drop_column("knee_labels", "event_type")
    op.drop_column("knee_labels", "time_months")
