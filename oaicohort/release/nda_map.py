"""The ASCII -> NDA variable map, as data: where each OAI variable is in an NDA data package.

``nda_map.csv`` (beside this module, documented inside) has one row per variable or pattern
(``V{vv}XRKL``); several rows for one variable are its places in order of preference (the
real NDA name first, then older guesses, then a fallback such as ``interview_age`` in months).
A row may carry a unit ``transform`` (``/12``: months -> years) and NDA ``values`` (legacy
``M=1;F=2``). A package's own ``oai_nda_map.csv`` overrides the shipped rows per variable: when
one of its rows matches a name, only its rows are used for that name.

``nda_categories.csv`` lists the documented NDA text categories of coded variables (``sex``
``M``/``F``/``O``/``NR``, ``race`` ``Unknown or not reported`` ...) with the OAI code each is
stored as and its label (which goes into the data dictionary).

Variables the map does not list are looked for by rule (:func:`rule_places`).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError

MAP_FILE = "nda_map.csv"
CATEGORIES_FILE = "nda_categories.csv"
USER_MAP_FILE = "oai_nda_map.csv"  # a package's own rows, in the package folder or ROOT
# a variable named directly in NDA terms: structure.column@V00 (the visit may be left out)
NDA_VARIABLE = re.compile(
    r"(?P<structure>[A-Za-z][A-Za-z0-9_]*)\.(?P<column>[A-Za-z][A-Za-z0-9_]*)(?:@(?P<visit>[Vv]\d{2}))?"
)
_PREFIXED = re.compile(r"(?P<prefix>V\d{2}|P0\d)(?P<name>[A-Z][A-Z0-9_]*)")
_TRANSFORM = re.compile(r"(?P<op>[*/])\s*(?P<factor>\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class NdaColumn:
    """One place of an OAI variable in a package."""

    structure: str  # lower case, "*": any structure (the participant id)
    column: str  # upper case, as the table reader names header columns
    visit: str | None  # "V00" ...; None: every row
    values: tuple[tuple[str, str], ...] = ()  # NDA value (upper case) -> OAI code
    transform: str = ""  # "/12" divides every number by 12; "*10" multiplies

    def shown(self) -> str:
        place = f"{self.structure}.{self.column.lower()}" + (f"@{self.visit}" if self.visit else "")
        return place + (f" ({self.transform})" if self.transform else "")


@dataclass(frozen=True)
class Category:
    """A documented NDA category of a coded variable: the OAI code it is stored as."""

    code: str  # "2", or a missing code ".N" where OAI has no code for it
    label: str
    oai: bool  # whether ``code`` is one of OAI's own codes of the variable

    @property
    def cell(self) -> str:
        """The category as an OAI ``code: label`` cell (read like one of the ASCII release)."""
        return f"{self.code}: {self.label}"


def normalised(text: str) -> str:
    """A category as compared: case and runs of spaces ignored."""
    return " ".join(text.split()).casefold()


def _template(text: str) -> re.Pattern[str]:
    out = re.escape(text.strip().upper()).replace(r"\{VV\}", r"(?P<vv>\d{2})").replace(r"\{S\}", r"(?P<s>[RL])")
    return re.compile(out)


def _fill(text: str, groups: dict[str, str]) -> str:
    out = text.replace("{vv}", groups.get("vv", "")).replace("{S}", groups.get("s", ""))
    return out.replace("{s}", groups.get("s", "").lower())


def check_transform(text: str) -> str:
    """``"/ 12"`` -> ``"/12"``; ValueError for anything but ``/N`` or ``*N``."""
    m = _TRANSFORM.fullmatch(text.strip())
    if not m:
        raise ValueError(f"transform must be /N or *N (e.g. /12: months -> years), got {text!r}")
    return m.group("op") + m.group("factor")


def apply_transform(cells: np.ndarray, transform: str) -> np.ndarray:
    """Numbers in ``cells`` (strings) divided or multiplied as ``transform`` says; other cells
    (blank, missing codes, text) unchanged."""
    if not transform:
        return cells
    op, factor = transform[0], float(transform[1:])
    out = cells.copy()
    numbers = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(numbers) & np.array([isinstance(c, str) and c.strip() != "" for c in cells], dtype=bool)
    scaled = numbers[ok] / factor if op == "/" else numbers[ok] * factor
    out[ok] = [repr(float(v)) for v in scaled]
    return out


@dataclass(frozen=True)
class _MapRow:
    ascii: str  # the pattern as written (V{vv}XRKL)
    pattern: re.Pattern[str]
    structure: str
    column: str
    visit: str
    values: tuple[tuple[str, str], ...]
    transform: str
    user: bool  # from a package's oai_nda_map.csv
    column_pattern: re.Pattern[str]
    visit_pattern: re.Pattern[str] | None

    def place(self, groups: dict[str, str]) -> NdaColumn:
        visit = _fill(self.visit, groups).upper() or None
        return NdaColumn(self.structure, _fill(self.column, groups).upper(), visit, self.values, self.transform)


@functools.cache
def shipped_categories() -> dict[str, dict[str, Category]]:
    """``nda_categories.csv``: OAI variable -> normalised NDA category -> Category."""
    text = resources.files("oaicohort.release").joinpath(CATEGORIES_FILE).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    out: dict[str, dict[str, Category]] = {}
    for rec in csv.DictReader(io.StringIO("\n".join(lines))):
        category = Category(rec["code"].strip(), rec["label"].strip(), rec["oai"].strip().lower() == "yes")
        out.setdefault(rec["ascii"].strip().upper(), {})[normalised(rec["category"])] = category
    return out


@dataclass
class NdaMap:
    """The ASCII -> NDA variable map: rows of ``nda_map.csv``, overridden by a package's own."""

    rows: list[_MapRow] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @classmethod
    def default(cls) -> NdaMap:
        return cls.from_text(resources.files("oaicohort.release").joinpath(MAP_FILE).read_text(encoding="utf-8"))

    @classmethod
    def from_text(cls, text: str, origin: str = MAP_FILE) -> NdaMap:
        out = cls()
        out.add(text, origin)
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
                out.add(text, str(path), user=True)
        return out

    def add(self, text: str, origin: str, *, user: bool = False) -> None:
        kept = [
            (i, ln) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.lstrip().startswith("#")
        ]
        reader = csv.DictReader(io.StringIO("\n".join(ln for _, ln in kept)))
        needed = {"ascii", "structure", "column"}
        if not needed <= set(reader.fieldnames or ()):
            line = kept[0][0] if kept else 1
            raise InputFileError(
                origin, f"an NDA variable map needs the columns {', '.join(sorted(needed))}", line=line
            )
        rows = []
        for index, rec in enumerate(reader, start=1):
            number = kept[index][0] if index < len(kept) else None
            if not (rec.get("ascii") or "").strip() or not (rec.get("column") or "").strip():
                raise InputFileError(origin, "empty ascii or column", line=number)
            try:
                transform = check_transform(rec["transform"]) if (rec.get("transform") or "").strip() else ""
            except ValueError as exc:
                raise InputFileError(origin, str(exc), line=number, column="transform") from None
            values = tuple(
                (k.strip().upper(), v.strip())
                for k, _, v in (pair.partition("=") for pair in (rec.get("values") or "").split(";") if "=" in pair)
            )
            visit = (rec.get("visit") or "").strip()
            rows.append(
                _MapRow(
                    rec["ascii"].strip(),
                    _template(rec["ascii"]),
                    (rec.get("structure") or "").strip().lower(),
                    rec["column"].strip(),
                    visit,
                    values,
                    transform,
                    user,
                    _template(rec["column"]),
                    _template(visit) if visit else None,
                )
            )
        self.rows = rows + self.rows if user else self.rows + rows
        self.sources.append(origin)

    def _matches(self, name: str) -> list[tuple[_MapRow, dict[str, str]]]:
        upper = name.strip().upper()
        found = []
        for row in self.rows:
            m = row.pattern.fullmatch(upper)
            if m:
                found.append((row, {k: v for k, v in m.groupdict().items() if v is not None}))
        user = [(row, groups) for row, groups in found if row.user]
        return user or found

    def candidates(self, name: str) -> list[NdaColumn]:
        """Every place the map gives an OAI variable, in order of preference (a package's own
        rows alone when it has any for the name); empty when the map does not list it."""
        return [row.place(groups) for row, groups in self._matches(name)]

    def locate(self, name: str) -> NdaColumn | None:
        """The first place the map gives an OAI variable, else None."""
        places = self.candidates(name)
        return places[0] if places else None

    def variable_at(self, structure: str, column: str, visit: str | None) -> str | None:
        """The OAI variable the map puts at ``structure.column@visit`` (the first row that
        does), or None: ``oai_koos_womac01``, ``WOMAC_PAIN_RIGHT``, ``V03`` -> ``V03WOMKPR``."""
        column, visit_text = column.strip().upper(), (visit or "").strip().upper()
        for row in self.rows:
            if row.structure != structure.strip().lower():
                continue
            m = row.column_pattern.fullmatch(column)
            if not m:
                continue
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            if row.visit_pattern is not None:
                v = row.visit_pattern.fullmatch(visit_text)
                if not v or any(groups.get(k, g) != g for k, g in v.groupdict().items() if g is not None):
                    continue
                groups |= {k: g for k, g in v.groupdict().items() if g is not None}
            if ("{vv}" in row.ascii and "vv" not in groups) or ("{S}" in row.ascii and "s" not in groups):
                continue
            return _fill(row.ascii, groups).upper()
        return None

    def categories(self, name: str) -> dict[str, Category]:
        """The NDA categories of an OAI variable: the shipped ones, plus the ``values`` of the
        map rows naming it (``M=1``: category M stored as code 1)."""
        upper = name.strip().upper()
        out = dict(shipped_categories().get(upper, {}))
        for row, _ in self._matches(upper):
            for value, code in row.values:
                out.setdefault(normalised(value), Category(code, value.title(), True))
        return out


def how_to_provide(name: str) -> str:
    """How a user names a variable the package keeps where the map does not look."""
    return (
        f"name it as structure.column@visit (e.g. --variables oai_koos_womac01.womac_pain_right@V00), or add a "
        f"row '{name},<structure>,<column>,<visit>,,' to {USER_MAP_FILE} in the package folder"
    )


def rule_places(name: str) -> list[NdaColumn]:
    """Where a variable the map does not list may be, by rule, in order: ``V03WOMKPR`` ->
    ``womkpr``, ``v03womkpr`` at visit ``V03``; ``P01FAMKR`` -> ``p01famkr``, ``famkr`` at
    ``V00`` (screening is recorded with the baseline visit; real packages drop the prefix);
    anything else -> the name itself on every row. The structure is left empty (any)."""
    upper = name.strip().upper()
    m = _PREFIXED.fullmatch(upper)
    if not m:
        return [NdaColumn("", upper, None)]
    prefix, rest = m.group("prefix"), m.group("name")
    if prefix.startswith("P"):
        return [NdaColumn("", upper, "V00"), NdaColumn("", rest, "V00")]
    return [NdaColumn("", rest, prefix), NdaColumn("", upper, prefix)]


def guess_column(name: str) -> tuple[str, str | None]:
    """The first rule place of a variable as (column, visit): ``V03WOMKPR`` -> (``WOMKPR``, ``V03``)."""
    first = rule_places(name)[0]
    return first.column, first.visit


def parse_nda_variable(name: str) -> NdaColumn | None:
    """``oai_koos_womac01.womkpr@V00`` -> its NdaColumn; None for an OAI variable name."""
    m = NDA_VARIABLE.fullmatch(name.strip())
    if not m:
        return None
    visit = m.group("visit")
    return NdaColumn(m.group("structure").lower(), m.group("column").upper(), visit.upper() if visit else None)


@functools.cache
def default_map() -> NdaMap:
    """The shipped map, parsed once (for what needs no package's own rows, e.g. knee pairs)."""
    return NdaMap.default()
