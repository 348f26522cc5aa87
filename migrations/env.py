"""Alembic environment: runs on the connection handed over by ``oaicohort.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from oaicohort.db.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # oaicohort.db.migrate hands over a connection inside its own transaction (which holds
        # the writer lock) and commits it; any other caller's autobegun work is committed here
        external = connection.in_transaction()
        _run(connection)
        if connection.in_transaction() and not external:
            connection.commit()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
