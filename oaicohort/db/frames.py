"""DataFrames from SQL: the one generic helper every reader of the cohort database uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session


def read_frame(session: Session, stmt: Any, columns: Sequence[str]) -> pd.DataFrame:
    """Run a Core SELECT in the session's transaction and return its rows as a DataFrame.

    Column-wise construction: ``DataFrame.from_records`` over Row objects is several times slower.
    """
    rows = session.connection().execute(stmt).fetchall()
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    return pd.DataFrame(dict(zip(columns, map(list, zip(*rows)))))


__all__ = ["read_frame"]
