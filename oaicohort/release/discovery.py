"""Finding the OAI files below a release root: which file is which table, of which visit.

Either folder layout of OAI_FORMATS.md, any file-name case, any depth; image visit dirs
(``00m``) name the visit of the ``contents.csv`` inside them.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from oaicohort.errors import InputFileError
from oaicohort.visits import VISIT_MONTHS

log = logging.getLogger(__name__)


ENROLLEES = "enrollees"
ALLCLINICAL = "allclinical"
SUBJECTCHAR = "subjectchar"
OUTCOMES = "outcomes"
KXR_SQ_BU = "kxr_sq_bu"
CONTENTS = "contents"

# lower-cased file name -> kind; the group, when present, is the visit code
_FILE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"enrollees\.txt"), ENROLLEES),
    (re.compile(r"allclinical(\d{2})\.txt"), ALLCLINICAL),
    (re.compile(r"subjectchar(\d{2})\.txt"), SUBJECTCHAR),
    (re.compile(r"outcomes99\.txt"), OUTCOMES),
    (re.compile(r"kxr_sq_bu(\d{2})\.txt"), KXR_SQ_BU),
    (re.compile(r"contents\.csv"), CONTENTS),
)
_SKIPPED_DIRS = {"__macosx"}
_VISIT_DIR = re.compile(r"(\d{1,3})m", re.IGNORECASE)


@dataclass(frozen=True)
class SourceFile:
    """One OAI file found below a release root."""

    path: Path
    relative_path: str  # POSIX path relative to the root, as recorded in ingest provenance
    kind: str  # enrollees | allclinical | subjectchar | outcomes | kxr_sq_bu | contents
    visit: int | None  # OAI visit code from the file name (or the image visit dir)


def classify(name: str) -> tuple[str, int | None] | None:
    """Kind and visit code of an OAI file name (case-insensitive), or None for other files."""
    lower = name.lower()
    for pattern, kind in _FILE_PATTERNS:
        m = pattern.fullmatch(lower)
        if m:
            return kind, int(m.group(1)) if m.groups() else None
    return None


def visit_of_dir(name: str) -> int | None:
    """Visit code of an image package visit dir such as ``00m`` or ``96m``."""
    m = _VISIT_DIR.fullmatch(name)
    if not m:
        return None
    month = int(m.group(1))
    return next((v for v, mo in VISIT_MONTHS.items() if mo == month), None)


def discover_release(root: Path | str) -> list[SourceFile]:
    """Every OAI table and image index below ``root`` (any depth, any layout), sorted by path.

    A clinical table found twice (say a flat and a per-category copy side by side) is an error:
    silently picking one would make the ingest depend on directory order. ``contents.csv`` may
    occur many times per visit, because image packages split a visit over several folders.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise InputFileError(root_path, "no such directory (the OAI release root)")
    if not root_path.is_dir():
        raise InputFileError(root_path, "not a directory; give the folder that holds the OAI release")
    found: list[SourceFile] = []

    def walk_error(err: OSError) -> None:
        raise InputFileError(err.filename or root_path, f"cannot list directory: {err.strerror}")

    # image packages are often linked in from other disks, so links are followed, once each
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root_path, onerror=walk_error, followlinks=True):
        visited.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d.lower() not in _SKIPPED_DIRS
            and os.path.realpath(os.path.join(dirpath, d)) not in visited
        )
        for name in sorted(filenames):
            kind_visit = classify(name)
            if kind_visit is None:
                continue
            kind, visit = kind_visit
            path = Path(dirpath) / name
            if kind == CONTENTS:
                visit = visit_of_dir(Path(dirpath).name)
            elif visit is not None and visit not in VISIT_MONTHS:
                log.warning("%s: visit %02d is not an OAI visit this toolkit knows; skipped", path, visit)
                continue
            found.append(SourceFile(path, path.relative_to(root_path).as_posix(), kind, visit))
    found.sort(key=lambda f: f.relative_path)
    seen: dict[tuple[str, int | None], SourceFile] = {}
    for f in found:
        if f.kind == CONTENTS:
            continue
        other = seen.get((f.kind, f.visit))
        if other is not None:
            raise InputFileError(
                f.path,
                f"the release holds this table twice (also {other.relative_path}); point ROOT at one release",
            )
        seen[(f.kind, f.visit)] = f
    return found
