"""Which knees have a preprocessed volume in a store: the join of cohort knees with the
``volumes`` index that ``oai preprocess`` writes (``Cohort.knees(..., store=PATH)``).

The training layer reads its knees through this, so a cohort-only user asks the same question
("which of these knees can a model read?") without torch.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd
from sqlalchemy import select

from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import Volume
from oaicohort.db.stores import StoreRef, find_store, where_is
from oaicohort.errors import DatabaseStateError

log = logging.getLogger(__name__)


def with_volumes(
    db: Database, frame: pd.DataFrame, store: str | os.PathLike[str] | StoreRef, view: str, visit: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The knees of ``frame`` with a good (``ok``) ``view`` volume of ``visit`` in ``store``, with
    its ``position`` in the store's array as a column, and the counts of the knees before and
    without a volume (``{store, view, labelled_knees, knees_without_volume}``). Raises ``DatabaseStateError`` when the store has no such
    volumes indexed in ``db``."""
    # any view name the store holds (MRI planes, or others such as radiographs): an unknown
    # one finds no volumes and says so below
    with db.read() as session:
        ref = find_store(session, store)  # by its UUID: a store that moved is still found
        volumes = read_frame(
            session,
            select(Volume.knee_id, Volume.position, Volume.status, Volume.visit)
            .where(Volume.store_id == ref.id, Volume.view == view)
            .order_by(Volume.knee_id, Volume.visit, Volume.id),
            ["knee_id", "position", "status", "visit"],
        )
        hint = where_is(session, ref) if volumes.empty else ""
    path = str(ref.path)
    if volumes.empty:
        raise DatabaseStateError(f"no {view} volumes of store {path} are indexed in the database; {hint}")
    # several parameter sets may have written a knee: the newest row wins
    good = volumes[(volumes["status"] == "ok") & (volumes["visit"] == visit)]
    good = good.drop_duplicates("knee_id", keep="last")[["knee_id", "position"]]
    merged = frame.merge(good, on="knee_id", how="left")
    no_volume = merged["position"].isna()
    if no_volume.any():
        log.warning("%d knee(s) have no usable %s volume in %s and are left out", int(no_volume.sum()), view, path)
    out = merged[~no_volume].reset_index(drop=True)
    out["position"] = out["position"].astype("int64")
    counts = {
        "store": path,
        "view": view,
        "labelled_knees": int(len(merged)),
        "knees_without_volume": int(no_volume.sum()),
    }
    return out, counts
