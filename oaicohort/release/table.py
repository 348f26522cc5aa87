"""A table read from a release file: selected columns as strings, with file line numbers.

Every reader (delimited text, SAS, NDA structures) produces one, so error messages can always
name the file, the line and the column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.release.discovery import SourceFile

__all__ = ["CellOrigins", "Table", "shown"]


def shown(value: object, limit: int = 60) -> str:
    """``repr`` of a cell for an error message, shortened: a damaged file can hold a 10 MB cell."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-10:]} ({len(str(value)):,} characters)"


@dataclass(frozen=True)
class CellOrigins:
    """Where each cell of one column came from, when a table was assembled from several files
    (an OAI table drawn from several NDA structures): ``sources[which[row]]``, at ``lines[row]``,
    in its column ``columns[which[row]]``; ``which`` is -1 where no file had the cell."""

    sources: list[SourceFile]
    columns: list[str]
    which: np.ndarray
    lines: np.ndarray


@dataclass
class Table:
    """Selected columns of a delimited file: every cell a stripped string, plus file lines.

    ``frame`` has the upper-cased column names; ``lines`` gives each row's 1-based line number
    in the file (the header is line 1), for error messages and file-order provenance.
    """

    source: SourceFile
    frame: pd.DataFrame
    lines: np.ndarray
    header: list[str]
    # frame column -> its name in the file, where they differ (an NDA column read as an OAI variable)
    column_names: dict[str, str] = field(default_factory=dict)
    # frame column -> the origin of its cells, where they are not this table's own file and lines
    origins: dict[str, CellOrigins] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    def error(self, message: str, *, row: int | None = None, column: str | None = None) -> InputFileError:
        origin = self.origins.get(column) if column is not None else None
        if origin is not None and row is not None and origin.which[row] >= 0:
            k = int(origin.which[row])
            return InputFileError(
                origin.sources[k].where, message, line=int(origin.lines[row]), column=origin.columns[k]
            )
        line = int(self.lines[row]) if row is not None else None
        if column is not None and column in self.column_names:
            column = self.column_names[column]
        return InputFileError(self.source.where, message, line=line, column=column)
