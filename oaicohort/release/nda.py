"""NDA data packages (``downloadcmd -dp``): OAI data structures read as the ASCII release's tables.

A package holds one tab-delimited ``<structure>.txt`` per data structure (row 1 the header, row 2
a description of each column, blank missing values, lower-case names, ``src_subject_id`` = the
OAI participant id, a ``visit`` column ``V00``...``V11``/``V99``). Where the ASCII release has a
variable ``V{vv}NAME`` in a per-visit file, a package has (structure, column, visit). Which is
which is DATA, not code: ``nda_map.csv`` beside this module (documented there; a package can
extend or correct it with its own ``oai_nda_map.csv``). Variables it does not list are looked for
by rule (``V{vv}NAME`` -> column ``name`` at visit ``V{vv}``), and a user can name one directly as
``structure.column@V00``.

Each table the ASCII readers expect (Enrollees, kXR_SQ_BU{vv}, Outcomes99, AllClinical{vv}) is
assembled from one structure's rows at one visit, with the ASCII column names, so that the same
readers parse it and the database cannot tell the forms apart. Errors name the structure file,
its line and the NDA column.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError, OAIError
from oaicohort.release.discovery import ALLCLINICAL, ENROLLEES, KXR_SQ_BU, OUTCOMES, SUBJECTCHAR, SourceFile
from oaicohort.release.readers import OUTCOME_FIELDS, allclinical_columns, kxr_columns
from oaicohort.release.table import Table
from oaicohort.release.text import FileBytes, read_header, read_table
from oaicohort.visits import VISIT_MONTHS

MAP_FILE = "nda_map.csv"
USER_MAP_FILE = "oai_nda_map.csv"  # a package's own rows, in the package folder or ROOT
SUBJECT = "SRC_SUBJECT_ID"
VISIT = "VISIT"
# a variable named directly in NDA terms: structure.column@V00 (the visit may be left out)
NDA_VARIABLE = re.compile(
    r"(?P<structure>[A-Za-z][A-Za-z0-9_]*)\.(?P<column>[A-Za-z][A-Za-z0-9_]*)(?:@(?P<visit>[Vv]\d{2}))?"
)
_PREFIXED = re.compile(r"(?P<prefix>V\d{2}|P0\d)(?P<name>[A-Z][A-Z0-9_]*)")


@dataclass(frozen=True)
class NdaColumn:
    """Where one OAI variable is in a package."""

    structure: str  # lower case, "*": any structure (the participant id)
    column: str  # upper case, as the table reader names header columns
    visit: str | None  # "V00" ...; None: every row
    values: tuple[tuple[str, str], ...] = ()  # NDA value (upper case) -> OAI code

    def shown(self) -> str:
        return f"{self.structure}.{self.column.lower()}" + (f"@{self.visit}" if self.visit else "")


@dataclass(frozen=True)
class _MapRow:
    pattern: re.Pattern[str]
    structure: str
    column: str
    visit: str
    values: tuple[tuple[str, str], ...]


def _template(text: str) -> re.Pattern[str]:
    out = re.escape(text.strip().upper()).replace(r"\{VV\}", r"(?P<vv>\d{2})").replace(r"\{S\}", r"(?P<s>[RL])")
    return re.compile(out)


def _fill(text: str, groups: dict[str, str]) -> str:
    out = text.replace("{vv}", groups.get("vv", "")).replace("{S}", groups.get("s", ""))
    return out.replace("{s}", groups.get("s", "").lower())


@dataclass
class NdaMap:
    """The ASCII -> NDA variable map: rows of ``nda_map.csv``, overridden by a package's own."""

    rows: list[_MapRow] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @classmethod
    def default(cls) -> NdaMap:
        text = resources.files("oaicohort.release").joinpath(MAP_FILE).read_text(encoding="utf-8")
        out = cls()
        out.add(text, MAP_FILE)
        return out

    @classmethod
    def for_package(cls, folders: Iterable[Path]) -> NdaMap:
        """The shipped map plus any ``oai_nda_map.csv`` in ``folders`` (its rows win)."""
        out = cls.default()
        for folder in folders:
            path = Path(folder) / USER_MAP_FILE
            if path.is_file():
                try:
                    text = path.read_text(encoding="utf-8-sig")
                except (OSError, UnicodeDecodeError) as exc:
                    raise InputFileError(path, f"cannot read the NDA variable map: {exc}") from None
                out.add(text, str(path), first=True)
        return out

    def add(self, text: str, origin: str, *, first: bool = False) -> None:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        reader = csv.DictReader(io.StringIO("\n".join(lines)))
        needed = {"ascii", "structure", "column"}
        if not needed <= set(reader.fieldnames or ()):
            raise InputFileError(origin, f"an NDA variable map needs the columns {', '.join(sorted(needed))}", line=1)
        rows = []
        for number, rec in enumerate(reader, start=2):
            if not (rec.get("ascii") or "").strip() or not (rec.get("column") or "").strip():
                raise InputFileError(origin, "empty ascii or column", line=number)
            values = tuple(
                (k.strip().upper(), v.strip())
                for k, _, v in (pair.partition("=") for pair in (rec.get("values") or "").split(";") if "=" in pair)
            )
            rows.append(
                _MapRow(
                    _template(rec["ascii"]),
                    rec["structure"].strip().lower(),
                    rec["column"].strip(),
                    (rec.get("visit") or "").strip(),
                    values,
                )
            )
        self.rows = rows + self.rows if first else self.rows + rows
        self.sources.append(origin)

    def locate(self, name: str) -> NdaColumn | None:
        """The NDA place of an OAI variable named in this map, else None."""
        upper = name.strip().upper()
        for row in self.rows:
            m = row.pattern.fullmatch(upper)
            if m:
                groups = {k: v for k, v in m.groupdict().items() if v is not None}
                visit = _fill(row.visit, groups).upper() or None
                return NdaColumn(row.structure, _fill(row.column, groups).upper(), visit, row.values)
        return None


def guess_column(name: str) -> tuple[str, str | None]:
    """The rule for variables the map does not list: ``V03WOMKPR`` -> (``WOMKPR``, ``V03``),
    ``P01FAMKR`` -> (``P01FAMKR``, ``V00``: screening is recorded with the baseline visit),
    anything else -> (the name, None)."""
    upper = name.strip().upper()
    m = _PREFIXED.fullmatch(upper)
    if not m:
        return upper, None
    if m.group("prefix").startswith("P"):
        return upper, "V00"
    return m.group("name"), m.group("prefix")


def parse_nda_variable(name: str) -> NdaColumn | None:
    """``oai_koos_womac01.womkpr@V00`` -> its NdaColumn; None for an OAI variable name."""
    m = NDA_VARIABLE.fullmatch(name.strip())
    if not m:
        return None
    visit = m.group("visit")
    return NdaColumn(m.group("structure").lower(), m.group("column").upper(), visit.upper() if visit else None)


def _how_to_provide(name: str) -> str:
    return (
        f"name it as structure.column@visit (e.g. --variables oai_koos_womac01.womkpr@V00), or add a row "
        f"'{name},<structure>,<column>,<visit>,' to {USER_MAP_FILE} in the package folder"
    )


def locate_variables(
    structures: Sequence[SourceFile], variables: Sequence[str], mapping: NdaMap
) -> dict[str, tuple[SourceFile, NdaColumn]]:
    """The structure file and column of each requested variable (header lines only are read).

    A variable is found by its map row, else as ``structure.column@visit``, else by rule; one
    found nowhere, or by rule in several structures, is an error naming it and how to name it."""
    by_name = {s.structure: s for s in structures}
    headers: dict[str, set[str]] = {}

    def header(structure: str) -> set[str]:
        if structure not in headers:
            headers[structure] = set(read_header(by_name[structure], sep="\t"))
        return headers[structure]

    located: dict[str, tuple[SourceFile, NdaColumn]] = {}
    for name in variables:
        column = parse_nda_variable(name) or mapping.locate(name)
        if column is not None:
            if column.structure not in by_name:
                raise OAIError(
                    f"variable {name}: the package has no structure {column.structure} "
                    f"(looked for {column.shown()}); {_how_to_provide(name)}"
                )
            if column.column not in header(column.structure):
                raise OAIError(
                    f"variable {name}: {by_name[column.structure].relative_path} has no column "
                    f"{column.column.lower()} (looked for {column.shown()}); {_how_to_provide(name)}"
                )
            located[name] = (by_name[column.structure], column)
            continue
        guessed, visit = guess_column(name)
        holders = sorted(s for s in by_name if guessed in header(s))
        if len(holders) != 1:
            found = f"found in {', '.join(holders)}" if holders else "not found in any structure"
            raise OAIError(
                f"variable {name}: no row in the NDA variable map, and a column {guessed.lower()} is {found}; "
                f"{_how_to_provide(name)}"
            )
        located[name] = (by_name[holders[0]], NdaColumn(holders[0], guessed, visit))
    return located


# --------------------------------------------------------------------------- assembled tables


@dataclass
class NdaTable:
    """One ASCII-release table assembled from a structure's rows at one visit (a ``TableSource``)."""

    source: SourceFile  # the structure file, with the ASCII table's kind and visit
    parsed: Table  # the structure's needed columns, all rows
    rows: np.ndarray  # indices of this table's rows in ``parsed``
    columns: dict[str, NdaColumn]  # ASCII column (upper) -> where it is
    variables: list[str] = field(default_factory=list)  # requested variables held

    def table(self, columns: Iterable[str], *, required: Iterable[str] = (), allow_empty: bool = True) -> Table:
        where = self.source.where
        frame: dict[str, pd.Series] = {}
        names: dict[str, str] = {}
        wanted = [c.upper() for c in columns]
        for name in dict.fromkeys([*wanted, *(r.upper() for r in required)]):
            place = NdaColumn("*", SUBJECT, None) if name == "ID" else self.columns.get(name)
            if place is None or place.column not in self.parsed.frame.columns:
                if name in {r.upper() for r in required}:
                    looked = f"column {place.column.lower()}" if place else "a column (no map row)"
                    raise InputFileError(
                        where,
                        f"missing required {looked} for the OAI variable {name}; "
                        f"if the package keeps it elsewhere, {_how_to_provide(name)}",
                        line=1,
                        column=place.column.lower() if place else name,
                    )
                continue
            cells = self.parsed.frame[place.column].iloc[self.rows].reset_index(drop=True)
            if place.values:
                lookup = {k: v for k, v in place.values}
                cells = pd.Series([lookup.get(v.upper(), v) for v in cells.tolist()], dtype=object)
            frame[name] = cells
            names[name] = place.column.lower()
        if not len(self.rows) and not allow_empty:
            visit = f" at visit V{self.source.visit:02d}" if self.source.visit is not None else ""
            raise InputFileError(where, f"no rows{visit}; expected one per participant", line=3)
        out = pd.DataFrame(frame, index=range(len(self.rows)))
        return Table(self.source, out, self.parsed.lines[self.rows], self.parsed.header, names)


def _visit_of(code: str) -> int | None:
    m = re.fullmatch(r"V(\d{2})", code.strip().upper())
    return int(m.group(1)) if m and int(m.group(1)) in VISIT_MONTHS else None


@dataclass
class PackageTables:
    """What ``read_package`` assembled: tables to read, and the data rows of each structure file."""

    tables: list[NdaTable] = field(default_factory=list)
    n_rows: dict[str, int] = field(default_factory=dict)  # by relative path


def read_package(
    raws: Sequence[FileBytes],
    located: dict[str, tuple[SourceFile, NdaColumn]],
    mapping: NdaMap,
) -> PackageTables:
    """Parse the structure files of a package into the tables of the ASCII release.

    ``located``: the requested variables (``locate_variables``); each becomes a table of its own
    structure and visit, read like a SubjectChar file (participants and their values)."""
    by_name = {raw.source.structure: raw for raw in raws}
    needs: dict[str, set[str]] = {name: {SUBJECT} for name in by_name}

    def place(names: Iterable[str]) -> dict[str, NdaColumn]:
        out = {}
        for name in names:
            column = mapping.locate(name)
            if column is not None and column.structure in by_name:
                out[name.upper()] = column
        return out

    enrollee = place(["V00SITE", "P02SEX", "P02RACE", "V00COHORT"])
    kxr = {v: place(["SIDE", "READPRJ", *kxr_columns(v).values()]) for v in VISIT_MONTHS}
    outcome = place([f"V99E{s}K{f}" for s in "RL" for f in OUTCOME_FIELDS.values()])
    clinical = {v: place(allclinical_columns(v).values()) for v in VISIT_MONTHS}
    for group in [enrollee, outcome, *kxr.values(), *clinical.values()]:
        for column in group.values():
            needs[column.structure].add(column.column)
            if column.visit:
                needs[column.structure].add(VISIT)
    for source, column in located.values():
        needs[source.structure].add(column.column)
        if column.visit:
            needs[source.structure].add(VISIT)
    parsed = {
        name: read_table(by_name[name], sorted(cols), required=[SUBJECT], sep="\t", description_row=True)
        for name, cols in needs.items()
    }
    out = PackageTables(n_rows={by_name[n].source.relative_path: len(t) for n, t in parsed.items()})

    def rows_at(structure: str, visit: str | None) -> np.ndarray:
        table = parsed[structure]
        if visit is None:
            return np.arange(len(table))
        if VISIT not in table.frame.columns:
            raise InputFileError(
                table.source.where, f"no 'visit' column; needed to find the rows of visit {visit}", line=1
            )
        return np.flatnonzero((table.frame[VISIT].str.upper() == visit).to_numpy())

    def add(kind: str, visit: int | None, columns: dict[str, NdaColumn], rows_visit: str | None) -> NdaTable:
        structures = {c.structure for c in columns.values()}
        if len(structures) > 1:
            raise OAIError(
                f"the NDA variable map places the columns of one OAI table in several structures "
                f"({', '.join(sorted(structures))}): {', '.join(f'{k}={c.shown()}' for k, c in columns.items())}; "
                f"correct it in {USER_MAP_FILE}"
            )
        structure = structures.pop()
        raw = by_name[structure]
        source = SourceFile(raw.source.path, raw.source.relative_path, kind, visit, raw.source.member, "nda")
        table = NdaTable(source, parsed[structure], rows_at(structure, rows_visit), columns)
        out.tables.append(table)
        return table

    if "V00SITE" in enrollee:
        add(ENROLLEES, None, enrollee, enrollee["V00SITE"].visit)
    for v, columns in kxr.items():
        klg = kxr_columns(v)["klg"]
        if klg in columns and len(rows_at(columns[klg].structure, columns[klg].visit)):
            add(KXR_SQ_BU, v, columns, columns[klg].visit)
    if "V99ERKRPSN" in outcome:
        add(OUTCOMES, None, outcome, outcome["V99ERKRPSN"].visit)
    for v, columns in clinical.items():
        age = allclinical_columns(v)["age"]
        if age in columns and len(rows_at(columns[age].structure, columns[age].visit)):
            add(ALLCLINICAL, v, columns, columns[age].visit)
    groups: dict[tuple[str, str | None], dict[str, NdaColumn]] = {}
    for name, (_, column) in located.items():
        groups.setdefault((column.structure, column.visit), {})[name.upper()] = column
    for (_, visit), columns in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        table = add(SUBJECTCHAR, _visit_of(visit) if visit else None, columns, visit)
        table.variables = list(columns)
    return out
