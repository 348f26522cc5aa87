"""OAI visit codes (the ``vv`` of ``V{vv}``), their months, and image-package folder names.

The screening visit ``P01`` (before enrolment) has no ``V{vv}`` code: it is ``SCREENING_VISIT``
(-1), kept out of ``VISIT_MONTHS`` because no clinical table or X-ray reading file belongs to it.
Image series can: many participants' baseline radiographs are in the screening package (``P001``).
"""

from __future__ import annotations

from oaicohort.errors import OAIError

# vv -> months since enrolment (OAI_FORMATS.md, "Visits")
VISIT_MONTHS: dict[int, int] = {
    0: 0,
    1: 12,
    2: 18,
    3: 24,
    4: 30,
    5: 36,
    6: 48,
    7: 60,
    8: 72,
    9: 84,
    10: 96,
    11: 108,
}
MONTH_VISITS: dict[int, int] = {m: v for v, m in VISIT_MONTHS.items()}
SCREENING_VISIT = -1
"""``P01``: the screening visit, before enrolment (image series only; month 0)."""
# visits with central X-ray KL readings (kXR_SQ_BU{vv})
XRAY_VISITS: tuple[int, ...] = (0, 1, 3, 5, 6, 8, 10)
# image package release codes (first component) -> visit code, e.g. "0.C.2" -> 0
RELEASE_VISITS: dict[str, int] = {"0": 0, "1": 1, "3": 3, "5": 5, "6": 6, "8": 8, "10": 10}


def visit_month(visit: int) -> int:
    """Months since enrolment of an OAI visit code (the screening visit: 0)."""
    if visit == SCREENING_VISIT:
        return 0
    try:
        return VISIT_MONTHS[visit]
    except KeyError:
        raise OAIError(f"unknown OAI visit code {visit!r}; known: {sorted(VISIT_MONTHS)}") from None


def month_visit(month: int) -> int:
    """OAI visit code of a month since enrolment (e.g. 96 -> 10)."""
    try:
        return MONTH_VISITS[month]
    except KeyError:
        raise OAIError(f"no OAI visit at month {month!r}; known: {sorted(MONTH_VISITS)}") from None


def visit_dir_name(visit: int) -> str:
    """Image package folder of a visit, e.g. 0 -> ``00m``, 10 -> ``96m``, screening -> ``P001``."""
    if visit == SCREENING_VISIT:
        return "P001"
    return f"{visit_month(visit):02d}m"


def visit_name(visit: int) -> str:
    """How the OAI writes a visit: ``V00`` ... ``V11``, ``P01`` for screening."""
    return "P01" if visit == SCREENING_VISIT else f"V{visit:02d}"
