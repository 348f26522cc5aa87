"""``--variables``: which further OAI variables to store, and the release file each is read from."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from oaicohort.errors import InputFileError, OAIError
from oaicohort.release.discovery import ALLCLINICAL, ENROLLEES, SUBJECTCHAR, SourceFile
from oaicohort.release.text import read_header

# files searched for --variables, in this order
VARIABLE_KINDS = (ENROLLEES, SUBJECTCHAR, ALLCLINICAL)
_VARIABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def parse_variables(text: str, *, source: Path | None = None, line: int | None = None) -> list[str]:
    """``"V00WOMKPR, P01INJR"`` -> ``["V00WOMKPR", "P01INJR"]`` (upper case, order kept, no repeats)."""
    names: list[str] = []
    for token in re.split(r"[\s,;]+", text.strip()):
        if not token:
            continue
        if not _VARIABLE_NAME.fullmatch(token):
            message = f"{token!r} is not an OAI variable name (letters, digits, underscore)"
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
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputFileError(path, f"cannot read variables file: {exc.strerror or exc}") from None
    names: list[str] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        for name in parse_variables(raw_line.split("#", 1)[0], source=path, line=number):
            if name not in names:
                names.append(name)
    return names


def locate_variables(sources: Sequence[SourceFile], variables: Sequence[str]) -> dict[str, SourceFile]:
    """The file each requested variable is read from (the first in ``VARIABLE_KINDS`` order).

    Only header lines are read. A variable found nowhere is an error naming it.
    """
    order = {kind: i for i, kind in enumerate(VARIABLE_KINDS)}
    candidates = sorted(
        (s for s in sources if s.kind in order),
        key=lambda s: (order[s.kind], s.visit or 0, s.relative_path),
    )
    located: dict[str, SourceFile] = {}
    remaining = [v.upper() for v in variables]
    for source in candidates:
        if not remaining:
            break
        header = set(read_header(source))
        for name in [v for v in remaining if v in header]:
            located[name] = source
            remaining.remove(name)
    if remaining:
        raise OAIError(
            f"variable(s) {', '.join(remaining)} not found in any Enrollees, SubjectChar or "
            f"AllClinical file ({len(candidates)} searched)"
        )
    return located
