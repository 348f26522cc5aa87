"""The knees a run trains and tests on: the labelled, split knees with their store position."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from oaicohort.cohort.splits import LeakageError as LeakageError  # the one leakage check, re-exported
from oaicohort.cohort.splits import check_leakage
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


def knee_table(
    db: Any,
    store_path: str,
    view: str,
    *,
    definition: str = DEFAULT_DEFINITION,
    split: int | None = None,
    visit: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Labelled, split knees with their store position for ``view``, and what was left out.

    ``oaicohort.cohort.query.Cohort(db).knees(..., store=store_path, view=view)``: included, split
    knees with a good volume at ``visit``; knees without one are counted in the returned info.
    The valid extent of each volume (where it holds real data, ``oaimodels.data.crops``) is in
    the ``extent_*`` columns.
    """
    from oaicohort.cohort.query import Cohort  # imported here: only this entry point needs the database
    from oaicohort.db.staleness import check_frame_not_stale

    cohort = Cohort(db)
    split_arg = "latest" if split is None else split
    labelled = cohort.knees(definition=definition, split=split_arg)
    check_frame_not_stale(db, labelled)
    if labelled.empty:
        raise DatabaseStateError(
            f"no labelled knees for definition {definition!r}; run `oai label` and `oai split` first"
        )
    if labelled.attrs.get("split_id") is None:
        raise DatabaseStateError(f"no split for definition {definition!r}; run `oai split` first")
    merged = cohort.knees(definition=definition, split=split_arg, role=["train", "test"], store=store_path,
                          view=view, volume_visit=visit)  # fmt: skip
    info = {k: merged.attrs["volumes"][k] for k in ("labelled_knees", "knees_without_volume")}
    columns = [c for c in (*KNEE_COLUMNS, "site") if c in merged.columns]
    params = VolumeStore.open(store_path).params
    table = validate_knees(knee_extents(db, store_path, params, view, merged[columns], visit))
    table.attrs.update({k: v for k, v in merged.attrs.items() if k != "volumes"})  # definition, split
    return table, info
