"""The data structures of a synthetic NDA package, with the names real packages use.

``write_structures(package, tables)`` writes the ASCII release's tables as NDA structure files
(OAI_DISTRIBUTIONS.md sections 1 and 5): every OAI variable at the first place the shipped map
(``oaicohort.release.nda_map``) gives it (``V00AGE`` -> ``oai_enrollee01.ageyears``, ``P01BMI``
-> ``oai_oarisk01.bmi@V00``, ``V00WOMKPR`` -> ``oai_koos_womac01.womac_pain_right``), the
others with their prefix and visit dropped (``P01SVDATE`` -> ``svdate`` at ``V00``) in the
structure of their family; sex, race and ethnicity as NDA text categories (``M``, ``White``,
``Not Hispanic or Latino``). One row per participant and visit in each structure (an OAI table
drawing on several), one row per reading in ``oai_kxrsemiquant01``. Two ASCII variables that
would share a column at one visit (``P01KSURGR`` and ``V00KSURGR``) keep the map's for the
mapped one and the full lower-case name (``v00ksurgr``) for the other.

``LEGACY_MAP`` is the map the first synthetic packages were written with (``--legacy-names``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from oaicohort.release.nda_map import NdaColumn, NdaMap, rule_places
from oaicohort.visits import VISIT_MONTHS

COMMON = ("subjectkey", "src_subject_id", "interview_date", "interview_age", "sex", "visit")
# structure of an AllClinical column the map does not place, by the start of its name
FAMILIES = (
    ("WOM", "oai_koos_womac01"),
    ("KOOS", "oai_koos_womac01"),
    ("KPN", "oai_oapain01"),
    ("PASE", "oai_pase01"),
)
CLINICAL_STRUCTURE = "oai_oarisk01"
SUBJECTCHAR_STRUCTURE = "oai_subjectchar01"
_DATE = re.compile(r"\d{2}/\d{2}/\d{4}")

# the variable map of the first synthetic packages (the names section 1 of OAI_DISTRIBUTIONS.md
# guessed before real packages were seen)
LEGACY_MAP = """ascii,structure,column,visit,values
ID,*,src_subject_id,,
V00SITE,oai_enrollee01,site,,
P02SEX,oai_enrollee01,sex,,M=1;F=2;Male=1;Female=2
P02RACE,oai_enrollee01,race,,Other Non-white=0;White=1;White or Caucasian=1;Black or African American=2;Asian=3
P02HISP,oai_enrollee01,ethnicity,,
V00COHORT,oai_enrollee01,e_cohort,,
SIDE,oai_kxrsemiquant01,side,,
READPRJ,oai_kxrsemiquant01,readprj,,
V{vv}XRKL,oai_kxrsemiquant01,xrkl,V{vv},
V{vv}XRJSM,oai_kxrsemiquant01,xrjsm,V{vv},
V{vv}XRJSL,oai_kxrsemiquant01,xrjsl,V{vv},
V{vv}XROSFM,oai_kxrsemiquant01,xrosfm,V{vv},
V{vv}XROSFL,oai_kxrsemiquant01,xrosfl,V{vv},
V{vv}XROSTM,oai_kxrsemiquant01,xrostm,V{vv},
V{vv}XROSTL,oai_kxrsemiquant01,xrostl,V{vv},
V99E{S}KRPSN,oai_outcome01,{s}krpsn,V99,
V99E{S}KBLRP,oai_outcome01,{s}kblrp,V99,
V99E{S}KDAYS,oai_outcome01,{s}kdays,V99,
V99E{S}KVSPR,oai_outcome01,{s}kvspr,V99,
V99E{S}KVSAF,oai_outcome01,{s}kvsaf,V99,
V99E{S}KXRPR,oai_outcome01,{s}kxrpr,V99,
V99E{S}KXRAF,oai_outcome01,{s}kxraf,V99,
V99E{S}KRPCF,oai_outcome01,{s}krpcf,V99,
V99E{S}KTLPR,oai_outcome01,{s}ktlpr,V99,
V99E{S}KDATE,oai_outcome01,{s}kdate,V99,
V{vv}AGE,oai_oarisk01,age,V{vv},
V{vv}BMI,oai_oarisk01,bmi,V{vv},
P01BMI,oai_oarisk01,p01bmi,V00,
V00EVDATE,oai_oarisk01,interview_date,V00,
V{vv}FVDATE,oai_oarisk01,interview_date,V{vv},
"""


def _family(column: str) -> str:
    return next((structure for start, structure in FAMILIES if column.upper().startswith(start)), CLINICAL_STRUCTURE)


class _Structures:
    """Rows of NDA structures being assembled: one per participant and visit (``per_subject``)
    or one per reading (``listed``); columns in the order first written."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[str, str], dict[str, str]]] = {}
        self.listed: dict[str, list[dict[str, str]]] = {}
        self.columns: dict[str, list[str]] = {}
        # (structure, visit, column) -> (ASCII variable, table) that filled it
        self.taken: dict[tuple[str, str, str], tuple[str, str]] = {}

    def row(self, structure: str, subject: str, visit: str, common: dict[str, str]) -> dict[str, str]:
        rows = self.rows.setdefault(structure, {})
        if (subject, visit) not in rows:
            rows[(subject, visit)] = dict(common)
        return rows[(subject, visit)]

    def claim(self, structure: str, visit: str, column: str, variable: str, table: str) -> str:
        """Take ``column`` at ``visit`` of ``structure`` for ``variable`` of ``table``: "free" (taken
        now), "same" (the variable already written from another table) or "other" (another's)."""
        owner = self.taken.setdefault((structure, visit, column), (variable, table))
        if owner == (variable, table):
            known = self.columns.setdefault(structure, list(COMMON))
            if column not in known:
                known.append(column)
            return "free"
        return "same" if owner[0] == variable else "other"

    def write(self, package: Path) -> list[Path]:
        paths = []
        for structure in sorted({*self.rows, *self.listed}):
            columns = self.columns.setdefault(structure, list(COMMON))
            rows = [*self.rows.get(structure, {}).values(), *self.listed.get(structure, [])]
            paths.append(write_structure(package, structure, columns, rows))
        return paths


def write_structure(package: Path, structure: str, columns: Sequence[str], rows: Iterable[dict[str, str]]) -> Path:
    """``<structure>.txt`` as NDA writes one: tab-delimited, a description row under the header."""
    path = package / f"{structure}.txt"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(columns) + "\n")
        fh.write("\t".join(f"Description of {c}" for c in columns) + "\n")
        for row in rows:
            fh.write("\t".join(row.get(c, "") for c in columns) + "\n")
    return path


def _real_place(mapping: NdaMap, name: str, visit: str, default: str) -> tuple[NdaColumn, bool]:
    """Where ``name`` goes: the map's first place (True), else its prefix-less name at ``visit``
    in ``default`` (or its family's structure)."""
    mapped = [c for c in mapping.candidates(name) if c.structure not in ("", "*")]
    if mapped:
        return mapped[0], True
    column = rule_places(name)[-1 if name.upper().startswith("P0") else 0].column
    structure = _family(column) if default == CLINICAL_STRUCTURE else default
    return NdaColumn(structure, column, visit), False


def write_structures(
    package: Path,
    tables: dict[str, pd.DataFrame],
    cell: Callable[[str], str],
    subject_key: Callable[[str], str],
) -> tuple[list[Path], dict[str, dict[str, str]]]:
    """Write ``tables`` (the ASCII release by lower-case file name) as the structures of a
    package with real names; ``cell`` turns an ASCII cell into an NDA one. Returns the files
    and each participant's common fields (for image03)."""
    mapping = NdaMap.default()
    enrollees = tables["enrollees.txt"]
    sex = {s: {"1": "M", "2": "F"}.get(cell(c), "") for s, c in zip(enrollees["ID"], enrollees["P02SEX"])}
    common = {s: {"subjectkey": subject_key(s), "src_subject_id": s, "sex": x} for s, x in sex.items()}
    dates, ages = _visit_facts(tables, cell)
    out = _Structures()

    def row_common(subject: str, visit: str) -> dict[str, str]:
        age = ages.get(subject)
        months = "" if age is None or visit not in _MONTHS else str(round(age * 12) + _MONTHS[visit])
        base = common.get(subject, {"src_subject_id": subject})
        return {**base, "visit": visit, "interview_date": dates.get((subject, visit), ""), "interview_age": months}

    per_subject = [("enrollees.txt", "V00", "oai_enrollee01")]
    for name in sorted(tables):
        m = re.fullmatch(r"(allclinical|subjectchar)(\d{2})\.txt", name)
        if m:
            default = CLINICAL_STRUCTURE if m.group(1) == "allclinical" else SUBJECTCHAR_STRUCTURE
            per_subject.append((name, f"V{m.group(2)}", default))
    per_subject.append(("outcomes99.txt", "V99", "oai_outcome01"))
    for name, visit, default in per_subject:
        if name in tables:
            _write_subject_table(out, mapping, (name, tables[name]), visit, default, cell, row_common)
    for name in sorted(tables):
        m = re.fullmatch(r"kxr_sq_bu(\d{2})\.txt", name)
        if m:
            _write_readings(out, mapping, tables[name], f"V{m.group(1)}", cell, row_common)
    return out.write(package), common


_MONTHS = {f"V{v:02d}": m for v, m in VISIT_MONTHS.items()}


def _visit_facts(
    tables: dict[str, pd.DataFrame], cell: Callable[[str], str]
) -> tuple[dict[tuple[str, str], str], dict[str, float]]:
    """Each participant's visit dates (MM/DD/YYYY) and baseline age in years."""
    dates: dict[tuple[str, str], str] = {}
    ages: dict[str, float] = {}
    for name, frame in tables.items():
        m = re.fullmatch(r"allclinical(\d{2})\.txt", name)
        if not m:
            continue
        visit = f"V{m.group(1)}"
        upper = {c.upper(): c for c in frame.columns}
        date = upper.get("V00EVDATE" if visit == "V00" else f"{visit}FVDATE")
        for subject, value in zip(frame["ID"], frame[date] if date else [""] * len(frame)):
            if _DATE.fullmatch(cell(value)):
                dates[(subject, visit)] = cell(value)
        if visit == "V00" and "V00AGE" in upper:
            for subject, value in zip(frame["ID"], frame[upper["V00AGE"]]):
                text = cell(value)
                if re.fullmatch(r"\d+(\.\d+)?", text):
                    ages[subject] = float(text)
    return dates, ages


def _code_to_category(mapping: NdaMap, name: str) -> dict[str, str]:
    """OAI code -> the NDA category a real package writes for it (the first one listed)."""
    out: dict[str, str] = {}
    for key, category in mapping.categories(name).items():
        if category.oai:
            out.setdefault(category.code, _CATEGORY_TEXT.get(key, key))
    return out


# how NDA writes the categories (nda_categories.csv compares them case-blind)
_CATEGORY_TEXT = {
    "m": "M",
    "f": "F",
    "white": "White",
    "black or african american": "Black or African American",
    "asian": "Asian",
    "other non-white": "Other Non-white",
    "hispanic or latino": "Hispanic or Latino",
    "not hispanic or latino": "Not Hispanic or Latino",
}


def _write_subject_table(
    out: _Structures,
    mapping: NdaMap,
    table: tuple[str, pd.DataFrame],
    visit: str,
    default: str,
    cell: Callable[[str], str],
    row_common: Callable[[str, str], dict[str, str]],
) -> None:
    table_name, frame = table
    ids = frame[next(c for c in frame.columns if c.upper() == "ID")].tolist()
    placed = []
    for name in frame.columns:
        upper = name.upper()
        if upper in ("ID", "VERSION"):
            continue
        place, mapped = _real_place(mapping, upper, visit, default)
        placed.append((name, upper, place, mapped))
    placed.sort(key=lambda p: not p[3])  # mapped places first: they keep their column
    for name, upper, place, _ in placed:
        column = place.column.lower()
        if column in COMMON and column != "interview_date":
            continue  # the common fields are written for every row
        claimed = out.claim(place.structure, visit, column, upper, table_name)
        if claimed == "same":
            continue  # the same variable in two tables (P02HISP in Enrollees and AllClinical00): the first
        if claimed == "other":
            column = upper.lower()
            if out.claim(place.structure, visit, column, upper, table_name) != "free":
                continue
        categories = _code_to_category(mapping, upper)
        for subject, value in zip(ids, frame[name].tolist()):
            text = cell(value)
            text = categories.get(text, text)
            if column == "interview_date" and not _DATE.fullmatch(text):
                text = ""
            out.row(place.structure, subject, visit, row_common(subject, visit))[column] = text


def _write_readings(
    out: _Structures,
    mapping: NdaMap,
    frame: pd.DataFrame,
    visit: str,
    cell: Callable[[str], str],
    row_common: Callable[[str, str], dict[str, str]],
) -> None:
    structure = "oai_kxrsemiquant01"
    columns = []
    for name in frame.columns:
        upper = name.upper()
        if upper in ("ID", "VERSION"):
            continue
        place, _ = _real_place(mapping, upper, visit, structure)
        out.claim(structure, visit, place.column.lower(), upper, "kxr")
        columns.append((name, place.column.lower()))
    ids = frame[next(c for c in frame.columns if c.upper() == "ID")].tolist()
    cells = {name: frame[name].tolist() for name, _ in columns}
    rows = out.listed.setdefault(structure, [])
    for i, subject in enumerate(ids):
        row = row_common(subject, visit)
        for name, column in columns:
            row[column] = cell(cells[name][i])
        rows.append(row)
