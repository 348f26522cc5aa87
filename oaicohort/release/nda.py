"""NDA data packages (``downloadcmd -dp``): OAI data structures read as the ASCII release's tables.

A package holds one ``<structure>.txt`` per data structure (tab-delimited; ``.csv`` exports are
comma-separated), row 1 the header, row 2 a description of each column, blank missing values,
lower-case names, ``src_subject_id`` = the OAI participant id, a ``visit`` column
``V00``...``V11``/``V99``. Where the ASCII release has a variable ``V{vv}NAME`` in a per-visit
file, a package has (structure, column, visit); which is which is the data of
:mod:`oaicohort.release.nda_map`.

Each table the ASCII readers expect (Enrollees, kXR_SQ_BU{vv}, Outcomes99, AllClinical{vv}) is
assembled with the ASCII column names, so that the same readers parse it and the database cannot
tell the forms apart. A per-participant table may draw its columns from several structures: its
rows are the participants any of them lists at the visit, joined on ``src_subject_id`` (a
participant listed twice at one visit of one structure, with different values, is an error).
The X-ray readings of a visit are the rows of one structure, in file order. How a column's
cells are made (places in order, units, NDA text categories) is :mod:`oaicohort.release.nda_table`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError, OAIError
from oaicohort.release.discovery import ALLCLINICAL, ENROLLEES, KXR_SQ_BU, OUTCOMES, SUBJECTCHAR, SourceFile
from oaicohort.release.nda_map import USER_MAP_FILE, NdaColumn, NdaMap, how_to_provide, parse_nda_variable, rule_places
from oaicohort.release.nda_table import SUBJECT, NdaTable, PackageNotes, PlacedColumn
from oaicohort.release.readers import OUTCOME_FIELDS, allclinical_columns, kxr_columns
from oaicohort.release.table import CellOrigins, Table
from oaicohort.release.text import FileBytes, header_names, read_header, read_table
from oaicohort.visits import VISIT_MONTHS

VISIT = "VISIT"
ENROLLEE_COLUMNS = ("V00SITE", "P02SEX", "P02RACE", "V00COHORT")


def locate_variables(
    structures: Sequence[SourceFile], variables: Sequence[str], mapping: NdaMap
) -> dict[str, tuple[SourceFile, NdaColumn]]:
    """The structure file and column of each requested variable (header lines only are read).

    A variable is found as ``structure.column@visit``; else in a column named exactly like it
    (``p01ksurgr``: no other variable has that name); else at the first place the map gives it
    that the package has; else by rule (``rule_places``), never at a place the map gives another
    variable unless the package holds that one under its own full name (older packages wrote
    ``P01KSURGR`` as ``p01ksurgr`` and ``V00KSURGR`` as ``ksurgr``, where real ones have
    ``P01KSURGR`` as ``ksurgr``). One found nowhere, or in several structures, is an error saying
    how to name it."""
    by_name = {s.structure: s for s in structures}
    headers: dict[str, set[str]] = {}

    def header(structure: str) -> set[str]:
        if structure not in headers:
            source = by_name[structure]
            headers[structure] = set(read_header(source, sep=source.delimiter))
        return headers[structure]

    located: dict[str, tuple[SourceFile, NdaColumn]] = {}
    for name in variables:
        direct = parse_nda_variable(name)
        if direct is not None:
            if direct.structure not in by_name:
                raise OAIError(
                    f"variable {name}: the package has no structure {direct.structure} "
                    f"(looked for {direct.shown()}); {how_to_provide(name)}"
                )
            if direct.column not in header(direct.structure):
                raise OAIError(
                    f"variable {name}: {by_name[direct.structure].relative_path} has no column "
                    f"{direct.column.lower()} (looked for {direct.shown()}); {how_to_provide(name)}"
                )
            located[name] = (by_name[direct.structure], direct)
            continue
        rules = rule_places(name)
        full = [c for c in rules if len(rules) > 1 and c.column == name.strip().upper()]
        found = _held(name, full, by_name, header, mapping)
        if found is not None:
            located[name] = found
            continue
        mapped = mapping.candidates(name)
        place = next((c for c in mapped if c.structure in by_name and c.column in header(c.structure)), None)
        if place is not None:
            located[name] = (by_name[place.structure], place)
            continue
        found = _held(name, [c for c in rules if c not in full], by_name, header, mapping)
        if found is None:
            looked = [c.shown() for c in mapped] + [c.shown().lstrip(".") for c in rules]
            raise OAIError(
                f"variable {name}: not found in any structure (looked for {', '.join(looked)}); {how_to_provide(name)}"
            )
        located[name] = found
    return located


def _held(
    name: str,
    places: list[NdaColumn],
    by_name: dict[str, SourceFile],
    header: Callable[[str], set[str]],
    mapping: NdaMap,
) -> tuple[SourceFile, NdaColumn] | None:
    """The first of ``places`` (structure left open) one structure holds; None if none does."""

    def free(structure: str, place: NdaColumn) -> bool:
        owner = mapping.variable_at(structure, place.column, place.visit)
        return owner in (None, name.upper()) or owner in header(structure)

    for place in places:
        holders = sorted(s for s in by_name if place.column in header(s) and free(s, place))
        if len(holders) > 1:
            raise OAIError(
                f"variable {name}: a column {place.column.lower()} is found in {', '.join(holders)}; "
                f"{how_to_provide(name)}"
            )
        if holders:
            return by_name[holders[0]], NdaColumn(holders[0], place.column, place.visit)
    return None


def _visit_of(code: str) -> int | None:
    text = code.strip().upper()
    if len(text) == 3 and text.startswith("V") and text[1:].isdigit() and int(text[1:]) in VISIT_MONTHS:
        return int(text[1:])
    return None


@dataclass
class PackageTables:
    """What ``read_package`` assembled: tables to read, the data rows of each structure file,
    and the package's notes (warnings, data-dictionary entries)."""

    tables: list[NdaTable] = field(default_factory=list)
    n_rows: dict[str, int] = field(default_factory=dict)  # by relative path
    notes: PackageNotes = field(default_factory=PackageNotes)


class _Package:
    """The parsed structures of a package and their rows per visit."""

    def __init__(self, raws: Sequence[FileBytes]) -> None:
        self.raws = {raw.source.structure: raw for raw in raws}
        self.headers = {name: set(header_names(raw, raw.source.delimiter)) for name, raw in self.raws.items()}
        self.parsed: dict[str, Table] = {}
        self._rows: dict[tuple[str, str | None], np.ndarray] = {}

    def files(self) -> dict[str, SourceFile]:
        return {name: raw.source for name, raw in self.raws.items()}

    def has(self, place: NdaColumn) -> bool:
        return place.structure in self.headers and place.column in self.headers[place.structure]

    def parse(self, needs: dict[str, set[str]]) -> None:
        for name, raw in self.raws.items():
            columns = sorted(needs.get(name, set()) | {SUBJECT})
            self.parsed[name] = read_table(
                raw, columns, required=[SUBJECT], sep=raw.source.delimiter, description_row=True
            )

    def rows_at(self, structure: str, visit: str | None) -> np.ndarray:
        """Row indices of a structure at a visit (every row for None), in file order."""
        key = (structure, visit)
        if key not in self._rows:
            table = self.parsed[structure]
            if visit is None:
                self._rows[key] = np.arange(len(table))
            elif VISIT not in table.frame.columns:
                raise InputFileError(
                    table.source.where, f"no 'visit' column; needed to find the rows of visit {visit}", line=1
                )
            else:
                self._rows[key] = np.flatnonzero((table.frame[VISIT].str.upper() == visit).to_numpy())
        return self._rows[key]

    def one_per_subject(self, structure: str, visit: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(participant ids, row indices) of a structure at a visit, one row per participant:
        repeated identical rows are one; a participant whose rows differ is an error."""
        table = self.parsed[structure]
        rows = self.rows_at(structure, visit)
        ids = table.frame[SUBJECT].to_numpy(dtype=object)[rows]
        repeated = pd.Series(ids).duplicated(keep=False).to_numpy()
        if repeated.any():
            frame = table.frame.iloc[rows[repeated]]
            distinct = frame.drop_duplicates()
            clash = distinct[SUBJECT].duplicated(keep=False).to_numpy()
            if clash.any():
                subject = distinct[SUBJECT].to_numpy()[clash][0]
                at = rows[ids == subject]
                raise InputFileError(
                    table.source.where,
                    f"participant {subject} has {len(at)} rows"
                    + (f" at visit {visit}" if visit else "")
                    + f" that differ (lines {', '.join(str(int(table.lines[i])) for i in at[:4])}); expected one "
                    "per participant" + ("" if visit else "; name the visit (structure.column@V00)"),
                    line=int(table.lines[at[1]]),
                    column=SUBJECT.lower(),
                )
            keep = ~pd.Series(ids).duplicated(keep="first").to_numpy()
            rows, ids = rows[keep], ids[keep]
        return ids, rows


def read_package(
    raws: Sequence[FileBytes],
    located: dict[str, tuple[SourceFile, NdaColumn]],
    mapping: NdaMap,
) -> PackageTables:
    """Parse the structure files of a package into the tables of the ASCII release.

    ``located``: the requested variables (``locate_variables``); those of one structure and visit
    become a table of their own, read like a SubjectChar file (participants and their values)."""
    package = _Package(raws)
    out = PackageTables()

    def place(names: Iterable[str]) -> dict[str, list[NdaColumn]]:
        return {name.upper(): mapping.candidates(name) for name in names}

    enrollee = place(ENROLLEE_COLUMNS)
    kxr = {v: place(["SIDE", "READPRJ", *kxr_columns(v).values()]) for v in VISIT_MONTHS}
    outcome = place([f"V99E{s}K{f}" for s in "RL" for f in OUTCOME_FIELDS.values()])
    clinical = {v: place(allclinical_columns(v).values()) for v in VISIT_MONTHS}
    requested: dict[tuple[str, str | None], dict[str, list[NdaColumn]]] = {}
    for name, (_, column) in located.items():
        requested.setdefault((column.structure, column.visit), {})[name.upper()] = [column]
    needs: dict[str, set[str]] = {}
    for group in [enrollee, outcome, *kxr.values(), *clinical.values(), *requested.values()]:
        for candidates in group.values():
            for c in candidates:
                if package.has(c):
                    needs.setdefault(c.structure, set()).update({c.column} | ({VISIT} if c.visit else set()))
    package.parse(needs)
    out.n_rows = {raw.source.relative_path: len(package.parsed[n]) for n, raw in package.raws.items()}

    def add(kind: str, visit: int | None, columns: dict[str, list[NdaColumn]]) -> NdaTable | None:
        table = _subject_table(package, kind, visit, columns, out.notes)
        if table is not None:
            out.tables.append(table)
        return table

    add(ENROLLEES, None, enrollee)
    for v, columns in kxr.items():
        table = _kxr_table(package, v, columns, out.notes)
        if table is not None:
            out.tables.append(table)
    if any(package.has(c) for c in outcome["V99ERKRPSN"]):
        add(OUTCOMES, None, outcome)
    elif any(package.has(c) for cands in outcome.values() for c in cands):
        looked = ", ".join(c.shown() for c in outcome["V99ERKRPSN"])
        out.notes.warnings.append(
            f"the package's knee-replacement outcomes were not read: no column for V99ERKRPSN (looked for "
            f"{looked}); {how_to_provide('V99E{S}KRPSN')}"
        )
    for v, columns in clinical.items():
        add(ALLCLINICAL, v, columns)
    for (_, visit), columns in sorted(requested.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        table = add(SUBJECTCHAR, _visit_of(visit) if visit else None, columns)
        if table is not None:
            table.variables = list(columns)
    return out


def _subject_table(
    package: _Package, kind: str, visit: int | None, columns: dict[str, list[NdaColumn]], notes: PackageNotes
) -> NdaTable | None:
    """A per-participant table: the participants any placed column's structure lists at its
    visit (first appearance first), each column taken from its places in order."""
    present = {name: [c for c in cands if package.has(c)] for name, cands in columns.items()}
    keys = list(dict.fromkeys((c.structure, c.visit) for cands in present.values() for c in cands))
    if not keys:
        return None
    aligned = {key: package.one_per_subject(*key) for key in keys}
    subjects = pd.unique(np.concatenate([ids for ids, _ in aligned.values()]))
    if not len(subjects):
        return None
    index = pd.Index(subjects)
    rows_of: dict[tuple[str, str | None], np.ndarray] = {}
    which = np.full(len(subjects), -1, dtype=np.int64)
    lines = np.zeros(len(subjects), dtype=np.int64)
    for k, (key, (ids, rows)) in enumerate(aligned.items()):
        aligned_rows = np.full(len(subjects), -1, dtype=np.int64)
        aligned_rows[index.get_indexer(ids)] = rows
        rows_of[key] = aligned_rows
        first = (which < 0) & (aligned_rows >= 0)
        which[first], lines[first] = k, package.parsed[key[0]].lines[aligned_rows[first]]
    sources = [package.parsed[s].source for s, _ in aligned]
    anchor = sources[0]
    source = SourceFile(anchor.path, anchor.relative_path, kind, visit, anchor.member, "nda")
    places = {
        name: [PlacedColumn(c, package.parsed[c.structure], rows_of[(c.structure, c.visit)]) for c in cands]
        for name, cands in present.items()
        if cands
    }
    origin = CellOrigins(sources, [SUBJECT.lower()] * len(sources), which, lines)
    return NdaTable(source, subjects, origin, places, columns, notes, package.files())


def _kxr_table(
    package: _Package, visit: int, columns: dict[str, list[NdaColumn]], notes: PackageNotes
) -> NdaTable | None:
    """The X-ray readings of a visit: the rows of the structure holding its KL grade, in file order."""
    klg = kxr_columns(visit)["klg"]
    grade = next((c for c in columns[klg] if package.has(c)), None)
    if grade is None:
        return None
    rows = package.rows_at(grade.structure, grade.visit)
    if not len(rows):
        return None
    parsed = package.parsed[grade.structure]
    places: dict[str, list[PlacedColumn]] = {}
    for name, cands in columns.items():
        present = [c for c in cands if package.has(c)]
        elsewhere = [c for c in present if c.structure != grade.structure]
        if elsewhere:
            raise OAIError(
                f"the X-ray readings of visit V{visit:02d} are rows of {grade.structure}, but the NDA variable map "
                f"places {name} in {elsewhere[0].shown()}; correct it in {USER_MAP_FILE}"
            )
        if present:
            places[name] = [PlacedColumn(c, parsed, rows) for c in present]
    source = SourceFile(parsed.source.path, parsed.source.relative_path, KXR_SQ_BU, visit, parsed.source.member, "nda")
    ids = parsed.frame[SUBJECT].to_numpy(dtype=object)[rows]
    origin = CellOrigins([parsed.source], [SUBJECT.lower()], np.zeros(len(rows), dtype=np.int64), parsed.lines[rows])
    return NdaTable(source, ids, origin, places, columns, notes, package.files())
