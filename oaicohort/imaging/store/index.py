"""A volume store's index in the ``volumes`` table: listing a store's rows, and verifying the
store against them (checksums, knee keys, slots claimed twice, orphans).

The layout and the rules the index relies on (data before its row) are in ``volume_store``. A
store's rows are found by its identity (``oaicohort.db.stores``): the UUID in its attributes,
wherever the store is now.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import Knee, Volume
from oaicohort.db.stores import StoreRef, find_store
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key, volume_checksum


def indexed_volumes(
    db: Database, store: str | os.PathLike[str] | StoreRef | VolumeStore, view: str | None = None
) -> pd.DataFrame:
    """The ``volumes`` rows of one store (all parameter sets), one per (knee, visit, view).

    Columns: ``knee_id, subject_id, side, visit, view, position, status, reason`` plus
    ``series_id, params_hash, checksum, shape, spacing_mm, notes, array_path``.
    """
    with db.read() as session:
        ref = find_store(session, store.ref if isinstance(store, VolumeStore) else store)
    query = (
        select(
            Volume.knee_id,
            Knee.subject_id,
            Knee.side,
            Volume.visit,
            Volume.view,
            Volume.position,
            Volume.status,
            Volume.reason,
            Volume.series_id,
            Volume.params_hash,
            Volume.checksum,
            Volume.shape,
            Volume.spacing_mm,
            Volume.notes,
            Volume.array_path,
        )
        .join(Knee, Knee.id == Volume.knee_id)
        .where(Volume.store_id == ref.id)
        .order_by(Volume.view, Volume.knee_id, Volume.visit)
    )
    if view is not None:
        query = query.where(Volume.view == view)
    columns = [
        "knee_id", "subject_id", "side", "visit", "view", "position", "status", "reason",
        "series_id", "params_hash", "checksum", "shape", "spacing_mm", "notes", "array_path",
    ]  # fmt: skip
    with db.read() as session:
        frame = read_frame(session, query, columns)
    frame["position"] = frame["position"].astype("Int64")
    return frame


def verify_store(
    db: Database,
    store_path: str | os.PathLike[str],
    *,
    progress: Any = None,
) -> dict[str, Any]:
    """Recompute the checksum of every indexed ok volume of the store and compare with the DB.

    Returns ``{"checked", "ok", "mismatches": [...], "orphans": {view: [positions]},
    "unused": {view: count}, "failed_rows", "other_params_rows"}``. Mismatches (bad checksum,
    unreadable chunk, wrong knee key, position outside the array, two rows on one slot) are
    errors; orphans (data with a key but no row: an interrupted run) are only reported.
    """
    store = VolumeStore.open(store_path)
    with db.read() as session:
        ref = find_store(session, store.ref)
        rows = session.execute(
            select(
                Volume.view,
                Volume.position,
                Volume.checksum,
                Volume.visit,
                Volume.status,
                Volume.params_hash,
                Knee.subject_id,
                Knee.side,
            )
            .join(Knee, Knee.id == Volume.knee_id)
            .where(Volume.store_id == ref.id)
            .order_by(Volume.view, Volume.position)
        ).all()
    current = [r for r in rows if r.params_hash == store.params_hash]
    ok_rows = [r for r in current if r.status == "ok"]
    report: dict[str, Any] = {
        "store_path": str(store.path),
        "store_id": ref.id,
        "params_hash": store.params_hash,
        "checked": 0,
        "ok": 0,
        "mismatches": [],
        "orphans": {},
        "unused": {},
        "failed_rows": sum(r.status == "failed" for r in current),
        "other_params_rows": len(rows) - len(current),
    }
    keys = {view: store.knee_keys(view) for view in store.views}
    visits = {view: store.visits(view) for view in store.views}
    claimed: dict[tuple[str, int], int] = {}
    total = len(ok_rows)
    for n, row in enumerate(ok_rows, start=1):
        report["checked"] += 1
        where = {
            "view": row.view,
            "position": row.position,
            "subject_id": row.subject_id,
            "side": row.side,
            "visit": row.visit,
        }
        problem = None
        if row.view not in keys or row.position is None or not 0 <= row.position < len(keys[row.view]):
            problem = "position outside the stored array"
        elif (row.view, row.position) in claimed:
            problem = "slot indexed twice"
        else:
            claimed[(row.view, row.position)] = n
            if (
                keys[row.view][row.position] != knee_key(row.subject_id, row.side)
                or visits[row.view][row.position] != row.visit
            ):
                problem = (
                    f"slot holds knee key {int(keys[row.view][row.position])} visit "
                    f"{int(visits[row.view][row.position])}, index says "
                    f"{knee_key(row.subject_id, row.side)} visit {row.visit}"
                )
            else:
                try:
                    actual = volume_checksum(store.read(row.view, row.position))
                except Exception as exc:  # a corrupt chunk fails to decode
                    problem = f"unreadable: {type(exc).__name__}: {exc}"
                else:
                    if actual != row.checksum:
                        problem = f"checksum {actual[:12]} != indexed {str(row.checksum)[:12]}"
        if problem:
            report["mismatches"].append({**where, "problem": problem})
        else:
            report["ok"] += 1
        if progress is not None:
            progress("verify", n, total)
    for view in store.views:
        used = {pos for (v, pos) in claimed if v == view}
        orphans = [int(p) for p in np.flatnonzero(keys[view] >= 0) if int(p) not in used]
        report["orphans"][view] = orphans
        report["unused"][view] = int((keys[view] < 0).sum())
    report["warnings"] = []
    if not rows and any(report["orphans"].values()):
        report["warnings"].append(
            f"the database {db.url} indexes nothing in this store although it holds volumes: "
            "is --db the database the store was made with?"
        )
    return report
