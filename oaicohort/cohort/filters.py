"""Cohort filters as SQL: validating a filter's values and turning them into WHERE clauses.

Used by :class:`oaicohort.cohort.query.Cohort`: a scalar means equality, a list any of its
values, a ``(lo, hi)`` tuple an inclusive range (either end ``None``), ``None`` "missing".
Every value reaches the database as a bound parameter.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_

from oaicohort.cohort.variables import QueryError
from oaicohort.db.schema import ImageSeries, Knee
from oaicohort.db.text import text_problem
from oaicohort.visits import VISIT_MONTHS
from oaicohort.vocabulary import CLASSES, ROLES


def check_storable(name: str, value: str) -> None:
    """A text filter value holding what no database can compare (a NUL) is refused here, the
    same on SQLite and PostgreSQL (PostgreSQL's driver would refuse it with its own error)."""
    problem = text_problem(value)
    if problem is not None:
        raise QueryError(f"filter {name}={value!r}: {problem}")


def is_range(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2


def check_value(name: str, kind: str, value: Any) -> Any:
    """Validate (and normalise) one scalar filter value; raise QueryError naming the filter."""
    if value is None:
        return None
    bad = QueryError(
        f"filter {name}={value!r}: "
        + {
            "int": "expected an integer",
            "number": "expected a number",
            "klg": "expected a KL grade 0-4",
            "label": f"expected one of {list(CLASSES)}",
            "role": f"expected one of {list(ROLES)}",
            "sex": "expected 'F' or 'M' (female/male)",
            "side": "expected 'R' or 'L'",
            "text": "expected a string",
        }[kind]
    )
    if kind in ("int", "klg"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad
        if kind == "klg" and int(value) not in range(5):
            raise bad
        return int(value)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise bad
        return float(value)
    if not isinstance(value, str):
        raise bad
    check_storable(name, value)
    if kind == "sex":
        norm = {"f": "F", "female": "F", "m": "M", "male": "M"}.get(value.strip().lower())
        if norm is None:
            raise bad
        return norm
    if kind == "side":
        norm = {"r": "R", "right": "R", "l": "L", "left": "L"}.get(value.strip().lower())
        if norm is None:
            raise bad
        return norm
    if kind == "label" and value not in CLASSES:
        raise bad
    if kind == "role" and value not in ROLES:
        raise bad
    if kind == "text" and name == "site":
        return value.strip().upper()
    return value


def range_ends(name: str, value: tuple[Any, Any]) -> tuple[float | None, float | None]:
    """The checked ends of a ``(lo, hi)`` range; one with ``lo > hi`` holds nothing and is refused
    (it would match no knee without a word)."""
    lo, hi = (check_value(name, "number", v) for v in value)
    if lo is not None and hi is not None and lo > hi:
        raise QueryError(f"filter {name}=({lo:g}, {hi:g}): an empty range (the low end is above the high end)")
    return lo, hi


def condition(name: str, column: Any, kind: str, value: Any) -> ColumnElement[bool]:
    """The WHERE clause of one filter: scalar, list (any of), (lo, hi) range or None."""
    if is_range(value) and kind in ("int", "number", "klg"):
        lo, hi = range_ends(name, value)
        parts = [
            c
            for c in (column >= lo if lo is not None else None, column <= hi if hi is not None else None)
            if c is not None
        ]
        return and_(column.is_not(None), *parts)
    if isinstance(value, (list, tuple, set, frozenset)):
        values = [check_value(name, kind, v) for v in value]
        if not values:
            return false()
        present = [v for v in values if v is not None]
        parts = [column.in_(present)] if present else []
        if len(present) != len(values):
            parts.append(column.is_(None))
        return or_(*parts)
    checked = check_value(name, kind, value)
    return column.is_(None) if checked is None else column == checked


def sequence_items(value: Any) -> list[tuple[str, int]]:
    """``has_sequence`` as (sequence, visit) pairs: "SEQ" (baseline), ("SEQ", visit), or a list
    of those (any of)."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            sequence, visit = item, 0
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            sequence, visit = item
        else:
            raise QueryError(
                f"filter has_sequence={value!r}: expected 'SEQUENCE', ('SEQUENCE', visit) or a list "
                "of those, e.g. ('SAG_3D_DESS', 0)"
            )
        if isinstance(visit, bool) or not isinstance(visit, int) or visit not in VISIT_MONTHS:
            raise QueryError(f"filter has_sequence: visit {visit!r} is not an OAI visit code {sorted(VISIT_MONTHS)}")
        check_storable("has_sequence", sequence)
        out.append((sequence.strip(), visit))
    return out


def sequence_condition(value: Any) -> ColumnElement[bool]:
    """``has_sequence``: "SEQ" (baseline), ("SEQ", visit), or a list of those (any of)."""
    parts = [
        exists().where(
            ImageSeries.subject_id == Knee.subject_id,
            ImageSeries.side == Knee.side,
            ImageSeries.sequence == sequence,
            ImageSeries.visit == visit,
        )
        for sequence, visit in sequence_items(value)
    ]
    return or_(*parts) if parts else false()


__all__ = ["check_value", "condition", "is_range", "range_ends", "sequence_condition", "sequence_items"]


def variable_condition(name: str, cv: Any, value: Any) -> ColumnElement[bool]:
    """A clinical-variable filter on the aliased ``clinical_values`` row ``cv``: numbers and
    strings compare with the numeric or text value, a range is numeric, ``None`` is missing
    (no row, or a row holding an OAI missing code)."""
    if value is None:
        return or_(cv.id.is_(None), cv.missing_code.is_not(None))
    if is_range(value):
        return condition(name, cv.value_num, "number", value)
    values = value if isinstance(value, (list, set, frozenset)) else [value]
    parts: list[ColumnElement[bool]] = []
    for v in values:
        if v is None:
            parts.append(or_(cv.id.is_(None), cv.missing_code.is_not(None)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(cv.value_num == float(v))
        elif isinstance(v, str):
            check_storable(name, v)
            parts.append(cv.value_text == v)
        else:
            raise QueryError(f"filter {name}={value!r}: expected numbers, strings, a (lo, hi) range or None")
    return or_(*parts) if parts else false()
