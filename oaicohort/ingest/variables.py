"""``--variables``: which further OAI variables to store, and the release file each is read from."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from oaicohort.errors import InputFileError, OAIError
from oaicohort.release.discovery import ALLCLINICAL, ENROLLEES, NDA_STRUCTURE, SUBJECTCHAR, SourceFile
from oaicohort.release.nda import locate_variables as locate_nda_variables
from oaicohort.release.nda_map import NDA_VARIABLE, NdaColumn, NdaMap, parse_nda_variable
from oaicohort.release.text import read_header

# files searched for --variables, in this order
VARIABLE_KINDS = (ENROLLEES, SUBJECTCHAR, ALLCLINICAL)
# an OAI variable (V00WOMKPR), or a column of an NDA package named as structure.column@V00
_VARIABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*|" + NDA_VARIABLE.pattern)


def parse_variables(text: str, *, source: Path | None = None, line: int | None = None) -> list[str]:
    """``"V00WOMKPR, P01INJR"`` -> ``["V00WOMKPR", "P01INJR"]`` (upper case, order kept, no repeats).

    An NDA package's column can be named ``structure.column@V00`` (stored under that name)."""
    names: list[str] = []
    for token in re.split(r"[\s,;]+", text.strip()):
        if not token:
            continue
        if not _VARIABLE_NAME.fullmatch(token):
            message = (
                f"{token!r} is not an OAI variable name (letters, digits, underscore) "
                "or an NDA column (structure.column@V00)"
            )
            if source is not None:
                raise InputFileError(source, message, line=line)
            raise OAIError(f"--variables: {message}")
        if token.upper() not in names:
            names.append(token.upper())
    return names


def read_variables_file(path: Path | str) -> list[str]:
    """Variable names from a text file: separated by commas or white space, ``#`` starts a comment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # a BOM, as Windows editors write
    except OSError as exc:
        raise InputFileError(path, f"cannot read variables file: {exc.strerror or exc}") from None
    names: list[str] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        for name in parse_variables(raw_line.split("#", 1)[0], source=path, line=number):
            if name not in names:
                names.append(name)
    return names


@dataclass
class LocatedVariables:
    """Where each requested variable is read: a classic table (by name) or an NDA structure column."""

    files: dict[str, SourceFile] = field(default_factory=dict)
    nda: dict[str, tuple[SourceFile, NdaColumn]] = field(default_factory=dict)
    nda_map: NdaMap | None = None


def nda_map_for(sources: Sequence[SourceFile], root: Path | None = None) -> NdaMap:
    """The NDA variable map of a package: the shipped one plus the package's ``oai_nda_map.csv``."""
    folders = sorted({s.path.parent for s in sources if s.kind == NDA_STRUCTURE and s.member is None})
    return NdaMap.for_package([*folders, *([root] if root is not None and root.is_dir() else [])])


def locate_variables(
    sources: Sequence[SourceFile], variables: Sequence[str], root: Path | None = None
) -> LocatedVariables:
    """The file each requested variable is read from: the first Enrollees, SubjectChar or
    AllClinical file (in ``VARIABLE_KINDS`` order) holding it, or, for an NDA package, the
    structure column the NDA variable map or ``structure.column@visit`` names.

    Only header lines are read. A variable found nowhere is an error naming it.
    """
    out = LocatedVariables()
    structures = [s for s in sources if s.kind == NDA_STRUCTURE]
    if structures:
        out.nda_map = nda_map_for(sources, root)
        if not any(s.kind in VARIABLE_KINDS for s in sources):
            out.nda = locate_nda_variables(structures, [v.upper() for v in variables], out.nda_map)
            return out
    order = {kind: i for i, kind in enumerate(VARIABLE_KINDS)}
    candidates = sorted(
        (s for s in sources if s.kind in order),
        key=lambda s: (order[s.kind], s.visit or 0, s.relative_path),
    )
    remaining = [v.upper() for v in variables]
    nda_named = [v for v in remaining if parse_nda_variable(v) is not None]
    if nda_named:
        raise OAIError(
            f"variable(s) {', '.join(nda_named)} name NDA structure columns, but this release is not an NDA "
            "package; give OAI variable names (e.g. V00WOMKPR)"
        )
    for source in candidates:
        if not remaining:
            break
        header = set(read_header(source))
        for name in [v for v in remaining if v in header]:
            out.files[name] = source
            remaining.remove(name)
    if remaining:
        raise OAIError(
            f"variable(s) {', '.join(remaining)} not found in any Enrollees, SubjectChar or "
            f"AllClinical file ({len(candidates)} searched)"
        )
    return out
