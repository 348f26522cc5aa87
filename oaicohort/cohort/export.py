"""Writing cohort frames for other programs: CSV/TSV safe to open in a spreadsheet, JSON that is
always valid JSON, and clinical-variable columns that keep coded and free-text values alike.

- **Formula neutralisation.** A text cell starting with ``=``, ``+``, ``-`` or ``@`` (or a tab
  or carriage return) is run as a formula by Excel, LibreOffice and Google Sheets ("CSV
  injection"); such cells are written with a leading apostrophe (``'=cmd``), which spreadsheets
  show but do not run. Numbers (including negative ones) are never changed. ``oai cohort
  --raw-cells`` writes text exactly as stored.
- **JSON.** ``NaN`` and ``Infinity`` are not JSON; they are written as ``null``.
- **Mixed columns.** A variable column holding numbers in some rows and free text in others
  (``"3: Moderate"`` and ``"left knee, see notes"``) keeps both, as an object column; OAI
  missing-value codes (``.A: Not Expected``) stay missing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_MISSING_CODE = re.compile(r"^\.[A-Za-z]?(\s*:.*)?$")


def neutralise_cell(value: Any) -> Any:
    """``'`` + the text for a text cell a spreadsheet would run as a formula; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def neutralised(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas (numbers untouched)."""
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            out[column] = series.map(neutralise_cell).astype(series.dtype if series.dtype != object else object)
    out.columns = [neutralise_cell(str(c)) for c in out.columns]
    return out


def to_delimited(frame: pd.DataFrame, *, sep: str = ",", neutralise: bool = True) -> str:
    """CSV (``sep=","``) or TSV (``sep="\\t"``) text of ``frame``."""
    return (neutralised(frame) if neutralise else frame).to_csv(index=False, sep=sep)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/Infinity (and pandas NA/NaT) as None, numpy scalars as Python ones."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, pd.Timestamp | dt.datetime | dt.date):
        return obj.isoformat()
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (``null`` instead; strict JSON)."""
    return json.dumps(json_safe(obj), allow_nan=False, default=str, **kwargs)


def records_json(frame: pd.DataFrame) -> str:
    """The rows of ``frame`` as a JSON array of objects (missing values ``null``)."""
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return dumps(records, indent=2)


def variable_column(num: pd.Series, text: pd.Series) -> pd.Series:
    """One clinical variable's column from its numeric and text parts (see the module docstring)."""
    is_missing_code = text.fillna("").astype(str).str.strip().str.match(_MISSING_CODE)
    free = text.notna() & num.isna() & ~is_missing_code
    if num.notna().any() and free.any():
        combined = pd.Series([None] * len(num), index=num.index, dtype=object)
        combined[num.notna()] = num[num.notna()].astype(float)
        combined[free] = text[free]
        return combined
    if num.notna().any() or text.isna().all():
        return num.astype(float)
    return text
