"""What the ingested clinical variables mean: the data dictionary and the knee-side pairs.

Called once per ingest, after the clinical values are written (:func:`record_variables`):

- **Data dictionary.** Every ``code: label`` cell of an ingested variable (``1: Yes``,
  ``.A: Not Expected``) becomes a row ``(variable, code, label)`` of ``data_dictionary``, so that
  exports can carry codes, labels or both. A bare cell (``1``) says nothing about its meaning and
  adds nothing; a later release's label for a code replaces the earlier one.
- **Knee-side pairs.** OAI stores knee-level variables as right/left twins. The rule: two
  ingested variables form a pair when they were read from the *same file*, have the same prefix
  (``Vvv`` visit, ``P01``/``P02`` screening, or none) and their names are identical but for one
  letter, ``R`` in one and ``L`` in the other. The side letter is usually the last one
  (``V00WOMKPR`` / ``V00WOMKPL`` -> ``WOMKP@V00``; ``P01INJR`` / ``P01INJL`` -> ``INJ@P01``), but
  WOMAC/KOOS items and knee-pain questions carry it inside (``V00WPRKN1`` / ``V00WPLKN1`` ->
  ``WPKN1@V00``, ``V00KPNR12`` -> ``KPN12@V00``). The pair's stem is the name without prefix and
  side letter; its knee-level name is ``STEM@PREFIX``. Exceptions:

  - a name whose twin was not ingested (or sits in another file) is no pair: it stays a
    subject-level variable, so ``oai ingest --variables`` must name both sides;
  - a name that merely contains an R or L (``V00KOOSFSR``, sports/recreation) is a pair only if
    its twin with the other letter exists in the same file, which no such OAI variable has;
    :data:`NOT_KNEE_PAIRS` lists any look-alike twins found later;
  - stems naming another joint that also comes in right/left (hip, hand, ankle, foot:
    :data:`NOT_KNEE_MARKERS`) are not knee pairs, even with both twins present;
  - two stems that collide after removing the side letter keep the first pair found (sorted by
    prefix, stem, file).

  Pairs are re-detected over *all* ingested variables after every ingest (``knee_variable_pairs``
  is rewritten), so a variable ingested later completes a pair.

- **NDA names.** A variable named by its NDA place (``oai_koos_womac01.womac_pain_right@V00``)
  pairs as the OAI variable the NDA map puts there (``V00WOMKPR``, so the pair is ``WOMKP@V00``
  whichever way each twin was named). A place the map does not know pairs by its column:
  ``..._right``/``..._left``, else one R/L letter as above (``ksurgr``/``ksurgl``); the pair is
  then ``STRUCTURE.STEM@VISIT``.
- **NDA categories.** A package's text categories (``race`` ``Unknown or not reported``) are
  stored as codes; their meaning is written to the data dictionary too
  (:func:`record_categories`).
"""

from __future__ import annotations

import logging
import re

import pandas as pd
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from oaicohort.db.schema import ClinicalValue, DataDictionaryEntry, KneeVariablePair
from oaicohort.release.nda_map import NDA_VARIABLE, default_map

log = logging.getLogger(__name__)

_PREFIX = re.compile(r"^(?P<prefix>[VP]\d\d)?(?P<rest>[A-Z0-9_]+)$")
_SIDE_SUFFIX = re.compile(r"^(?P<stem>.+)_(?P<side>RIGHT|LEFT)$")
_CODED = re.compile(r"^\s*(?P<code>[-+]?\d+(?:\.\d+)?|\.[A-Za-z]?)\s*:\s*(?P<label>.*?)\s*$")
# stems containing these name right/left pairs of other joints, not of knees
NOT_KNEE_MARKERS: tuple[str, ...] = ("HIP", "HND", "HAND", "ANK", "FOOT")
# (right, left) names that look like a pair but are not one (none known so far)
NOT_KNEE_PAIRS: frozenset[tuple[str, str]] = frozenset()


def pair_name(stem: str, prefix: str) -> str:
    """The knee-level name of a pair: ``STEM@PREFIX`` (``WOMKP@V00``), or ``STEM`` without prefix."""
    return f"{stem}@{prefix}" if prefix else stem


def detect_pairs(variables: pd.DataFrame) -> pd.DataFrame:
    """Knee-side pairs among ``variables`` (columns ``variable``, ``source_file``), by the module's rule.

    Columns of the result: name, stem, prefix, visit, right_variable, left_variable, source_file.
    """
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for variable, source in zip(variables["variable"], variables["source_file"]):
        name = str(variable).upper()
        for prefix, keyed, letter in _side_forms(name):
            rows.setdefault((prefix, keyed, str(source)), {})[letter] = name
    pairs = []
    for (prefix, keyed, source), sides in sorted(rows.items()):
        if set(sides) != {"R", "L"} or (sides["R"], sides["L"]) in NOT_KNEE_PAIRS:
            continue
        stem = keyed.split("\0")[0]
        pairs.append(
            {
                "name": pair_name(stem, prefix),
                "stem": stem,
                "prefix": prefix,
                "visit": int(prefix[1:]) if prefix.startswith("V") else None,
                "right_variable": sides["R"],
                "left_variable": sides["L"],
                "source_file": source,
            }
        )
    frame = pd.DataFrame(
        pairs, columns=["name", "stem", "prefix", "visit", "right_variable", "left_variable", "source_file"]
    )
    # the same pair read from two files (a variable in two releases' layouts): the first file wins
    return frame.drop_duplicates("name", keep="first").reset_index(drop=True)


def _side_forms(name: str) -> list[tuple[str, str, str]]:
    """(prefix, keyed stem, side letter) of every way ``name`` could be one side of a pair."""
    nda = NDA_VARIABLE.fullmatch(name)
    if nda is not None:
        structure, column, visit = nda["structure"].lower(), nda["column"].upper(), (nda["visit"] or "").upper()
        alias = default_map().variable_at(structure, column, visit or None)
        if alias is not None:
            return _side_forms(alias)
        m = _SIDE_SUFFIX.match(column)
        if m is not None:
            if any(marker in m["stem"] for marker in NOT_KNEE_MARKERS):
                return []
            return [(visit, f"{structure.upper()}.{m['stem']}\0sfx", m["side"][0])]
        return [(visit, f"{structure.upper()}.{keyed}", letter) for _, keyed, letter in _side_forms(column)]
    match = _PREFIX.match(name)
    if match is None:
        return []
    prefix, rest = match["prefix"] or "", match["rest"]
    out = []
    for i, letter in enumerate(rest):
        if letter in "RL":
            stem = rest[:i] + rest[i + 1 :]
            if stem and not any(marker in stem for marker in NOT_KNEE_MARKERS):
                out.append((prefix, stem + "\0" + str(i), letter))
    return out


def dictionary_entries(clinical: pd.DataFrame) -> pd.DataFrame:
    """The distinct ``code: label`` meanings in ``clinical`` (variable, value_text, source_file)."""
    cells = clinical.dropna(subset=["value_text"])
    cells = cells.drop_duplicates(["variable", "value_text"])
    parts = cells["value_text"].astype(str).str.extract(_CODED)
    out = pd.DataFrame(
        {
            "variable": cells["variable"].to_numpy(),
            "code": parts["code"].str.upper().to_numpy(),
            "label": parts["label"].to_numpy(),
            "source_file": cells["source_file"].to_numpy(),
        }
    )
    out = out.dropna(subset=["code"])
    out = out[out["label"].astype(str) != ""]
    # a later file's label for a code wins (the frame is in file order)
    return out.drop_duplicates(["variable", "code"], keep="last").reset_index(drop=True)


def record_variables(session: Session, clinical: pd.DataFrame) -> dict[str, int]:
    """Store the data dictionary of the variables in ``clinical`` (just written) and re-detect
    the knee-side pairs over every ingested variable. Returns the row counts."""
    entries = dictionary_entries(clinical)
    names = sorted(clinical["variable"].unique().tolist())
    for start in range(0, len(names), 500):
        session.execute(delete(DataDictionaryEntry).where(DataDictionaryEntry.variable.in_(names[start : start + 500])))
    if len(entries):
        session.execute(insert(DataDictionaryEntry), entries.to_dict("records"))
    ingested = pd.DataFrame(
        session.execute(select(ClinicalValue.variable, ClinicalValue.source_file).distinct()).all(),
        columns=["variable", "source_file"],
    )
    pairs = detect_pairs(ingested)
    session.execute(delete(KneeVariablePair))
    if len(pairs):
        records = [{**r, "visit": None if pd.isna(r["visit"]) else int(r["visit"])} for r in pairs.to_dict("records")]
        session.execute(insert(KneeVariablePair), records)
    log.info("data dictionary: %d codes of %d variables; %d knee-side pairs", len(entries), len(names), len(pairs))
    return {"data_dictionary": int(len(entries)), "knee_variable_pairs": int(len(pairs))}


def record_categories(session: Session, entries: list[dict[str, str]]) -> int:
    """Store the data-dictionary entries of NDA categories read (variable, code, label,
    source_file); an entry replaces an earlier one of the same variable and code."""
    if not entries:
        return 0
    frame = pd.DataFrame(entries).drop_duplicates(["variable", "code"], keep="last")
    for variable, codes in frame.groupby("variable")["code"]:
        session.execute(
            delete(DataDictionaryEntry).where(
                DataDictionaryEntry.variable == variable, DataDictionaryEntry.code.in_(codes.tolist())
            )
        )
    session.execute(insert(DataDictionaryEntry), frame.to_dict("records"))
    return int(len(frame))


__all__ = [
    "NOT_KNEE_MARKERS",
    "NOT_KNEE_PAIRS",
    "detect_pairs",
    "dictionary_entries",
    "pair_name",
    "record_categories",
    "record_variables",
]
