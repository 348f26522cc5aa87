"""Which stored volumes a command works on: knee lists (``--knees``) and the slots of a store.

Shared by ``oai predict``, ``oai explain``, ``oai store export`` and ``oai store qc``. A knee is
named ``SUBJECT`` + side, written ``9000001R``, ``9000001:R`` or ``9000001_L`` (case ignored);
``--knees`` takes such names separated by commas or whitespace, or a file of them (one per line,
or a CSV with ``subject_id`` and ``side`` columns).

Slots come from the database index when one is given (status ok, the store's parameter set: the
source of truth), else from the store's own knee keys (a slot whose key is set holds complete
data; when a knee occupies several slots, as after an interrupted run, the last one is used).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError, OAIError
from oaicohort.imaging.store.volume_store import VolumeStore, split_knee_key

if TYPE_CHECKING:
    from oaicohort.db import Database

log = logging.getLogger(__name__)

_KNEE = re.compile(r"^\s*(\d+)\s*[:_\- ]?\s*([RL])\s*$", re.IGNORECASE)

SLOT_COLUMNS = ("subject_id", "side", "visit", "position")


class SelectionError(OAIError):
    """A knee list or filter selects nothing, or names a knee the source lacks."""


def parse_knee(text: str, *, source: str | Path = "--knees", line: int | None = None) -> tuple[int, str]:
    """``(subject_id, side)`` of a knee name such as ``9000001R`` or ``9000001:L``."""
    m = _KNEE.match(text)
    if not m:
        raise InputFileError(
            source, f"{text.strip()!r} is not a knee; write SUBJECT and side, e.g. 9000001R or 9000001:L", line=line
        )
    return int(m.group(1)), m.group(2).upper()


def parse_knees(spec: str | Sequence[str] | None) -> list[tuple[int, str]] | None:
    """A ``--knees`` value (names, or a file of them) as ``(subject_id, side)`` pairs; None: all."""
    if spec is None:
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    knees: list[tuple[int, str]] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            knees.extend(_knees_file(path))
            continue
        for token in re.split(r"[,\s]+", item.strip()):
            if token:
                knees.append(parse_knee(token))
    if not knees:
        raise SelectionError("--knees names no knee")
    return list(dict.fromkeys(knees))  # order kept, duplicates dropped


def _knees_file(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    header = [c.strip().lower() for c in lines[0].split(",")] if lines else []
    if "subject_id" in header and "side" in header:
        frame = pd.read_csv(path, dtype=str)
        frame.columns = [c.strip().lower() for c in frame.columns]
        return [
            parse_knee(f"{row.subject_id}{row.side}", source=path, line=i + 2)
            for i, row in enumerate(frame.itertuples(index=False))
        ]
    return [parse_knee(t, source=path, line=i + 1) for i, t in enumerate(lines) if t.strip() and not t.startswith("#")]


def knee_name(subject_id: int, side: str) -> str:
    """The name a knee has in file names and tables (``9000001R``)."""
    return f"{int(subject_id)}{side}"


def store_slots(
    store: VolumeStore,
    view: str,
    *,
    db: Database | None = None,
    visit: int | None = 0,
) -> pd.DataFrame:
    """Used slots of ``view``: ``subject_id, side, visit, position`` (+ ``knee_id`` with a db)."""
    if db is not None:
        from oaicohort.imaging.store.index import indexed_volumes

        rows = indexed_volumes(db, store, view)
        rows = rows[(rows["status"] == "ok") & (rows["params_hash"] == store.params_hash)]
        frame = rows[["knee_id", "subject_id", "side", "visit", "position"]].copy()
        frame["position"] = frame["position"].astype(np.int64)
    else:
        keys, visits = store.knee_keys(view), store.visits(view)
        used = np.flatnonzero(keys >= 0)
        pairs = [split_knee_key(int(k)) for k in keys[used]]
        frame = pd.DataFrame(
            {
                "subject_id": [p[0] for p in pairs],
                "side": [p[1] for p in pairs],
                "visit": visits[used].astype(np.int64),
                "position": used.astype(np.int64),
            }
        )
        dup = frame.duplicated(["subject_id", "side", "visit"], keep="last")
        if dup.any():
            log.warning("%s: %d knee(s) occupy several %s slots; using the last of each", store.path, dup.sum(), view)
            frame = frame[~dup]
    if visit is not None:
        frame = frame[frame["visit"] == visit]
    return frame.sort_values(["subject_id", "side", "visit"]).reset_index(drop=True)


def select_slots(
    slots: pd.DataFrame, knees: Iterable[tuple[int, str]] | None, *, where: str, limit: int | None = None
) -> pd.DataFrame:
    """The rows of ``slots`` for ``knees`` in the order given (every one must be there), or all."""
    if knees is None:
        out = slots
    else:
        wanted = list(knees)
        index = {(int(s), str(d)): i for i, (s, d) in enumerate(zip(slots["subject_id"], slots["side"]))}
        missing = [knee_name(*k) for k in wanted if k not in index]
        if missing:
            raise SelectionError(
                f"{where} holds no volume of knee(s) {', '.join(missing[:10])}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            )
        out = slots.iloc[[index[k] for k in wanted]]
    if limit is not None:
        out = out.iloc[:limit]
    if out.empty:
        raise SelectionError(f"{where}: no volume selected")
    return out.reset_index(drop=True)
