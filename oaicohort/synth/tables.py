"""Cell formatting and table writing in the OAI ASCII conventions (OAI_FORMATS.md).

Columns are built as numpy arrays of strings, vectorised; a table is written by zipping its
columns into pipe-joined lines, which keeps the wide AllClinical files quick to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

# The missing-value codes of the real files, with and without their labels
MISSING_FORM = ".: Missing Form/Incomplete Workbook"
NOT_EXPECTED = ".A: Not Expected"
TECHNICAL = ".T: Technical Problems"
PROSTHESIS = ".P"
DONT_KNOW = ".D"
MISSING_M = ".M"
# What an unanswered item of an attended visit looks like, and how often each form occurs
ITEM_MISSING_CODES = (MISSING_FORM, ".", DONT_KNOW, MISSING_M, "", " ")
ITEM_MISSING_WEIGHTS = (0.70, 0.08, 0.07, 0.05, 0.07, 0.03)

Style = Literal["labelled", "bare", "mixed"]
# in a "mixed" column, the share of cells written bare
MIXED_BARE_SHARE = 0.3
# above this many distinct values, numbers are formatted one by one rather than via a table
LOOKUP_LIMIT = 200_000


def coded(codes: np.ndarray, labels: Mapping[int, str], style: Style, rng: np.random.Generator) -> np.ndarray:
    """``code: label`` strings (or bare codes) for integer ``codes``."""
    keys = sorted(labels)
    labelled = np.asarray([f"{k}: {labels[k]}" for k in keys], dtype=object)
    bare = np.asarray([str(k) for k in keys], dtype=object)
    index = np.searchsorted(np.asarray(keys), codes)
    if style == "labelled":
        return labelled[index]
    if style == "bare":
        return bare[index]
    return np.where(rng.random(codes.shape) < MIXED_BARE_SHARE, bare[index], labelled[index])


def numbers(values: np.ndarray, decimals: int) -> np.ndarray:
    """Numbers as the OAI writes them: integers bare, others with ``decimals`` places at most."""
    scale = 10**decimals
    steps = np.round(np.asarray(values, dtype=float) * scale).astype(np.int64)
    low, high = (int(steps.min()), int(steps.max())) if steps.size else (0, 0)
    if high - low > LOOKUP_LIMIT:
        if decimals == 0:
            return steps.astype(str).astype(object)
        return (steps / scale).astype(str).astype(object)
    # bounded scores repeat a few thousand distinct values: format each once
    grid = np.arange(low, high + 1)
    table = (grid.astype(str) if decimals == 0 else (grid / scale).astype(str)).astype(object)
    return table[steps - low]


def dates(days: np.ndarray) -> np.ndarray:
    """``mm/dd/yyyy`` strings of datetime64[D] values."""
    iso = np.datetime_as_string(days.astype("datetime64[D]"), unit="D")
    return np.asarray([f"{d[5:7]}/{d[8:10]}/{d[:4]}" for d in iso], dtype=object)


def yyyymmdd(days: np.ndarray) -> np.ndarray:
    iso = np.datetime_as_string(days.astype("datetime64[D]"), unit="D")
    return np.asarray([d.replace("-", "") for d in iso], dtype=object)


def with_missing(
    values: np.ndarray,
    missing: np.ndarray,
    rng: np.random.Generator,
    codes: Sequence[str] = ITEM_MISSING_CODES,
    weights: Sequence[float] = ITEM_MISSING_WEIGHTS,
) -> np.ndarray:
    """``values`` with the cells of ``missing`` replaced by missing-value codes."""
    where = np.flatnonzero(missing)
    if where.size == 0:
        return values
    out = np.asarray(values, dtype=object).copy()
    p = np.asarray(weights, dtype=float)
    out[where] = np.asarray(codes, dtype=object)[rng.choice(len(codes), size=where.size, p=p / p.sum())]
    return out


def write_table(
    path: Path, columns: Mapping[str, np.ndarray | Sequence[str]], *, delimiter: str = "|", line_end: str = "\n"
) -> int:
    """Write a header row and one line per row; returns the number of data rows."""
    names = list(columns)
    cells = [list(columns[name]) for name in names]
    n_rows = len(cells[0]) if cells else 0
    for name, column in zip(names, cells):
        if len(column) != n_rows:
            raise ValueError(f"{path.name}: column {name} has {len(column)} rows, expected {n_rows}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(delimiter.join(names) + line_end)
        fh.writelines(delimiter.join(row) + line_end for row in zip(*cells))
    return n_rows
