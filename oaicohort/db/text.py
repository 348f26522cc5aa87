"""Text checked before it reaches the database, so that SQLite and PostgreSQL refuse the same
values with the same message.

PostgreSQL refuses a NUL character in any text, and a string longer than its ``VARCHAR(n)``
column ("value too long for type character varying(64)"); SQLite stores both. A name or value a
user gives (a label definition's name, a saved cohort's name, a query's filter values) is
checked here first, naming what it is, whichever back-end is used.
"""

from __future__ import annotations

from typing import Any


def column_length(column: Any) -> int | None:
    """The ``n`` of a ``VARCHAR(n)`` column (an ORM attribute such as ``SavedCohort.name``)."""
    return getattr(getattr(column, "type", None), "length", None)


def text_problem(value: str, column: Any = None) -> str | None:
    """Why ``value`` cannot be stored (in ``column``, when given), or None when it can."""
    if "\x00" in value:
        return "contains a NUL character (\\x00), which a database cannot store"
    limit = column_length(column) if column is not None else None
    if limit is not None and len(value) > limit:
        return f"{len(value)} characters long; at most {limit} are stored"
    return None


__all__ = ["column_length", "text_problem"]
