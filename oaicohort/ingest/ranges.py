"""Values outside physical ranges become missing, with a recorded warning naming file, line, column.

A BMI of 0 or 250, an age of 3 or 150 is a typing or export error, not a measurement: used as a
number it would move a subject across a cohort filter or into the BMI exclusion's complement. So
after a table is read such values are set missing (never used as numbers), and each one is
logged and recorded in the ingest run's summary (``warnings``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhysicalRange:
    low: float
    high: float
    low_inclusive: bool = True

    def outside(self, values: pd.Series) -> np.ndarray:
        v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        below = v < self.low if self.low_inclusive else v <= self.low
        return np.isfinite(v) & (below | (v > self.high))

    def describe(self) -> str:
        left = "[" if self.low_inclusive else "("
        return f"{left}{self.low:g}, {self.high:g}]"


# frame column -> range (OAI participants are adults: enrolment was 45-79 years)
RANGES: dict[str, PhysicalRange] = {
    "age": PhysicalRange(18, 120),
    "bmi": PhysicalRange(0, 100, low_inclusive=False),
}
_LOGGED = 20  # per file; the rest are counted


def clear_impossible_values(frame: pd.DataFrame, path: Path, file_columns: dict[str, str]) -> list[str]:
    """Set values of ``frame`` outside ``RANGES`` to missing (in place); return one warning per value.

    ``file_columns`` maps a frame column (``age``) to its name in the file (``V00AGE``);
    ``frame["line"]`` holds each row's line number in the file."""
    warnings: list[str] = []
    for column, limits in RANGES.items():
        if column not in frame.columns:
            continue
        bad = limits.outside(frame[column])
        if not bad.any():
            continue
        name = file_columns.get(column, column.upper())
        lines = frame["line"].to_numpy() if "line" in frame.columns else np.zeros(len(frame), dtype=int)
        for value, line in zip(frame.loc[bad, column].tolist(), lines[bad].tolist(), strict=True):
            warnings.append(
                f"{path}, line {int(line)}, column {name!r}: {column} {value:g} is outside the physical range "
                f"{limits.describe()}; stored as missing"
            )
        frame.loc[bad, column] = np.nan
    for message in warnings[:_LOGGED]:
        log.warning("%s", message)
    if len(warnings) > _LOGGED:
        log.warning("%s: %d more values outside physical ranges stored as missing", path, len(warnings) - _LOGGED)
    return warnings
