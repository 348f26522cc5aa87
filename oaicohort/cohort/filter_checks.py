"""Filter values checked against what the database holds, and why a query matched no knee.

A filter value that nothing in the database could match is a mistake, not an empty cohort: an
unknown site (``site="Q"``), a fold the split does not have, a sequence no image series has, a
text value for a variable that holds numbers. Each is refused with :class:`QueryError`, naming
the value and listing what exists, as a KL grade of 7 is. A label given where codes are stored
(``INJ@P01="Yes"``) is translated through the data dictionary into its code, or refused with the
codes listed.

A valid query may still match no knee; :func:`why_empty` then says which filter removed the last
ones (the filters applied one by one, in the order given).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from oaicohort.cohort.filters import check_value, is_range, sequence_items
from oaicohort.cohort.variables import QueryError, VariableRef, load_dictionary
from oaicohort.db.schema import ClinicalValue, ImageSeries, SplitAssignment, Subject

# builds the knee query of some of the filters: (column filters, variable filters) -> SELECT
KneeQuery = Callable[[dict[str, Any], list[tuple[VariableRef, Any]]], Select[Any]]


def _values(value: Any) -> list[Any]:
    """The single values of a scalar or list filter (a range or None checks nothing here)."""
    if value is None or is_range(value):
        return []
    items = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    return [v for v in items if v is not None]


def _listed(values: list[Any], limit: int = 20) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return (shown + f" ... ({len(values)} in all)") if len(values) > limit else shown or "none"


def _suggest(value: str, known: list[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_against_database(session: Session, filters: dict[str, Any], split_id: int | None) -> None:
    """Refuse a ``site``, ``fold`` or ``has_sequence`` value that nothing in the database has."""
    if "site" in filters:
        known = sorted(s for s in session.execute(select(Subject.site).distinct()).scalars() if s is not None)
        for value in _values(filters["site"]):
            site = check_value("site", "text", value)
            if site not in known:
                raise QueryError(
                    f"filter site={value!r}: no subject has this site; sites in the database: {_listed(known)}"
                )
    if "fold" in filters and split_id is not None:
        folds = session.execute(
            select(SplitAssignment.fold).where(SplitAssignment.split_id == split_id).distinct()
        ).scalars()
        known_folds = sorted(f for f in folds if f is not None)
        for value in _values(filters["fold"]):
            if check_value("fold", "int", value) not in known_folds:
                raise QueryError(f"filter fold={value!r}: split {split_id} has folds {_listed(known_folds)}")
    if "has_sequence" in filters:
        items = sequence_items(filters["has_sequence"])
        indexed = session.execute(select(ImageSeries.sequence, ImageSeries.visit).distinct()).all()
        visits: dict[str, list[int]] = {}
        for sequence, visit in indexed:
            visits.setdefault(sequence, []).append(int(visit))
        for sequence, visit in items:
            if not visits:
                raise QueryError(
                    f"filter has_sequence={sequence!r}: the database indexes no image series "
                    "(the ingest found no image index: contents.csv or image03.txt)"
                )
            if sequence not in visits:
                raise QueryError(
                    f"filter has_sequence={sequence!r}: no indexed image series has this sequence"
                    f"{_suggest(sequence, sorted(visits))}; sequences: {_listed(sorted(visits))}"
                )
            if visit not in visits[sequence]:
                raise QueryError(
                    f"filter has_sequence=({sequence!r}, {visit}): no {sequence} series of visit {visit} is "
                    f"indexed; visits with one: {_listed(sorted(visits[sequence]))}"
                )


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _variable_value(session: Session, ref: VariableRef, value: str) -> Any:
    """A text value of variable filter ``ref``: kept when stored as such, a dictionary label
    translated to its code, else refused naming what the variable holds."""
    sources = list(ref.sources)
    rows = ClinicalValue.variable.in_(sources)
    if session.execute(select(ClinicalValue.id).where(rows, ClinicalValue.value_text == value).limit(1)).first():
        return value
    dictionary = load_dictionary(session, sources)
    wanted = value.strip().casefold()
    codes = sorted(
        {c for c, label in zip(dictionary["code"], dictionary["label"]) if str(label).strip().casefold() == wanted},
        key=str,
    )
    numbers = [n for n in (_number(str(c)) for c in codes) if n is not None]
    if numbers:
        return numbers[0] if len(numbers) == 1 else numbers
    if not dictionary.empty:
        pairs = dictionary.drop_duplicates("code")
        listed = [f"{c} ({label})" for c, label in zip(pairs["code"], pairs["label"])]
        raise QueryError(
            f"filter {ref.name}={value!r}: not a code or label of {'/'.join(sources)}; its codes: {_listed(listed)}"
        )
    as_number = _number(value)
    text_only = session.execute(
        select(func.count()).where(
            rows,
            ClinicalValue.value_num.is_(None),
            ClinicalValue.missing_code.is_(None),
            ClinicalValue.value_text.is_not(None),
        )
    ).scalar_one()
    numbers_held = session.execute(select(func.count(ClinicalValue.value_num)).where(rows)).scalar_one()
    if not text_only and numbers_held:
        if as_number is not None:
            return as_number
        raise QueryError(
            f"filter {ref.name}={value!r}: expected a number (the values of {'/'.join(sources)} are numbers)"
        )
    return value


def check_variable_values(
    session: Session, var_filters: list[tuple[VariableRef, Any]]
) -> list[tuple[VariableRef, Any]]:
    """``var_filters`` with each text value checked against what its variable holds (see the module doc)."""
    out = []
    for ref, value in var_filters:
        if isinstance(value, str):
            value = _variable_value(session, ref, value)
        elif isinstance(value, (list, set, frozenset)):
            checked: list[Any] = []
            for v in value:
                found = _variable_value(session, ref, v) if isinstance(v, str) else v
                checked.extend(found if isinstance(found, list) else [found])
            value = checked
        out.append((ref, value))
    return out


def _shown(value: Any) -> str:
    return "missing" if value is None else repr(value)


def why_empty(
    session: Session,
    build: KneeQuery,
    filters: dict[str, Any],
    var_filters: list[tuple[VariableRef, Any]],
    definition: str,
    include_excluded: bool,
) -> str:
    """Why the query of ``filters`` and ``var_filters`` matched no knee: the knees before any
    filter, then the filters one by one until the one that removed the last knees."""

    def count(f: dict[str, Any], v: list[tuple[VariableRef, Any]]) -> int:
        return int(session.execute(select(func.count()).select_from(build(f, v).subquery())).scalar_one())

    which = "labelled" if include_excluded else "included"
    left = count({}, [])
    if left == 0:
        return f"0 knees: definition {definition!r} has no {which} knees" + (
            "" if include_excluded else " (every labelled knee is excluded; see `oai label`)"
        )
    steps: list[tuple[str, Any, VariableRef | None]] = [(n, v, None) for n, v in filters.items()]
    steps += [(ref.name, v, ref) for ref, v in var_filters if v is not ...]  # a bare name adds a column
    applied: dict[str, Any] = {}
    applied_vars: list[tuple[VariableRef, Any]] = []
    said = [f"definition {definition!r} has {left} {which} knees"]
    for name, value, ref in steps:
        if ref is None:
            applied[name] = value
        else:
            applied_vars.append((ref, value))
        left = count(applied, applied_vars)
        said.append(f"{name}={_shown(value)} leaves {left}")
        if left == 0:
            return "0 knees: " + "; ".join(said) + " (this filter removed the last ones)"
    return "0 knees: " + "; ".join(said)


__all__ = ["check_against_database", "check_variable_values", "why_empty"]
