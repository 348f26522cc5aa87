"""store identity: a ``stores`` table (UUID, path) and ``volumes.store_id`` instead of ``store_path``

Revision ID: 0009
Revises: 0008

Data step: each distinct ``volumes.store_path`` becomes a ``stores`` row. Its id is the UUID the
store at that path already carries in its ``zarr.json`` attributes (``store_id``) when it has one,
else a new UUID, which the toolkit writes into the store the first time it opens it for writing.
Every volume row is linked to its store's row.

SQLite rebuilds ``volumes`` to change its unique key; dropping the old table would cascade-delete
the ``xray_rois`` rows that refer to it (foreign keys are on and cannot be turned off inside the
migration's transaction), so they are read first and written back with their ids, and the CHECK
triggers of revision 0005 are made again on the new table.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_STATUS_CHECK = "status IN ('ok', 'failed')"  # frozen copy of revision 0005's rule
_KEY = ["params_hash", "knee_id", "visit", "view"]


def _existing_id(path: str) -> str | None:
    """The ``store_id`` attribute of the store at ``path``, when it is there and has one."""
    try:
        attributes = json.loads((Path(path) / "zarr.json").read_text(encoding="utf-8")).get("attributes") or {}
        return str(uuid.UUID(str(attributes["store_id"])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _save_rois(bind: sa.Connection) -> list[dict[str, Any]]:
    if bind.dialect.name != "sqlite":
        return []
    return [dict(r._mapping) for r in bind.execute(sa.text("SELECT * FROM xray_rois"))]


def _restore(bind: sa.Connection, rois: list[dict[str, Any]]) -> None:
    """After a SQLite rebuild of ``volumes``: its CHECK triggers, and the ROI rows the drop took."""
    if bind.dialect.name != "sqlite":
        return
    for event in ("INSERT", "UPDATE"):
        name = f"ck_volumes_status_{event.lower()}"
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {event} ON volumes WHEN NOT ({_STATUS_CHECK.replace('status', 'NEW.status')}) "
            "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: ck_volumes_status'); END"
        )
    bind.execute(sa.text("DELETE FROM xray_rois"))  # the saved rows are the truth, whatever the drop left
    if rois:
        columns = list(rois[0])
        bind.execute(
            sa.text(f"INSERT INTO xray_rois ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"),
            rois,
        )


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table(
        "stores",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("moved_from", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stores")),
        sa.UniqueConstraint("path", name=op.f("uq_stores_path")),
    )
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    used: set[str] = set()
    for (path,) in bind.execute(sa.text("SELECT DISTINCT store_path FROM volumes ORDER BY store_path")).all():
        store_id = _existing_id(path)
        if store_id is None or store_id in used:  # a copy of a store at two paths: two identities
            store_id = str(uuid.uuid4())
        used.add(store_id)
        bind.execute(
            sa.text("INSERT INTO stores (id, path, created_at) VALUES (:id, :path, :now)"),
            {"id": store_id, "path": path, "now": now},
        )
    rois = _save_rois(bind)
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(sa.Column("store_id", sa.String(length=36), nullable=True))
    bind.execute(
        sa.text("UPDATE volumes SET store_id = (SELECT id FROM stores WHERE stores.path = volumes.store_path)")
    )
    with op.batch_alter_table("volumes") as batch:
        batch.drop_index("ix_volumes_store_view")
        batch.drop_constraint(op.f("uq_volumes_store_path_params_hash_knee_id_visit_view"), type_="unique")
        batch.drop_column("store_path")
        batch.alter_column("store_id", existing_type=sa.String(length=36), nullable=False)
        batch.create_foreign_key(op.f("fk_volumes_store_id_stores"), "stores", ["store_id"], ["id"], ondelete="CASCADE")
        batch.create_unique_constraint(op.f("uq_volumes_store_id_params_hash_knee_id_visit_view"), ["store_id", *_KEY])
        batch.create_index("ix_volumes_store_view", ["store_id", "view"], unique=False)
    _restore(bind, rois)


def downgrade() -> None:
    bind = op.get_bind()
    rois = _save_rois(bind)
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(sa.Column("store_path", sa.Text(), nullable=True))
    bind.execute(
        sa.text("UPDATE volumes SET store_path = (SELECT path FROM stores WHERE stores.id = volumes.store_id)")
    )
    with op.batch_alter_table("volumes") as batch:
        batch.drop_index("ix_volumes_store_view")
        batch.drop_constraint(op.f("uq_volumes_store_id_params_hash_knee_id_visit_view"), type_="unique")
        batch.drop_constraint(op.f("fk_volumes_store_id_stores"), type_="foreignkey")
        batch.drop_column("store_id")
        batch.alter_column("store_path", existing_type=sa.Text(), nullable=False)
        batch.create_unique_constraint(
            op.f("uq_volumes_store_path_params_hash_knee_id_visit_view"), ["store_path", *_KEY]
        )
        batch.create_index("ix_volumes_store_view", ["store_path", "view"], unique=False)
    _restore(bind, rois)
    op.drop_table("stores")
