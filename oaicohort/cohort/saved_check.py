"""Checking a saved cohort: re-run its query and say what changed and why.

``check_saved(db, "my_study")`` re-runs the saved query (``oaicohort.cohort.saved``) and says
whether the result (knees and their labels) still equals the saved one; if not, which knees
entered or left and why: the snapshot fields that changed for each, and the ingest runs and
files between then and now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from oaicohort.cohort.saved import (
    KEY,
    content_hash,
    decode_query,
    latest_ingest_run,
    load_saved,
    run_files,
    run_query,
    snapshot,
)
from oaicohort.db import Database
from oaicohort.db.schema import LabelDefinition, SavedCohort
from oaicohort.errors import DatabaseStateError


@dataclass
class SavedCheck:
    """The result of re-running a saved cohort's query."""

    name: str
    same: bool
    saved_hash: str
    current_hash: str
    saved_knees: int
    current_knees: int
    entered: pd.DataFrame  # subject_id, side, label, why
    left: pd.DataFrame  # subject_id, side, label, why
    saved_run: int | None
    current_run: int | None
    changed_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # a matched cohort's matching as saved and as re-run (spec, counts, balance, unmatched)
    matching: dict[str, Any] | None = None
    current_matching: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "same": self.same,
            "saved_hash": self.saved_hash,
            "current_hash": self.current_hash,
            "saved_knees": self.saved_knees,
            "current_knees": self.current_knees,
            "entered": self.entered.astype(object).where(self.entered.notna(), None).to_dict("records"),
            "left": self.left.astype(object).where(self.left.notna(), None).to_dict("records"),
            "saved_ingest_run": self.saved_run,
            "current_ingest_run": self.current_run,
            "changed_files": self.changed_files,
            "notes": self.notes,
            "matching": self.matching,
            "current_matching": self.current_matching,
        }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _why(old: pd.DataFrame, new: pd.DataFrame, keys: pd.DataFrame) -> list[str]:
    """For each knee of ``keys``: the snapshot fields that differ between ``old`` and ``new``."""
    fields = [c for c in old.columns if c not in KEY and c in new.columns]
    fields += [c for c in new.columns if c not in KEY and c not in old.columns]
    o = keys[KEY].merge(old, on=KEY, how="left")
    n = keys[KEY].merge(new, on=KEY, how="left")
    out = []
    for i in range(len(keys)):
        changes = []
        for c in fields:
            a = o[c].iloc[i] if c in o else None
            b = n[c].iloc[i] if c in n else None
            if _fmt(a) != _fmt(b):
                changes.append(f"{c} {_fmt(a)} -> {_fmt(b)}")
        out.append("; ".join(changes) if changes else "no recorded input changed")
    return out


def check_saved(db: Database, name: str) -> SavedCheck:
    """Re-run the saved query and compare with the frozen result (see the module docstring)."""
    from oaicohort.cohort.query import Cohort

    with db.read() as session:
        row = load_saved(session, name)
        query = decode_query(row.query)
        saved = pd.DataFrame(row.knees)
        saved_id = row.id
        saved_hash, saved_run, split_id = row.content_hash, row.ingest_run_id, row.split_id
        saved_matching = row.matching
        definition = session.execute(
            select(LabelDefinition).where(
                LabelDefinition.name == row.definition_name, LabelDefinition.params_hash == row.params_hash
            )
        ).scalar_one_or_none()
        current_run = latest_ingest_run(session)
        old_files, new_files = run_files(session, saved_run), run_files(session, current_run)
    if definition is None:
        raise DatabaseStateError(
            f"saved cohort {name!r}: label definition {row.definition_name!r} (hash {row.params_hash[:12]}) "
            "is no longer in the database; derive it again with `oai label`"
        )
    notes: list[str] = []
    if current_run is not None and (definition.ingest_run_id or 0) < current_run:
        notes.append(
            f"the labels of {definition.name!r} were derived from ingest run {definition.ingest_run_id}, "
            f"before the latest ingest run {current_run}: run `oai label` to bring them up to date"
        )
    cohort = Cohort(db)
    query["definition"] = definition.id  # exactly the saved definition, not a later one of its name
    needs_split = bool({"role", "fold"} & set(query["filters"]))
    current = run_query(cohort, query, split_id if needs_split else None)
    current_hash = content_hash(current)
    if saved.empty:
        saved = pd.DataFrame(columns=[*KEY, "label"])
    cur_keys = set(zip(current["subject_id"].astype(int), current["side"], current["label"]))
    old_keys = set(zip(saved["subject_id"].astype(int), saved["side"], saved["label"]))
    entered = pd.DataFrame(sorted(cur_keys - old_keys), columns=[*KEY, "label"])
    left = pd.DataFrame(sorted(old_keys - cur_keys), columns=[*KEY, "label"])
    if len(entered) or len(left):
        with db.read() as session:
            old_snapshot = pd.DataFrame(
                session.execute(select(SavedCohort.snapshot).where(SavedCohort.id == saved_id)).scalar_one()
            )
        new_snapshot = snapshot(db, cohort, query)
        entered["why"] = _why(old_snapshot, new_snapshot, entered)
        left["why"] = _why(old_snapshot, new_snapshot, left)
    else:
        entered["why"] = pd.Series([], dtype=object)
        left["why"] = pd.Series([], dtype=object)
    if current_hash != saved_hash and not len(entered) and not len(left):
        notes.append("the same knees and labels, matched into other sets")
    if saved_matching and current.attrs.get("matching", {}).get("balance") != saved_matching.get("balance"):
        notes.append(
            "the balance after matching differs from the saved one (oai cohort --saved NAME --json shows both)"
        )
    changed = sorted(p for p in set(old_files) | set(new_files) if old_files.get(p) != new_files.get(p))
    if saved_run != current_run:
        notes.append(f"saved at ingest run {saved_run}; the latest ingest run is {current_run}")
    return SavedCheck(
        name=name,
        same=current_hash == saved_hash,
        saved_hash=saved_hash,
        current_hash=current_hash,
        saved_knees=len(saved),
        current_knees=len(current),
        entered=entered,
        left=left,
        saved_run=saved_run,
        current_run=current_run,
        changed_files=changed,
        notes=notes,
        matching=saved_matching,
        current_matching=current.attrs.get("matching"),
    )


__all__ = ["SavedCheck", "check_saved"]
