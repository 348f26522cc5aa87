"""Clinical variables in cohort queries: names, knee-side pairs and the data dictionary.

A query names a variable in one of two ways:

- an ingested OAI variable by its own name (``V00WOMKPR``, ``P02SEX``): a *subject-level*
  value, the same on both knees of a subject (as the release stores it);
- a *knee-side pair* detected at ingest (:mod:`oaicohort.ingest.dictionary`) by its knee-level
  name ``STEM@PREFIX`` (``WOMKP@V00``: ``V00WOMKPR`` for right knees, ``V00WOMKPL`` for left
  ones), by ``PREFIX STEM`` (``V00WOMKP``), or by its stem alone (``WOMKP``) when only one pair
  has that stem. A stem shared by several pairs is an error listing them.

The data dictionary turns codes into labels for exports (``values="labels"`` or ``"both"``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from oaicohort.db.frames import read_frame
from oaicohort.db.schema import ClinicalValue, DataDictionaryEntry, KneeVariablePair
from oaicohort.errors import OAIError

log = logging.getLogger(__name__)

VALUE_MODES = ("codes", "labels", "both")


class QueryError(OAIError):
    """A cohort query names an unknown filter or gives a filter a value it cannot take: a usage
    error (exit code 2, as the CLI's own option checks)."""

    exit_code = 2


class QueryStateError(QueryError):
    """A well-formed query whose result cannot give what was asked (no knee is a case, a saved
    name is taken): a failure, not a usage error (exit code 1)."""

    exit_code = 1


class VariableError(QueryError):
    """A variable name is unknown or ambiguous."""


@dataclass(frozen=True)
class VariableRef:
    """What a requested name reads: ``right`` for right knees, ``left`` for left ones (the same
    variable for a subject-level one)."""

    name: str
    right: str
    left: str

    @property
    def knee_side(self) -> bool:
        return self.right != self.left

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.right,) if not self.knee_side else (self.right, self.left)


@dataclass
class VariableCatalogue:
    """The ingested variables and knee-side pairs of a database (read once per query)."""

    variables: frozenset[str]
    pairs: pd.DataFrame  # name, stem, prefix, visit, right_variable, left_variable, source_file

    @classmethod
    def load(cls, session: Session) -> VariableCatalogue:
        variables = frozenset(session.execute(select(ClinicalValue.variable).distinct()).scalars())
        pairs = read_frame(
            session,
            select(
                KneeVariablePair.name,
                KneeVariablePair.stem,
                KneeVariablePair.prefix,
                KneeVariablePair.visit,
                KneeVariablePair.right_variable,
                KneeVariablePair.left_variable,
                KneeVariablePair.source_file,
            ).order_by(KneeVariablePair.name),
            ["name", "stem", "prefix", "visit", "right_variable", "left_variable", "source_file"],
        )
        return cls(variables, pairs)

    def _pair(self, row: pd.Series, name: str) -> VariableRef:
        return VariableRef(name, str(row["right_variable"]), str(row["left_variable"]))

    def resolve(self, name: str) -> VariableRef:
        """The variable(s) ``name`` reads (see the module docstring); unknown or ambiguous names
        raise :class:`VariableError`."""
        ref = self.try_resolve(name)
        if ref is None:
            raise VariableError(f"unknown variable {name!r}" + self._hint())
        return ref

    def try_resolve(self, name: str) -> VariableRef | None:
        """Like :meth:`resolve`, but ``None`` for a name that is neither ingested nor a pair."""
        key = name.strip().upper()
        if key in self.variables:
            if not self.pairs.empty and key in set(self.pairs["right_variable"]) | set(self.pairs["left_variable"]):
                row = self.pairs[(self.pairs["right_variable"] == key) | (self.pairs["left_variable"] == key)].iloc[0]
                log.warning(
                    "%s is one knee's variable, used here for both knees of a subject; %s gives each knee its own side",
                    key,
                    row["name"],
                )
            return VariableRef(name, key, key)
        pairs = self.pairs
        if "@" in key:
            hit = pairs[pairs["name"] == key]
            if len(hit) == 1:
                return self._pair(hit.iloc[0], name)
            stem = key.split("@", 1)[0]
            others = pairs.loc[pairs["stem"] == stem, "name"].tolist()
            raise VariableError(
                f"no knee-side pair {key}"
                + (f"; pairs of {stem}: {', '.join(others)}" if others else "")
                + self._hint()
            )
        hit = pairs[(pairs["stem"] == key) | ((pairs["prefix"] + pairs["stem"]) == key)]
        if len(hit) == 1:
            return self._pair(hit.iloc[0], name)
        if len(hit) > 1:
            raise VariableError(
                f"variable {name!r} is ambiguous: it names {len(hit)} knee-side pairs "
                f"({', '.join(hit['name'])}); give one of them"
            )
        return None

    def names(self) -> str:
        """Everything a query can name, for error messages."""
        pairs = ", ".join(self.pairs["name"]) if not self.pairs.empty else "none"
        subject = ", ".join(sorted(self.variables)) or "none (oai ingest --variables NAME,...)"
        return f"ingested clinical variables: {subject}; knee-side pairs: {pairs}"

    def _hint(self) -> str:
        pairs = ", ".join(self.pairs["name"]) if not self.pairs.empty else "none"
        subject = ", ".join(sorted(self.variables)) or "none (oai ingest --variables NAME,...)"
        return f". Knee-side pairs: {pairs}; ingested variables: {subject}"

    def resolve_all(self, names: Iterable[str]) -> list[VariableRef]:
        return [self.resolve(n) for n in names]

    def series(self, name: str) -> list[tuple[int, VariableRef]]:
        """One variable over time: ``(visit, ref)`` for each visit at which ``name`` (a stem, a
        pair name or an ingested ``Vvv`` variable name without its prefix) was ingested.

        Knee-side pairs are preferred: ``WOMKP`` gives ``WOMKP@V00``, ``WOMKP@V01`` ...
        """
        key = name.strip().upper().split("@", 1)[0]
        pairs = self.pairs[(self.pairs["stem"] == key) & self.pairs["visit"].notna()]
        if not pairs.empty:
            return [(int(r["visit"]), self._pair(r, str(r["name"]))) for _, r in pairs.sort_values("visit").iterrows()]
        found: list[tuple[int, VariableRef]] = []
        for variable in sorted(self.variables):
            if len(variable) > 3 and variable[0] == "V" and variable[1:3].isdigit() and variable[3:] == key:
                found.append((int(variable[1:3]), VariableRef(variable, variable, variable)))
        if not found:
            raise VariableError(f"no visit of variable {name!r} was ingested" + self._hint())
        return found


def load_dictionary(session: Session, variables: Iterable[str] | None = None) -> pd.DataFrame:
    """The data dictionary (variable, code, label, source_file), optionally of some variables."""
    stmt = select(
        DataDictionaryEntry.variable,
        DataDictionaryEntry.code,
        DataDictionaryEntry.label,
        DataDictionaryEntry.source_file,
    ).order_by(DataDictionaryEntry.variable, DataDictionaryEntry.code)
    if variables is not None:
        stmt = stmt.where(DataDictionaryEntry.variable.in_(sorted(set(variables))))
    return read_frame(session, stmt, ["variable", "code", "label", "source_file"])


def code_key(value: object) -> str | None:
    """The dictionary's spelling of a code: ``2.0`` -> ``"2"``, ``".A"`` stays."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().upper()


def labels_for(values: pd.Series, sources: pd.Series | str, dictionary: pd.DataFrame) -> pd.Series:
    """The dictionary label of each code in ``values`` read from variable ``sources``."""
    lookup = {(v, c): lab for v, c, lab in zip(dictionary["variable"], dictionary["code"], dictionary["label"])}
    src = sources if isinstance(sources, pd.Series) else pd.Series(sources, index=values.index)
    out = [lookup.get((s, code_key(v))) for v, s in zip(values, src)]
    return pd.Series(out, index=values.index, dtype=object)


def apply_value_mode(frame: pd.DataFrame, mode: str, dictionary: pd.DataFrame) -> pd.DataFrame:
    """Variable columns of a :meth:`Cohort.knees` result as ``codes`` (unchanged), ``labels``
    (the dictionary label of each code; the code where the dictionary has none) or ``both``
    (``NAME`` and ``NAME_label``)."""
    if mode not in VALUE_MODES:
        raise QueryError(f"values={mode!r}: expected one of {list(VALUE_MODES)}")
    out = frame.copy()
    if mode == "codes":
        return out
    for name, sources in frame.attrs.get("variables", {}).items():
        source = frame["side"].map(sources)
        labels = labels_for(frame[name], source, dictionary)
        if mode == "labels":
            out[name] = labels.where(labels.notna(), frame[name].astype(object))
        else:
            out.insert(out.columns.get_loc(name) + 1, f"{name}_label", labels)
    out.attrs = dict(frame.attrs)
    return out


def dictionary_of(frame: pd.DataFrame, session: Session) -> pd.DataFrame:
    """The data-dictionary rows of the variables a query result read."""
    names = {v for sources in frame.attrs.get("variables", {}).values() for v in sources.values()}
    names |= set(frame.attrs.get("dictionary_variables", []))  # a clinical trajectory
    return load_dictionary(session, names)


__all__ = [
    "VALUE_MODES",
    "QueryError",
    "QueryStateError",
    "VariableCatalogue",
    "VariableError",
    "VariableRef",
    "apply_value_mode",
    "code_key",
    "dictionary_of",
    "labels_for",
    "load_dictionary",
]
