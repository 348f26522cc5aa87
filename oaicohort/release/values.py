"""OAI cell values: codes (``1: Male``), numbers, missing codes (``.A: Not Expected``), dates,
participant ids and knee sides, parsed column-wise with the error naming the offending cell.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from oaicohort.release.table import Table, shown

log = logging.getLogger(__name__)


INT32_MAX = 2**31 - 1

# A cell is "<head>" or "<head>: <label>"; the head is a number (code or measurement) or an OAI
# missing code (a dot and at most one letter).
_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
_MISSING = r"^\.[A-Za-z]?$"
_NUMBER_RE = re.compile(_NUMBER)
_MISSING_RE = re.compile(_MISSING)


@dataclass(frozen=True)
class ParsedValue:
    """One OAI cell: its number (code or measurement), or its missing code, and the raw text."""

    number: float | None
    missing_code: str | None  # ".", ".A", ".T", ".P", ".M", ".D"...; "" for an empty cell
    text: str | None  # the stripped cell, None when empty


def parse_value(cell: str | None) -> ParsedValue:
    """Parse one cell: ``"1: Male"`` -> 1, ``".A: Not Expected"`` -> missing ``.A``, free text -> text."""
    text = (cell or "").strip()
    if not text:
        return ParsedValue(None, "", None)
    head = text.split(":", 1)[0].strip()
    if _NUMBER_RE.match(head):
        return ParsedValue(float(head), None, text)
    if _MISSING_RE.match(head):
        return ParsedValue(None, head.upper(), text)
    return ParsedValue(None, None, text)


@dataclass
class CodedColumn:
    """A column parsed vectorised: numbers (NaN where none), missing codes, unparseable cells."""

    number: np.ndarray  # float64
    missing_code: np.ndarray  # object: None where a number was read, "" for an empty cell
    invalid: np.ndarray  # bool: neither a number nor a missing code (free text)


def parse_coded(values: pd.Series) -> CodedColumn:
    """Vectorised ``parse_value`` over a column of strings (Arrow compute: no Python per cell)."""
    cells = pc.utf8_trim_whitespace(pa.array(values, type=pa.large_string(), from_pandas=True).fill_null(""))
    head = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(cells, ":", max_splits=1), 0))
    is_number = pc.match_substring_regex(head, _NUMBER).to_numpy(zero_copy_only=False)
    is_missing = pc.match_substring_regex(head, _MISSING).to_numpy(zero_copy_only=False)
    blank = pc.equal(cells, "").to_numpy(zero_copy_only=False)
    number = np.full(len(values), np.nan)
    if is_number.any():
        number[is_number] = pc.cast(pc.filter(head, is_number), pa.float64()).to_numpy(zero_copy_only=False)
    missing = np.full(len(values), None, dtype=object)
    if is_missing.any():
        missing[is_missing] = pc.utf8_upper(pc.filter(head, is_missing)).to_numpy(zero_copy_only=False)
    missing[blank] = ""
    return CodedColumn(number, missing, ~(is_number | is_missing | blank))


def numeric(table: Table, column: str, *, integer: bool = False) -> CodedColumn:
    """Parse a numeric/coded column; any cell that is neither a number nor a missing code is an error."""
    if column not in table.frame.columns:
        n = len(table)
        return CodedColumn(np.full(n, np.nan), np.full(n, "", dtype=object), np.zeros(n, dtype=bool))
    parsed = parse_coded(table.frame[column])
    bad = np.flatnonzero(parsed.invalid)
    if bad.size:
        row = int(bad[0])
        raise table.error(
            f"expected a number, a coded value ('1: label') or a missing code ('.: ...'), "
            f"got {shown(table.frame[column].iloc[row])}",
            row=row,
            column=column,
        )
    if np.isinf(parsed.number).any():
        row = int(np.flatnonzero(np.isinf(parsed.number))[0])
        raise table.error(f"number out of range, got {shown(table.frame[column].iloc[row])}", row=row, column=column)
    if integer:
        finite = ~np.isnan(parsed.number)
        fractional = finite & (parsed.number != np.round(parsed.number))
        if fractional.any():
            row = int(np.flatnonzero(fractional)[0])
            raise table.error(
                f"expected a whole number, got {shown(table.frame[column].iloc[row])}", row=row, column=column
            )
        # the database's INTEGER: 32 bits on PostgreSQL (SQLite would take more, silently)
        too_big = finite & (np.abs(np.nan_to_num(parsed.number)) > INT32_MAX)
        if too_big.any():
            row = int(np.flatnonzero(too_big)[0])
            raise table.error(
                f"whole number out of range (|n| > {INT32_MAX}), got {shown(table.frame[column].iloc[row])}",
                row=row,
                column=column,
            )
    return parsed


def as_int(parsed: CodedColumn) -> pd.Series:
    return pd.Series(parsed.number).round().astype("Int64")


def subject_ids(table: Table, column: str = "ID") -> np.ndarray:
    """OAI participant ids (7-digit integers) as int64; a non-numeric id names its line."""
    ids = table.frame[column]
    ok = ids.str.fullmatch(r"\d+").fillna(False).to_numpy(dtype=bool)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise table.error(f"participant id must be a whole number, got {shown(ids.iloc[row])}", row=row, column=column)
    # 9 digits fit the database's 32-bit INTEGER on every back-end
    long = (ids.str.len() > 9).to_numpy(dtype=bool)
    if long.any():
        row = int(np.flatnonzero(long)[0])
        raise table.error(
            f"participant id has {len(ids.iloc[row])} digits (OAI ids have 7, at most 9 are "
            f"accepted), got {shown(ids.iloc[row])}",
            row=row,
            column=column,
        )
    return ids.astype("int64").to_numpy()


def dates(table: Table, column: str, fmt: str = "%m/%d/%Y") -> pd.Series:
    """Dates (``mm/dd/yyyy`` by default) as ``datetime.date`` objects; missing codes -> None."""
    n = len(table)
    if column not in table.frame.columns:
        return pd.Series([None] * n, dtype=object)
    cells = table.frame[column]
    missing = parse_coded(cells).missing_code
    is_missing = np.array([m is not None for m in missing], dtype=bool)
    parsed = pd.to_datetime(cells.where(~is_missing, None), format=fmt, errors="coerce")
    bad = parsed.isna().to_numpy() & ~is_missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        human = fmt.replace("%m", "mm").replace("%d", "dd").replace("%Y", "yyyy")
        raise table.error(
            f"expected a date {human} or a missing code, got {shown(cells.iloc[row])}", row=row, column=column
        )
    out = np.full(n, None, dtype=object)
    ok = ~is_missing
    out[ok] = parsed[ok].dt.date.to_numpy(dtype=object)
    return pd.Series(out, dtype=object)


def knee_sides(table: Table, column: str = "SIDE") -> np.ndarray:
    """``SIDE`` (1/``1: Right`` -> ``"R"``, 2/``2: Left`` -> ``"L"``) as an array of strings."""
    cells = table.frame[column]
    parsed = parse_coded(cells)
    side = np.full(len(cells), None, dtype=object)
    side[parsed.number == 1] = "R"
    side[parsed.number == 2] = "L"
    words = cells.str.upper().str.strip()
    side[(words.isin(["RIGHT", "R"])).to_numpy(dtype=bool)] = "R"
    side[(words.isin(["LEFT", "L"])).to_numpy(dtype=bool)] = "L"
    unknown = np.array([s is None for s in side], dtype=bool)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise table.error(
            f"knee side must be 1 (right) or 2 (left), got {shown(cells.iloc[row])}", row=row, column=column
        )
    return side


def text_or_none(table: Table, column: str) -> pd.Series:
    """A text column with None for empty cells (all None when the file lacks the column)."""
    out = np.full(len(table), None, dtype=object)
    if column in table.frame.columns:
        cells = table.frame[column]
        filled = (cells != "").to_numpy(dtype=bool)
        out[filled] = cells[filled].to_numpy(dtype=object)
    return pd.Series(out, dtype=object)


def none_if_missing(values: pd.Series) -> pd.Series:
    """Strings with missing codes and empty cells replaced by None; ``"C: label"`` -> ``"C"``."""
    parsed = parse_coded(values)
    text = values.str.split(":", n=1).str[0].str.strip()
    keep = np.array([m is None for m in parsed.missing_code], dtype=bool)
    out = np.full(len(values), None, dtype=object)
    out[keep] = text[keep].to_numpy(dtype=object)
    return pd.Series(out, dtype=object)
