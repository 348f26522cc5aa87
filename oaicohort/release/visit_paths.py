"""What image folder names and release codes tell about the visit of the series below them.

Image packages name their visit in folder names (``00m``, ``OAI_18m``, ``OAIBaselineImages``,
``OAI96MonthImages``; the screening package ``P001`` / ``OAIScreeningImages``) and in the release
code that starts each series' path (``0.C.2``: baseline; OAI_FORMATS.md and OAI_DISTRIBUTIONS.md
sections 3 and 5). A ``StudyDescription`` containing ``^SCREENING^`` names the screening visit.
Used by discovery, the image index readers and the image scan alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from oaicohort.visits import SCREENING_VISIT, VISIT_MONTHS

# image visit folders: 00m, OAI_00m, OAI00m; OAIBaselineImages, OAI96MonthImages
_VISIT_DIR = re.compile(r"(?:oai[_ -]?)?(\d{1,3})m|oai(\d{1,3})monthimages?", re.IGNORECASE)
_BASELINE_DIR = re.compile(r"oai[_ -]?baselineimages?", re.IGNORECASE)
# the screening package (P01): P001, OAIScreeningImages (OAI_DISTRIBUTIONS.md section 5)
_SCREENING_DIR = re.compile(r"p0*1|oai[_ -]?screeningimages?", re.IGNORECASE)
# a StudyDescription of the screening visit: OAI^XR^SCREENING^..., padding allowed
_SCREENING_STUDY = re.compile(r"(^|\^)\s*SCREENING\s*(\^|$)", re.IGNORECASE)

# Image release codes (OAI_FORMATS.md, OAI_DISTRIBUTIONS.md section 3) -> visit code
RELEASE_CODES: dict[str, int] = {
    "0.C.1": 0,
    "0.C.2": 0,
    "0.E.1": 0,
    "0.E.2": 0,
    "1.C.2": 1,
    "1.E.1": 1,
    "2.D.2": 2,
    "3.C.2": 3,
    "3.E.1": 3,
    "4.G.1": 4,
    "5.C.1": 5,
    "5.E.1": 5,
    "6.C.1": 6,
    "6.E.1": 6,
    "8.C.1": 8,
    "8.E.1": 8,
    "10.C.1": 10,
    "10.E.1": 10,
}
_CODE = re.compile(r"(\d{1,2})\.?([A-Za-z])\.?(\d{1,2})")


def is_release_code(name: str) -> bool:
    """Whether a folder name has the form of an image release code (``0.C.2``, ``0E1``), known or not."""
    return _CODE.fullmatch(name.strip()) is not None


def release_visit(code: str) -> int | None:
    """Visit of an image release code (``0.C.2``, ``0E1``, ``2.D.2``), None for an unknown one."""
    m = _CODE.fullmatch(code.strip())
    if not m:
        return None
    return RELEASE_CODES.get(f"{int(m.group(1))}.{m.group(2).upper()}.{int(m.group(3))}")


def is_screening_study(description: str | None) -> bool:
    """Whether a StudyDescription names the screening visit (``OAI^XR^SCREENING^...``)."""
    return bool(description) and _SCREENING_STUDY.search(description or "") is not None


def visit_of_dir(name: str) -> int | None:
    """Visit code of an image package visit dir: ``00m``, ``96m``, ``OAI_00m``, ``OAIBaselineImages``;
    ``P001`` and ``OAIScreeningImages`` are the screening visit (``SCREENING_VISIT``)."""
    if _SCREENING_DIR.fullmatch(name):
        return SCREENING_VISIT
    if _BASELINE_DIR.fullmatch(name):
        return 0
    m = _VISIT_DIR.fullmatch(name)
    if not m:
        return None
    month = int(m.group(1) or m.group(2))
    return next((v for v, mo in VISIT_MONTHS.items() if mo == month), None)


def visit_of_dirs(parts: Sequence[str]) -> int | None:
    """The visit named by the enclosing folders: the screening visit when any of them is the
    screening package (its radiographs sit below ``00m``-like folders too), else the nearest
    visit folder (``OAIBaselineImages/results/x``)."""
    if any(_SCREENING_DIR.fullmatch(part) for part in parts):
        return SCREENING_VISIT
    for part in reversed(parts):
        visit = visit_of_dir(part)
        if visit is not None:
            return visit
    return None
