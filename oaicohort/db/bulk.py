"""Bulk inserts and updates: the one fast path for writing many rows (ingest, labels).

Rows travel column-wise, ``{column: [values]}``: building a dict per row would cost more than
the database inserts themselves at OAI size. Values are converted column-wise with the column
types' bind processors and sent as ONE driver ``executemany``, skipping SQLAlchemy's per-row
parameter handling (the ORM bulk paths are worse still: they split batches wherever the pattern
of NULLs changes, x100 slower).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from sqlalchemy import bindparam, insert, update
from sqlalchemy.orm import Session

Columns = dict[str, list[Any]]
CHUNK = 500  # ids per IN (...) clause; well under every back-end's bound-parameter limit


def python_values(series: pd.Series) -> list[Any]:
    """Column values as Python objects with None for every kind of missing (DB drivers need it)."""
    values = series.astype(object)
    return values.where(series.notna(), None).tolist()


def frame_columns(frame: pd.DataFrame, names: Sequence[str] | None = None, **constants: Any) -> Columns:
    """``names`` (default: all) columns of ``frame`` as Python lists, plus constant columns."""
    out = {name: python_values(frame[name]) for name in (frame.columns if names is None else names)}
    out.update({name: [value] * len(frame) for name, value in constants.items()})
    return out


def n_rows(cols: Columns) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def take(cols: Columns, rows: list[int]) -> Columns:
    return {name: [values[i] for i in rows] for name, values in cols.items()}


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def executemany(session: Session, stmt: Any, binds: dict[str, tuple[str, Any]], cols: Columns) -> None:
    """Run ``stmt`` once per row as ONE driver executemany.

    ``binds`` maps each bind parameter of ``stmt`` to ``(column key, column type)``.
    """
    if not n_rows(cols):
        return
    conn = session.connection()
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect)
    values: dict[str, list[Any]] = {}
    for name, (key, type_) in binds.items():
        process = type_.dialect_impl(dialect).bind_processor(dialect)
        values[name] = [process(v) for v in cols[key]] if process else cols[key]
    if compiled.positional:
        params: list[Any] = list(zip(*(values[n] for n in compiled.positiontup or ())))
    else:
        names = list(values)
        params = [dict(zip(names, row)) for row in zip(*values.values())]
    conn.exec_driver_sql(str(compiled), params)


def insert_rows(session: Session, model: type, cols: Columns) -> None:
    """Bulk insert of ``cols`` into ``model``'s table."""
    t = model.__table__  # type: ignore[attr-defined]
    stmt = insert(t).values({k: bindparam(f"v_{k}", type_=t.c[k].type) for k in cols})
    executemany(session, stmt, {f"v_{k}": (k, t.c[k].type) for k in cols}, cols)


def insert_frame(session: Session, model: type, frame: pd.DataFrame) -> None:
    """Bulk insert of every column of ``frame`` (missing values of any kind become NULL)."""
    insert_rows(session, model, frame_columns(frame))


def update_rows(session: Session, model: type, cols: Columns, pk: str) -> None:
    """Bulk update by primary key ``pk`` (a column of ``cols``)."""
    t = model.__table__  # type: ignore[attr-defined]
    keys = [k for k in cols if k != pk]
    stmt = (
        update(t)
        .where(t.c[pk] == bindparam("pk_", type_=t.c[pk].type))
        .values({k: bindparam(f"v_{k}", type_=t.c[k].type) for k in keys})
    )
    binds = {f"v_{k}": (k, t.c[k].type) for k in keys}
    binds["pk_"] = (pk, t.c[pk].type)
    executemany(session, stmt, binds, cols)
