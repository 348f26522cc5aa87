"""The cohort database: engine and transactions (``engine``), schema, migrations, writer records.

``from oaicohort.db import open_database, Database`` is the entry point; the rest lives in the
submodules named for what they own.
"""

from oaicohort.db.engine import (
    DEFAULT_DB,
    ENV_VAR,
    Database,
    make_engine,
    open_database,
    resolve_url,
    table_names,
)
from oaicohort.db.locks import POSTGRES_WRITE_LOCK_KEY, lock_timeout_s, take_postgres_write_lock

__all__ = [
    "DEFAULT_DB",
    "ENV_VAR",
    "POSTGRES_WRITE_LOCK_KEY",
    "Database",
    "lock_timeout_s",
    "make_engine",
    "open_database",
    "resolve_url",
    "table_names",
    "take_postgres_write_lock",
]
