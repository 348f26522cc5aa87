"""A volume store's identity: ``StoreRef`` is the one way to name a store.

A ``StoreRef`` holds the store's canonical path (``canonical_path``: the one place a store path is
made canonical) and its id, the UUID written into the store's ``zarr.json`` attributes
(``store_id``) when it was made. The ``stores`` table records where each store is, and ``volumes``
rows point at their store by that id. A store that moved is therefore still the same store: it is
found by its UUID wherever it is, and ``oai store relocate OLD NEW`` records the move
(``oaicohort.imaging.store.identity``, which also guards every write).

A store made before identities carries no ``store_id`` until a run first opens it for writing;
until then it is known by the path the database records for it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oaicohort.db.schema import Store, Volume

log = logging.getLogger(__name__)

STORE_ID = "store_id"  # the zarr.json attribute


def canonical_path(path: str | os.PathLike[str]) -> Path:
    """A store path as the database records it: user folder expanded, absolute, links resolved."""
    return Path(path).expanduser().resolve()


def new_store_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class StoreRef:
    """A volume store: where it is (canonical) and who it is (its UUID; None before it has one)."""

    path: Path
    id: str | None

    @classmethod
    def at(cls, store: str | os.PathLike[str] | StoreRef) -> StoreRef:
        """The store at ``store`` (a path, made canonical) with the ``store_id`` its ``zarr.json``
        attributes carry; None when there is no store there or it was made before identities."""
        if isinstance(store, StoreRef):
            return store
        root = canonical_path(store)
        try:
            meta = json.loads((root / "zarr.json").read_text(encoding="utf-8"))
            return cls(root, str(uuid.UUID(str(meta["attributes"][STORE_ID]))))
        except (OSError, ValueError, KeyError, TypeError):
            return cls(root, None)

    def __str__(self) -> str:
        return str(self.path)


# --------------------------------------------------------------------------- what the database records


def row_at(session: Session, path: Path) -> Store | None:
    """The store the database records at ``path``."""
    return session.execute(select(Store).where(Store.path == str(path))).scalar_one_or_none()


def row_of(session: Session, store_id: str | None) -> Store | None:
    return None if store_id is None else session.get(Store, store_id)


def find_store(session: Session, store: str | os.PathLike[str] | StoreRef) -> StoreRef:
    """``store`` as this database knows it: by the UUID in its attributes (wherever it is now), else
    by the path recorded for it (a store made before identities, or a path whose disk is gone)."""
    ref = StoreRef.at(store)
    if ref.id is None:
        row = row_at(session, ref.path)
        return ref if row is None else StoreRef(ref.path, row.id)
    row = row_of(session, ref.id)
    if row is not None and row.path != str(ref.path):
        log.warning(
            "%s: found by its id; the database records this store at %s (if it moved, record the move: "
            "oai store relocate %s %s)",
            ref.path,
            row.path,
            row.path,
            ref.path,
        )
    return ref


def volume_count(session: Session, store_id: str | None) -> int:
    """How many ``volumes`` rows the database holds for the store ``store_id``."""
    if store_id is None:
        return 0
    return int(
        session.execute(select(func.count()).select_from(Volume).where(Volume.store_id == store_id)).scalar_one()
    )


def moved_away(session: Session, path: Path) -> str | None:
    """Where a store recorded at ``path`` before ``oai store relocate`` is now, if one was."""
    rows = session.execute(select(Store.path).where(Store.moved_from == str(path))).scalars().all()
    return rows[-1] if rows else None


def where_is(session: Session, ref: StoreRef) -> str:
    """A hint for a store that has no volumes indexed under ``ref``: moved, or never indexed here."""
    moved = moved_away(session, ref.path)
    if moved is not None:
        return f"the store that was at {ref.path} was moved to {moved} (oai store relocate); give that path"
    return f"run `oai preprocess --store {ref.path}` with this --db"


def store_id_at(session: Session, store: str | os.PathLike[str] | StoreRef) -> str:
    """The id this database knows the store at ``store`` by; a store it does not know yet is recorded
    (by the id its attributes carry, else a new one), so volume rows can name it."""
    ref = find_store(session, store)
    if ref.id is not None and row_of(session, ref.id) is not None:
        return ref.id
    store_id = ref.id or new_store_id()
    session.add(Store(id=store_id, path=str(ref.path)))
    session.flush()
    return store_id
