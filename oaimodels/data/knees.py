"""The knees a run trains and tests on: the labelled, split knees with their store position."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from oaicohort.cohort.query import Cohort, QueryProvenance
from oaicohort.cohort.splits import check_leakage
from oaicohort.db import Database
from oaicohort.errors import DatabaseStateError
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.vocabulary import DEFAULT_DEFINITION
from oaimodels.data.crops import knee_extents
from oaimodels.data.layout import DataError
from oaimodels.metrics import class_indices

log = logging.getLogger(__name__)


KNEE_COLUMNS = ("knee_id", "subject_id", "side", "label", "role", "fold", "position")


def validate_knees(knees: pd.DataFrame) -> pd.DataFrame:
    """Check a knee table (columns :data:`KNEE_COLUMNS`) and add the class index column ``y``."""
    missing = [c for c in KNEE_COLUMNS if c not in knees.columns]
    if missing:
        raise DataError(f"knee table lacks column(s) {missing}")
    out = knees.reset_index(drop=True).copy()
    try:
        out["y"] = class_indices(out["label"].astype(str).to_numpy())
    except ValueError as exc:
        raise DataError(f"knee table: {exc}") from None
    bad_role = sorted(set(out["role"]) - {"train", "test"})
    if bad_role:
        raise DataError(f"knee table: unknown role(s) {bad_role}; expected 'train' or 'test'")
    if out.loc[out["role"] == "train", "fold"].isna().any():
        raise DataError("knee table: a training knee has no fold")
    out["position"] = out["position"].astype(np.int64)
    check_leakage(out)
    return out


@dataclass(frozen=True)
class KneeQuery:
    """Which labelled, split knees a run uses: the label definition, the split (None: the newest
    of the definition) and the visit of the volumes."""

    definition: str = DEFAULT_DEFINITION
    split: int | None = None
    visit: int = 0


@dataclass(frozen=True)
class KneeTable:
    """A run's knees (:data:`KNEE_COLUMNS`, ``site``, class index ``y``), where they came from,
    and how many labelled knees had no volume."""

    knees: pd.DataFrame
    provenance: QueryProvenance
    labelled_knees: int
    knees_without_volume: int

    def labels_info(self) -> dict[str, Any]:
        """What a run folder's ``labels.json`` records of it."""
        p = self.provenance
        return {
            "definition": {"name": p.definition, "id": p.definition_id, "params_hash": p.params_hash},
            "split": {"id": p.split_id, "params": p.split_params},
            "labelled_knees": self.labelled_knees,
            "knees_without_volume": self.knees_without_volume,
        }


def knee_table(
    db: Database, store_path: str | os.PathLike[str], view: str, query: KneeQuery = KneeQuery()
) -> KneeTable:
    """Labelled, split knees with their store position for ``view``, and what was left out.

    ``Cohort(db).select(..., role=["train", "test"], store=store_path, view=view)``: included,
    split knees with a good volume at ``query.visit`` (stale labels or splits are refused there);
    knees without one are counted.
    The valid extent of each volume (where it holds real data, ``oaimodels.data.crops``) is in
    the ``extent_*`` columns.
    """
    cohort = Cohort(db)
    split = "latest" if query.split is None else query.split
    labelled = cohort.select(definition=query.definition, split=split)
    if labelled.frame.empty:
        raise DatabaseStateError(
            f"no labelled knees for definition {query.definition!r}; run `oai label` and `oai split` first"
        )
    if labelled.provenance.split_id is None:
        raise DatabaseStateError(f"no split for definition {query.definition!r}; run `oai split` first")
    merged = cohort.select(
        definition=query.definition, split=split, role=["train", "test"], store=store_path, view=view,
        volume_visit=query.visit,
    )  # fmt: skip
    assert merged.volumes is not None  # store given
    columns = [c for c in (*KNEE_COLUMNS, "site") if c in merged.frame.columns]
    params = VolumeStore.open(store_path).params
    return KneeTable(
        validate_knees(knee_extents(db, store_path, params, view, merged.frame[columns], query.visit)),
        merged.provenance,
        int(merged.volumes["labelled_knees"]),
        int(merged.volumes["knees_without_volume"]),
    )
