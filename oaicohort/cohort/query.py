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
A query that filters by ``role`` or ``fold`` refuses labels or a split that a re-ingest made
stale (:class:`~oaicohort.db.staleness.StaleResultError`): the knees might sit in the wrong fold.

:meth:`Cohort.select` returns the knees with what they came from (:class:`KneeSelection`);
:meth:`Cohort.knees` returns the knees alone.

One module over 400 lines on purpose: ``Cohort`` is the one entry point of queries, and its
filter checks, label/split resolution and SQL are one query read top to bottom; every output it
hands knees to (flow, baseline, time to event, matching) lives in a module of its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
from sqlalchemy import Select, and_, case, literal, null, select
from sqlalchemy.orm import aliased

from oaicohort.cohort.definitions import LabelDefinitionParams
from oaicohort.cohort.export import variable_column
from oaicohort.cohort.filter_checks import check_against_database, check_variable_values, why_empty
from oaicohort.cohort.filters import condition as _condition
from oaicohort.cohort.filters import sequence_condition as _sequence_condition
from oaicohort.cohort.filters import variable_condition
from oaicohort.cohort.splits import latest_split
from oaicohort.cohort.stored import labels_fingerprint, stored_definition, stored_labels
from oaicohort.cohort.trajectories import TRAJECTORY_COLUMNS
from oaicohort.cohort.variables import QueryError, VariableCatalogue, VariableRef, load_dictionary
from oaicohort.cohort.volumes import with_volumes
from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import (
    ClinicalValue,
    Knee,
    KneeLabel,
    LabelDefinition,
    Split,
    SplitAssignment,
    Subject,
    SubjectVisit,
)
from oaicohort.db.staleness import check_not_stale
from oaicohort.errors import DatabaseStateError
from oaicohort.vocabulary import DEFAULT_DEFINITION

if TYPE_CHECKING:
    from oaicohort.cohort.baseline import BaselineTable
    from oaicohort.cohort.flow import FlowCounts
    from oaicohort.cohort.kaplan_meier import KaplanMeier
    from oaicohort.cohort.matching import MatchResult, MatchSpec

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
OPTIONS = ("definition", "split", "include_excluded")
FILTERS = (*_COLUMNS, *SPECIAL_FILTERS)


@dataclass(frozen=True)
class QueryProvenance:
    """The label definition (name, id, params hash) and split (id, params) a query used."""

    definition_id: int
    definition: str
    params_hash: str
    split_id: int | None
    split_params: dict[str, Any] | None


@dataclass(frozen=True)
class KneeSelection:
    """The knees of a query, what they came from, and (``store=`` given) the volume counts:
    ``{store, view, labelled_knees, knees_without_volume}``."""

    frame: pd.DataFrame
    provenance: QueryProvenance
    volumes: dict[str, Any] | None = None


class Cohort:
    """Query the knees of the cohort database (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------------------- discovery

    def variables(self) -> list[str]:
        """Names of the clinical variables ingested by name (``oai ingest --variables``)."""
        with self.db.read() as session:
            return sorted(session.execute(select(ClinicalValue.variable).distinct()).scalars())

    def knee_variables(self) -> pd.DataFrame:
        """Knee-side variable pairs detected at ingest: name (``WOMKP@V00``), stem, prefix,
        visit, right_variable, left_variable, source_file."""
        with self.db.read() as session:
            return VariableCatalogue.load(session).pairs

    def dictionary(self, variables: Sequence[str] | None = None) -> pd.DataFrame:
        """The data dictionary stored at ingest (variable, code, label, source_file)."""
        with self.db.read() as session:
            return load_dictionary(session, [v.upper() for v in variables] if variables is not None else None)

    def definitions(self) -> pd.DataFrame:
        """Stored label definitions: id, name, params_hash, created_at."""
        with self.db.read() as session:
            rows = session.execute(
                select(
                    LabelDefinition.id, LabelDefinition.name, LabelDefinition.params_hash, LabelDefinition.created_at
                ).order_by(LabelDefinition.id)
            ).all()
        return pd.DataFrame.from_records(rows, columns=["id", "name", "params_hash", "created_at"])

    # ----------------------------------------------------------------------- knees

    def knees(self, **query: Any) -> pd.DataFrame:
        """Knees matching every filter, one row each, sorted by subject and side (the arguments of
        :meth:`select`). ``df.attrs`` holds the definition (name, id, params hash) and split
        (id, params) used, and with ``store`` the volume counts (``attrs["volumes"]``)."""
        return self.select(**query).frame

    def select(
        self,
        *,
        definition: str | int | LabelDefinitionParams = DEFAULT_DEFINITION,
        split: int | str | None = "latest",
        include_excluded: bool = False,
        variables: Mapping[str, Any] | Sequence[str] | None = None,
        store: str | os.PathLike[str] | None = None,
        view: str = "sag",
        volume_visit: int = 0,
        **filters: Any,
    ) -> KneeSelection:
        """Knees matching every filter with the definition and split they came from.

        Columns: :data:`KNEE_COLUMNS` plus one per requested clinical variable. ``store`` (a
        volume store path): only knees with a good (``ok``) ``view`` volume at ``volume_visit``
        in that store, with its ``position`` in the store's array as a column; ``volumes``
        counts the knees before and without a volume (``labelled_knees``, ``knees_without_volume``).

        Filtering by ``role`` or ``fold`` refuses stale labels or a stale split
        (:class:`~oaicohort.db.staleness.StaleResultError`, naming the subjects that changed).
        An empty result says why in ``df.attrs["empty_reason"]``: which filter removed the last
        knees. A filter value nothing in the database has (an unknown site, fold or sequence; a
        text value for a numeric variable; a label no code of the variable has) raises
        :class:`QueryError`, as does an empty range (``(5, 1)``); a label of a coded variable
        (``INJ@P01="Yes"``) is read as its code.

        ``store`` (a volume store path): only knees with a good (``ok``) ``view`` volume at
        ``volume_visit`` in that store, with its ``position`` in the store's array as a column;
        ``df.attrs["volumes"]`` counts the matching knees before and without a volume
        (``labelled_knees``, ``knees_without_volume``).
        """
        var_filters = self._variable_filters(variables, filters)
        empty_reason = ""
        with self.db.read() as session:
            resolved = self._resolve(session, definition, split)
            if {"role", "fold"} & set(filters):
                if resolved.split_id is None:
                    raise DatabaseStateError(
                        f"filters role/fold need a split of definition {resolved.definition!r}: "
                        f"run `oai split --definition {resolved.definition}` first"
                    )
                check_not_stale(session, resolved.definition_id, resolved.split_id)
            check_against_database(session, filters, resolved.split_id)  # an unknown site, fold, sequence
            var_filters = check_variable_values(session, var_filters)  # labels -> codes; text for numbers
            stmt = self._knee_select(resolved, include_excluded, filters, var_filters)
            columns = [*KNEE_COLUMNS, *[f"_var{i}_{part}" for i in range(len(var_filters)) for part in ("num", "text")]]
            frame = read_frame(session, stmt, columns)
            if frame.empty:  # say which filter removed the last knees

                def build(f: dict[str, Any], v: list[tuple[VariableRef, Any]]) -> Select[Any]:
                    return self._knee_select(resolved, include_excluded, f, v)

                empty_reason = why_empty(session, build, filters, var_filters, resolved.definition, include_excluded)
        for col in INT_COLUMNS:
            frame[col] = frame[col].astype("Int64")
        for col in ("age", "bmi"):
            frame[col] = frame[col].astype(float)
        for i, (ref, _value) in enumerate(var_filters):
            num, text = frame.pop(f"_var{i}_num"), frame.pop(f"_var{i}_text")
            frame[ref.name] = variable_column(num, text)  # numbers, text, or both (a mixed column)
        # which OAI variable each variable column read, per side (for labels and dictionaries)
        frame.attrs["variables"] = {ref.name: {"R": ref.right, "L": ref.left} for ref, _ in var_filters}
        volumes = None
        if store is not None:
            had = len(frame)
            frame, volumes = with_volumes(self.db, frame, store, view, volume_visit)
            frame.attrs["volumes"] = dict(volumes)  # the DataFrame of knees() carries them too
            if had and frame.empty:
                empty_reason = f"0 knees: none of the {had} matching knees has a good {view} volume in {store}"
        if frame.empty:
            frame.attrs["empty_reason"] = empty_reason
            log.info("%s", empty_reason)
        frame.attrs.update(
            definition=resolved.definition,
            definition_id=resolved.definition_id,
            params_hash=resolved.params_hash,
            split_id=resolved.split_id,
            split_params=resolved.split_params,
        )
        return KneeSelection(frame, resolved, volumes)

    def _variable_filters(
        self, variables: Mapping[str, Any] | Sequence[str] | None, filters: dict[str, Any]
    ) -> list[tuple[VariableRef, Any]]:
        """Split clinical-variable filters out of ``filters`` (in place); resolve every name to
        a subject-level variable or a knee-side pair (:mod:`oaicohort.cohort.variables`)."""
        requested: dict[str, Any] = {}
        if isinstance(variables, Mapping):
            requested.update(variables)
        elif variables is not None:
            if isinstance(variables, str):
                variables = [variables]
            requested.update({name: ... for name in variables})
        unknown = [k for k in filters if k not in _COLUMNS and k not in SPECIAL_FILTERS]
        if not unknown and not requested:
            return []
        with self.db.read() as session:
            catalogue = VariableCatalogue.load(session)
        for name in unknown:
            if catalogue.try_resolve(name) is not None:
                requested[name] = filters.pop(name)
        bad = [k for k in filters if k not in _COLUMNS and k not in SPECIAL_FILTERS]
        resolved: list[tuple[VariableRef, Any]] = []
        for name, value in requested.items():
            ref = catalogue.try_resolve(name)
            if ref is None:
                bad.append(name)
            else:
                resolved.append((ref, value))
        if bad:
            raise QueryError(
                f"unknown filter(s) {sorted(set(bad))}; valid filters: {', '.join(FILTERS)}; "
                f"options: {', '.join(OPTIONS)}; {catalogue.names()}"
            )
        return resolved

    def _resolve(
        self, session: Any, definition: str | int | LabelDefinitionParams, split: int | str | None
    ) -> QueryProvenance:
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
        return QueryProvenance(
            row.id,
            row.name,
            row.params_hash,
            split_row.id if split_row else None,
            dict(split_row.params) if split_row else None,
        )

    def _knee_select(
        self,
        resolved: QueryProvenance,
        include_excluded: bool,
        filters: dict[str, Any],
        var_filters: list[tuple[VariableRef, Any]],
    ) -> Select[Any]:
        has_split = resolved.split_id is not None
        role = SplitAssignment.role if has_split else null()
        fold = SplitAssignment.fold if has_split else null()
        stmt = cast(
            "Select[Any]",
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
            .where(KneeLabel.definition_id == resolved.definition_id),
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
        for i, (ref, value) in enumerate(var_filters):
            cv = aliased(ClinicalValue, name=f"cv{i}")
            # a knee-side pair reads the variable of the knee's own side
            variable = (
                case((Knee.side == "R", literal(ref.right)), else_=literal(ref.left))
                if ref.knee_side
                else literal(ref.right)
            )
            stmt = stmt.outerjoin(cv, and_(cv.subject_id == Knee.subject_id, cv.variable == variable))
            stmt = stmt.add_columns(cv.value_num, cv.value_text)
            if value is not ...:
                stmt = stmt.where(variable_condition(ref.name, cv, value))
        return stmt.order_by(Knee.subject_id, Knee.side)

    # ----------------------------------------------------------------------- trajectories

    def trajectories(
        self,
        *,
        variable: str = "XRKL",
        wide: bool = False,
        duplicates: str = "first",
        **knee_filters: Any,
    ) -> pd.DataFrame:
        """One variable per knee per visit for the knees :meth:`knees` selects with ``knee_filters``.

        ``variable``: ``XRKL`` (KLG, the default), another central X-ray reading (``XRJSM``,
        ``XRJSL``, ``XROSFM`` ...), or any clinical variable ingested at several visits, by stem:
        a knee-side pair (``WOMKP``: ``V00WOMKPR``/``L``, ``V01WOMKPR``/``L`` ...; each knee reads
        its own side) or a subject-level ``Vvv`` variable. See :mod:`oaicohort.cohort.trajectories`.

        KLG long (default): one row per reading (``duplicates="all"``) or per knee and visit, the
        first row (project 15, then 37/42, then file order: ``"first"``) or the first graded one (``"first_graded"``).
        Wide: one row per knee, columns ``klg_00m``, ``klg_12m`` ... (missing = <NA>); other
        variables ``<STEM>_00m`` ...
        """
        from oaicohort.cohort import trajectories as tr

        if duplicates not in ("first", "first_graded", "all"):
            raise QueryError(f"duplicates={duplicates!r}: expected 'first', 'first_graded' or 'all'")
        if wide and duplicates == "all":
            raise QueryError("wide trajectories need one reading per visit: duplicates='first' or 'first_graded'")
        key = variable.strip().upper()
        column = tr.READING_VARIABLES.get(key)
        knees = self.knees(**knee_filters)
        if key == "XRKL":
            return tr.klg_trajectories(self.db, knees, duplicates=duplicates, wide=wide)
        if column is not None:
            return tr.reading_trajectories(self.db, knees, key, column, duplicates=duplicates, wide=wide)
        return tr.clinical_trajectories(self.db, knees, variable, wide=wide)

    # ----------------------------------------------------------------------- methods section
    # Each output lives in a module of its own; these run the query and hand its knees over.

    def flow(self, **query: Any) -> FlowCounts:
        """Counts of the participant flow diagram: enrolled, each exclusion, included, the query's
        filters, included per label (:mod:`oaicohort.cohort.flow`; draw with ``write_flow``)."""
        from oaicohort.cohort.flow import flow_counts

        options = {k: query.pop(k) for k in ("definition", "split") if k in query}
        if query.pop("include_excluded", False):
            raise QueryError("a flow diagram shows the excluded knees itself: leave include_excluded out")
        selection = self.select(**options, **query)
        return flow_counts(self.db, selection.provenance.definition_id, query=selection.frame, filters=query)

    def baseline_table(
        self, *, by: str = "label", variables: Sequence[str] = (), pval: bool = False, **query: Any
    ) -> BaselineTable:
        """Table 1 of the knees ``knees(**query)`` selects, by ``by``, with the built-in variables
        and ``variables`` (:mod:`oaicohort.cohort.baseline`, computed by tableone)."""
        from oaicohort.cohort.baseline import baseline_table
        from oaicohort.cohort.variables import dictionary_of

        frame = self.knees(variables=_with_columns(query.pop("variables", None), variables), **query)
        with self.db.read() as session:
            dictionary = dictionary_of(frame, session)
        return baseline_table(frame, by=by, variables=list(variables), dictionary=dictionary, pval=pval)

    def time_to_event(self, **query: Any) -> pd.DataFrame:
        """:meth:`knees` of a time-to-event definition with ``time_months``, ``event`` and
        ``event_type`` (:mod:`oaicohort.cohort.time_to_event`)."""
        from oaicohort.cohort.time_to_event import time_to_event

        return time_to_event(self, **query)

    def kaplan_meier(self, *, by: str | None = None, **query: Any) -> KaplanMeier:
        """Kaplan-Meier curves (and figure) of :meth:`time_to_event`, one per value of ``by``."""
        from oaicohort.cohort.kaplan_meier import kaplan_meier

        return kaplan_meier(self.time_to_event(**query), by=by)

    def match(self, spec: MatchSpec, **query: Any) -> MatchResult:
        """Match the cases among ``knees(**query)`` to controls under ``spec``
        (:mod:`oaicohort.cohort.matching`); variables it names are added to the query."""
        from oaicohort.cohort.matching import match

        wanted = [n for n in (spec.column, *(v.name for v in spec.on)) if n not in KNEE_COLUMNS]
        frame = self.knees(variables=_with_columns(query.pop("variables", None), wanted), **query)
        return match(frame, spec)


def _with_columns(variables: Mapping[str, Any] | Sequence[str] | None, names: Sequence[str]) -> Any:
    """A ``variables=`` argument that also brings ``names`` as columns."""
    if isinstance(variables, Mapping):
        return {**{n: ... for n in names}, **variables}
    listed = [variables] if isinstance(variables, str) else list(variables or [])
    return list(dict.fromkeys([*listed, *names])) or None


__all__ = ["FILTERS", "KNEE_COLUMNS", "OPTIONS", "TRAJECTORY_COLUMNS", "Cohort", "KneeSelection", "QueryError"]
