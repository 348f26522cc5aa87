"""Cohort queries for new studies, in the spirit of PyBIDS ``layout.get(**filters)``.

>>> cohort = Cohort(db)
>>> cohort.knees(site=["A", "B"], sex="F", age=(50, 70), label=["fast", "slow"], role="train")
>>> cohort.knees(kl_baseline=[0, 1], has_sequence=("SAG_3D_DESS", 0), V00WOMKPR=(0, 4))
>>> cohort.trajectories(label="fast", wide=True)

Filters are keyword arguments named after the domain; a list means any of its values, a
``(lo, hi)`` tuple an inclusive range of a numeric column (either end may be ``None``), ``None``
means "missing". Any clinical variable ingested with ``oai ingest --variables`` is a filter too,
by its OAI name (``V00WOMKPR=(0, 4)``, or ``variables={"V00WOMKPR": (0, 4)}``), and becomes a
column of the result; ``variables=["P01INJR"]`` adds columns without filtering. An unknown filter
name raises :class:`QueryError` listing the valid ones. Every value reaches the database as a
bound parameter.

Rows are knees with a label row under ``definition`` (the latest derived labels of that name by
default), only included knees unless ``include_excluded=True``; ``role``/``fold`` come from
``split`` (default: the newest split made from the current labels; ``None``: no split columns).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import ColumnElement, Select, and_, exists, false, literal, null, or_, select
from sqlalchemy.orm import aliased

from oaicohort.cohort.definitions import LabelDefinitionParams
from oaicohort.cohort.export import variable_column
from oaicohort.cohort.labels import (
    first_readings,
    labels_fingerprint,
    read_frame,
    stored_definition,
    stored_labels,
)
from oaicohort.cohort.splits import latest_split
from oaicohort.db import Database
from oaicohort.db.schema import (
    ClinicalValue,
    ImageSeries,
    Knee,
    KneeLabel,
    Split,
    SplitAssignment,
    Subject,
    SubjectVisit,
    XrayReading,
)
from oaicohort.errors import DatabaseStateError, OAIError
from oaicohort.visits import VISIT_MONTHS
from oaicohort.vocabulary import CLASSES, DEFAULT_DEFINITION, ROLES

log = logging.getLogger(__name__)

KNEE_COLUMNS = (
    "knee_id",
    "subject_id",
    "side",
    "site",
    "sex",
    "age",
    "bmi",
    "kl_baseline",
    "label",
    "exclusion",
    "progression_month",
    "kl_increase",
    "role",
    "fold",
)
INT_COLUMNS = ("kl_baseline", "progression_month", "kl_increase", "fold")
TRAJECTORY_COLUMNS = (
    "knee_id",
    "subject_id",
    "side",
    "label",
    "exclusion",
    "visit",
    "month",
    "klg",
    "klg_missing_code",
    "read_project",
    "source_row",
)

# filter name -> (column, kind); kind decides which values are valid
_COLUMNS: dict[str, tuple[Any, str]] = {
    "knee_id": (Knee.id, "int"),
    "subject_id": (Knee.subject_id, "int"),
    "side": (Knee.side, "side"),
    "site": (Subject.site, "text"),
    "sex": (Subject.sex, "sex"),
    "age": (SubjectVisit.age, "number"),
    "bmi": (SubjectVisit.bmi, "number"),
    "kl_baseline": (KneeLabel.kl_baseline, "klg"),
    "label": (KneeLabel.label, "label"),
    "exclusion": (KneeLabel.exclusion, "text"),
    "progression_month": (KneeLabel.progression_month, "int"),
    "kl_increase": (KneeLabel.kl_increase, "int"),
    "role": (SplitAssignment.role, "role"),
    "fold": (SplitAssignment.fold, "int"),
}
SPECIAL_FILTERS = ("has_sequence", "variables")
# up to this many knees, trajectories are read with WHERE knee_id IN (...); beyond, all readings
_IN_LIST_MAX = 2000
OPTIONS = ("definition", "split", "include_excluded")
FILTERS = (*_COLUMNS, *SPECIAL_FILTERS)


class QueryError(OAIError):
    """A cohort query names an unknown filter or gives a filter a value it cannot take."""


@dataclass(frozen=True)
class _Resolved:
    definition_id: int
    definition: str
    params_hash: str
    split_id: int | None
    split_params: dict[str, Any] | None


def _is_range(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2


def _check_value(name: str, kind: str, value: Any) -> Any:
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


def _condition(name: str, column: Any, kind: str, value: Any) -> ColumnElement[bool]:
    """The WHERE clause of one filter: scalar, list (any of), (lo, hi) range or None."""
    if _is_range(value) and kind in ("int", "number", "klg"):
        lo, hi = (_check_value(name, "number", v) for v in value)
        parts = [
            c
            for c in (column >= lo if lo is not None else None, column <= hi if hi is not None else None)
            if c is not None
        ]
        return and_(column.is_not(None), *parts)
    if isinstance(value, (list, tuple, set, frozenset)):
        values = [_check_value(name, kind, v) for v in value]
        if not values:
            return false()
        present = [v for v in values if v is not None]
        parts = [column.in_(present)] if present else []
        if len(present) != len(values):
            parts.append(column.is_(None))
        return or_(*parts)
    checked = _check_value(name, kind, value)
    return column.is_(None) if checked is None else column == checked


def _sequence_condition(value: Any) -> ColumnElement[bool]:
    """``has_sequence``: "SEQ" (baseline), ("SEQ", visit), or a list of those (any of)."""
    items = value if isinstance(value, list) else [value]
    parts = []
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
        parts.append(
            exists().where(
                ImageSeries.subject_id == Knee.subject_id,
                ImageSeries.side == Knee.side,
                ImageSeries.sequence == sequence.strip(),
                ImageSeries.visit == visit,
            )
        )
    return or_(*parts) if parts else false()


class Cohort:
    """Query the knees of the cohort database (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------------------- discovery

    def variables(self) -> list[str]:
        """Names of the clinical variables ingested by name (``oai ingest --variables``)."""
        with self.db.read() as session:
            return sorted(session.execute(select(ClinicalValue.variable).distinct()).scalars())

    def definitions(self) -> pd.DataFrame:
        """Stored label definitions: id, name, params_hash, created_at."""
        from oaicohort.db.schema import LabelDefinition

        with self.db.read() as session:
            rows = session.execute(
                select(
                    LabelDefinition.id, LabelDefinition.name, LabelDefinition.params_hash, LabelDefinition.created_at
                ).order_by(LabelDefinition.id)
            ).all()
        return pd.DataFrame.from_records(rows, columns=["id", "name", "params_hash", "created_at"])

    # ----------------------------------------------------------------------- knees

    def knees(
        self,
        *,
        definition: str | int | LabelDefinitionParams = DEFAULT_DEFINITION,
        split: int | str | None = "latest",
        include_excluded: bool = False,
        variables: Mapping[str, Any] | Sequence[str] | None = None,
        **filters: Any,
    ) -> pd.DataFrame:
        """Knees matching every filter, one row each, sorted by subject and side.

        Columns: :data:`KNEE_COLUMNS` plus one per requested clinical variable. ``df.attrs``
        holds the definition (name, id, params hash) and split (id, params) used.
        """
        var_filters = self._variable_filters(variables, filters)
        with self.db.read() as session:
            resolved = self._resolve(session, definition, split)
            if resolved.split_id is None and ({"role", "fold"} & set(filters)):
                raise DatabaseStateError(
                    f"filters role/fold need a split of definition {resolved.definition!r}: "
                    f"run `oai split --definition {resolved.definition}` first"
                )
            stmt = self._knee_select(resolved, include_excluded, filters, var_filters)
            columns = [*KNEE_COLUMNS, *[f"_var{i}_{part}" for i in range(len(var_filters)) for part in ("num", "text")]]
            frame = read_frame(session, stmt, columns)
        for col in INT_COLUMNS:
            frame[col] = frame[col].astype("Int64")
        for col in ("age", "bmi"):
            frame[col] = frame[col].astype(float)
        for i, name in enumerate(var_filters):
            num, text = frame.pop(f"_var{i}_num"), frame.pop(f"_var{i}_text")
            frame[name] = variable_column(num, text)  # numbers, text, or both (a mixed column)
        frame.attrs.update(
            definition=resolved.definition,
            definition_id=resolved.definition_id,
            params_hash=resolved.params_hash,
            split_id=resolved.split_id,
            split_params=resolved.split_params,
        )
        return frame

    def _variable_filters(
        self, variables: Mapping[str, Any] | Sequence[str] | None, filters: dict[str, Any]
    ) -> dict[str, Any]:
        """Split clinical-variable filters out of ``filters`` (in place); check every name."""
        requested: dict[str, Any] = {}
        if isinstance(variables, Mapping):
            requested.update(variables)
        elif variables is not None:
            if isinstance(variables, str):
                variables = [variables]
            requested.update({name: ... for name in variables})
        unknown = [k for k in filters if k not in _COLUMNS and k not in SPECIAL_FILTERS]
        if not unknown and not requested:
            return {}
        known = set(self.variables())
        for name in unknown:
            if name in known:
                requested[name] = filters.pop(name)
        bad = [k for k in filters if k not in _COLUMNS and k not in SPECIAL_FILTERS]
        bad += [k for k in requested if k not in known]
        if bad:
            raise QueryError(
                f"unknown filter(s) {sorted(set(bad))}; valid filters: {', '.join(FILTERS)}; "
                f"options: {', '.join(OPTIONS)}; ingested clinical variables: "
                f"{', '.join(sorted(known)) or 'none (oai ingest --variables NAME,...)'}"
            )
        return requested

    def _resolve(
        self, session: Any, definition: str | int | LabelDefinitionParams, split: int | str | None
    ) -> _Resolved:
        row = stored_definition(session, definition)
        split_row: Split | None = None
        if split == "latest":
            labels = stored_labels(session, row.id)
            split_row = latest_split(session, row.id, labels_fingerprint(labels))
            if split_row is None and latest_split(session, row.id) is not None:
                log.warning(
                    "the splits of %s were made from labels that have since changed; "
                    "run `oai split` again (no role/fold in this query)",
                    row.name,
                )
        elif split is not None:
            if isinstance(split, bool) or not isinstance(split, int):
                raise QueryError(f"split={split!r}: expected a split id, 'latest' or None")
            split_row = session.get(Split, split)
            if split_row is None or split_row.definition_id != row.id:
                raise DatabaseStateError(f"no split {split} of definition {row.name!r} (id {row.id}): see `oai split`")
            labels = stored_labels(session, row.id)
            if split_row.params.get("labels_hash") != labels_fingerprint(labels):
                raise DatabaseStateError(
                    f"split {split} was made from labels of {row.name!r} that have since been "
                    f"re-derived differently: run `oai split --definition {row.name}` again"
                )
        return _Resolved(
            row.id,
            row.name,
            row.params_hash,
            split_row.id if split_row else None,
            dict(split_row.params) if split_row else None,
        )

    def _knee_select(
        self,
        resolved: _Resolved,
        include_excluded: bool,
        filters: dict[str, Any],
        var_filters: dict[str, Any],
    ) -> Select[Any]:
        has_split = resolved.split_id is not None
        role = SplitAssignment.role if has_split else null()
        fold = SplitAssignment.fold if has_split else null()
        stmt = (
            select(
                Knee.id,
                Knee.subject_id,
                Knee.side,
                Subject.site,
                Subject.sex,
                SubjectVisit.age,
                SubjectVisit.bmi,
                KneeLabel.kl_baseline,
                KneeLabel.label,
                KneeLabel.exclusion,
                KneeLabel.progression_month,
                KneeLabel.kl_increase,
                role,
                fold,
            )
            .select_from(KneeLabel)
            .join(Knee, Knee.id == KneeLabel.knee_id)
            .join(Subject, Subject.id == Knee.subject_id)
            .outerjoin(SubjectVisit, and_(SubjectVisit.subject_id == Knee.subject_id, SubjectVisit.visit == 0))
            .where(KneeLabel.definition_id == resolved.definition_id)
        )
        if has_split:
            stmt = stmt.outerjoin(
                SplitAssignment,
                and_(SplitAssignment.knee_id == Knee.id, SplitAssignment.split_id == resolved.split_id),
            )
        if not include_excluded:
            stmt = stmt.where(KneeLabel.exclusion.is_(None))
        for name, value in filters.items():
            if name == "has_sequence":
                stmt = stmt.where(_sequence_condition(value))
            else:
                column, kind = _COLUMNS[name]
                stmt = stmt.where(_condition(name, column, kind, value))
        for i, (name, value) in enumerate(var_filters.items()):
            cv = aliased(ClinicalValue, name=f"cv{i}")
            stmt = stmt.outerjoin(cv, and_(cv.subject_id == Knee.subject_id, cv.variable == literal(name)))
            stmt = stmt.add_columns(cv.value_num, cv.value_text)
            if value is not ...:
                stmt = stmt.where(self._variable_condition(name, cv, value))
        return stmt.order_by(Knee.subject_id, Knee.side)

    @staticmethod
    def _variable_condition(name: str, cv: Any, value: Any) -> ColumnElement[bool]:
        if value is None:
            return or_(cv.id.is_(None), cv.missing_code.is_not(None))
        if _is_range(value):
            return _condition(name, cv.value_num, "number", value)
        values = value if isinstance(value, (list, set, frozenset)) else [value]
        parts: list[ColumnElement[bool]] = []
        for v in values:
            if v is None:
                parts.append(or_(cv.id.is_(None), cv.missing_code.is_not(None)))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                parts.append(cv.value_num == float(v))
            elif isinstance(v, str):
                parts.append(cv.value_text == v)
            else:
                raise QueryError(f"filter {name}={value!r}: expected numbers, strings, a (lo, hi) range or None")
        return or_(*parts) if parts else false()

    # ----------------------------------------------------------------------- trajectories

    def trajectories(
        self,
        *,
        wide: bool = False,
        duplicates: str = "first",
        **knee_filters: Any,
    ) -> pd.DataFrame:
        """KLG per knee per visit for the knees :meth:`knees` selects with ``knee_filters``.

        Long (default): one row per reading (``duplicates="all"``) or per knee and visit, the
        first row in file order (``"first"``) or the first graded one (``"first_graded"``).
        Wide: one row per knee, columns ``klg_00m``, ``klg_12m`` ... (missing = <NA>).
        """
        if duplicates not in ("first", "first_graded", "all"):
            raise QueryError(f"duplicates={duplicates!r}: expected 'first', 'first_graded' or 'all'")
        if wide and duplicates == "all":
            raise QueryError("wide trajectories need one reading per visit: duplicates='first' or 'first_graded'")
        knees = self.knees(**knee_filters)
        stmt = select(
            XrayReading.knee_id,
            XrayReading.visit,
            XrayReading.month,
            XrayReading.klg,
            XrayReading.klg_missing_code,
            XrayReading.read_project,
            XrayReading.source_row,
            XrayReading.id,
        )
        if len(knees) <= _IN_LIST_MAX:
            stmt = stmt.where(XrayReading.knee_id.in_([int(k) for k in knees["knee_id"]]))
        with self.db.read() as session:
            readings = read_frame(
                session,
                stmt,
                ["knee_id", "visit", "month", "klg", "klg_missing_code", "read_project", "source_row", "id"],
            )
        readings = readings[readings["knee_id"].isin(knees["knee_id"])]
        if duplicates == "all":
            readings = readings.sort_values(["knee_id", "visit", "source_row", "id"], kind="stable")
        else:  # the rule the label definitions use
            readings = first_readings(readings, duplicates)
        readings = readings.drop(columns=[c for c in ("id", "_ungraded") if c in readings])
        for col in ("klg", "read_project"):
            readings[col] = readings[col].astype("Int64")
        info = knees[["knee_id", "subject_id", "side", "label", "exclusion"]]
        long = info.merge(readings, on="knee_id", how="inner")
        long = long.sort_values(["subject_id", "side", "month"], kind="stable").reset_index(drop=True)
        long = long[list(TRAJECTORY_COLUMNS)]
        long.attrs.update(knees.attrs)
        if not wide:
            return long
        table = long.pivot(index="knee_id", columns="month", values="klg")
        table.columns = [f"klg_{int(m):02d}m" for m in table.columns]
        out = info.merge(table.reset_index(), on="knee_id", how="left")
        for col in table.columns:
            out[col] = out[col].astype("Int64")
        out.attrs.update(knees.attrs)
        return out.reset_index(drop=True)


__all__ = ["FILTERS", "KNEE_COLUMNS", "OPTIONS", "TRAJECTORY_COLUMNS", "Cohort", "QueryError"]
