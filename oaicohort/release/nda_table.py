"""One table of the ASCII release assembled from the structures of an NDA package.

A column's cells come from the places the NDA variable map gives it, in order (the first place
with a value for the row wins), numbers converted by the place's unit transform, NDA text
categories turned into OAI ``code: label`` cells (``nda_categories.csv``; an unknown category is
stored as missing and counted in a warning naming file, line and column). Each cell keeps where it
came from, so that a reader's error names the structure file, its line and the NDA column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.release.discovery import SourceFile
from oaicohort.release.nda_map import Category, NdaColumn, apply_transform, default_map, how_to_provide, normalised
from oaicohort.release.table import CellOrigins, Table, shown
from oaicohort.release.values import parse_coded

SUBJECT = "SRC_SUBJECT_ID"


@dataclass
class PackageNotes:
    """What reading a package's cells has to say (shared by its tables): warnings recorded with
    the ingest, and data-dictionary entries of the NDA categories found."""

    warnings: list[str] = field(default_factory=list)
    dictionary: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PlacedColumn:
    """One place of an OAI column in a table: its structure's parsed rows, aligned to the
    table's rows (-1 where that structure has no row for it)."""

    place: NdaColumn
    parsed: Table
    rows: np.ndarray


@dataclass
class NdaTable:
    """One ASCII-release table assembled from a package (a ``TableSource``)."""

    source: SourceFile  # the first structure file, with the ASCII table's kind and visit
    subjects: np.ndarray  # participant id text per row
    origin: CellOrigins  # where each row's participant id was read
    places: dict[str, list[PlacedColumn]]  # ASCII column (upper) -> its places present, in order
    looked: dict[str, list[NdaColumn]]  # ASCII column -> every place the map gives it
    notes: PackageNotes
    files: dict[str, SourceFile] = field(default_factory=dict)  # the package's structure files
    variables: list[str] = field(default_factory=list)  # requested variables held

    def table(self, columns: Iterable[str], *, required: Iterable[str] = (), allow_empty: bool = True) -> Table:
        where = self.source.where
        needed = {r.upper() for r in required}
        frame: dict[str, pd.Series] = {}
        names: dict[str, str] = {}
        origins: dict[str, CellOrigins] = {"ID": self.origin}
        for name in dict.fromkeys([*(c.upper() for c in columns), *needed]):
            if name == "ID":
                frame[name] = pd.Series(self.subjects, dtype=object)
                names[name] = SUBJECT.lower()
                continue
            placed = self.places.get(name, [])
            if not placed:
                if name in needed:
                    places = self.looked.get(name, [])
                    looked = ", ".join(c.shown() for c in places) or "no map row"
                    first = self.files.get(places[0].structure) if places else None
                    raise InputFileError(
                        first.where if first is not None else where,
                        f"missing required column for the OAI variable {name} (looked for {looked}); "
                        f"if the package keeps it elsewhere, {how_to_provide(name)}",
                        line=1,
                        column=self.looked[name][0].column.lower() if self.looked.get(name) else name,
                    )
                continue
            cells, origins[name] = self._cells(name, placed)
            frame[name] = pd.Series(cells, dtype=object)
            names[name] = placed[0].place.column.lower()
        if not len(self.subjects) and not allow_empty:
            visit = f" at visit V{self.source.visit:02d}" if self.source.visit is not None else ""
            raise InputFileError(where, f"no rows{visit}; expected one per participant", line=3)
        out = pd.DataFrame(frame, index=range(len(self.subjects)))
        return Table(self.source, out, self.origin.lines, [], names, origins)

    def _cells(self, name: str, placed: list[PlacedColumn]) -> tuple[np.ndarray, CellOrigins]:
        """The column's cells: from its first place with a value for the row (units converted,
        NDA categories as OAI codes), and where each came from."""
        n = len(self.subjects)
        out = np.full(n, "", dtype=object)
        which = np.full(n, -1, dtype=np.int64)
        lines = np.zeros(n, dtype=np.int64)
        for k, p in enumerate(placed):
            have = p.rows >= 0
            cells = np.full(n, "", dtype=object)
            at = p.rows[have]
            cells[have] = p.parsed.frame[p.place.column].to_numpy(dtype=object)[at]
            row_lines = np.zeros(n, dtype=np.int64)
            row_lines[have] = p.parsed.lines[at]
            cells = apply_transform(cells, p.place.transform)
            cells = self._categories(name, p, cells, row_lines)
            take = (have & (which < 0)) | (have & (out == "") & (cells != ""))
            out[take], which[take], lines[take] = cells[take], k, row_lines[take]
        sources = [p.parsed.source for p in placed]
        return out, CellOrigins(sources, [p.place.column.lower() for p in placed], which, lines)

    def _categories(self, name: str, p: PlacedColumn, cells: np.ndarray, lines: np.ndarray) -> np.ndarray:
        categories = _categories_of(name, p.place)
        if not categories:
            return cells
        where, column = p.parsed.source.relative_path, p.place.column.lower()
        key = pd.Series(cells, dtype=object).map(normalised)
        found = key.map(categories)
        for category_key in sorted(set(key[found.notna()])):
            category: Category = categories[category_key]
            hit = (key == category_key).to_numpy()
            cells[hit] = category.cell
            self.notes.dictionary.append(
                {"variable": name, "code": category.code, "label": category.label, "source_file": where}
            )
            if not category.oai:
                self.notes.warnings.append(
                    f"{where}, column '{column}': {int(hit.sum())} cell(s) of the NDA category "
                    f"{category_key!r} stored as {category.cell!r} (first at line {int(lines[hit][0])})"
                )
        unknown = found.isna().to_numpy() & parse_coded(pd.Series(cells, dtype=object)).invalid
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            values = sorted(set(cells[unknown].tolist()))
            self.notes.warnings.append(
                f"{where}, line {int(lines[first])}, column '{column}': {int(unknown.sum())} cell(s) not an NDA "
                f"category of {name} ({', '.join(shown(v) for v in values[:3])}); stored as missing"
            )
            cells[unknown] = ""
        return cells


def _categories_of(name: str, place: NdaColumn) -> dict[str, Category]:
    mapping = default_map()
    out = mapping.categories(name)
    if not out:  # a column named directly (structure.column): the categories of its OAI variable
        variable = mapping.variable_at(place.structure, place.column, place.visit)
        out = mapping.categories(variable) if variable else {}
    for value, code in place.values:
        out.setdefault(normalised(value), Category(code, value.title(), True))
    return out
