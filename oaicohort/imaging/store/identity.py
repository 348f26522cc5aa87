"""Which store a run writes, and moving a store: the write side of a store's identity.

Reading finds a store by the UUID in its attributes, wherever it is now
(``oaicohort.db.stores.find_store``). Writing asks more, because a wrong guess drops index rows or
mixes two stores' volumes:

- a missing or empty store path where the database indexes a store is never replaced silently (an
  unmounted disk must not become a fresh store, nor let a run forget the real store's rows): an
  error, unless the caller says ``--replace-missing-store``;
- a store whose database row names another path was moved (or copied) without the move being
  recorded: an error naming ``oai store relocate OLD NEW``;
- another store in the place of the indexed one is treated as the indexed one being missing.

``claim_store`` checks before a run creates or opens its store; ``record_store`` records it (inside
the run's writer lock) and gives a store made before identities its UUID: the id the database
already uses for its path, so the existing rows stay linked. ``relocate_store`` records a move.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from oaicohort.db import Database
from oaicohort.db.schema import Store, Volume
from oaicohort.db.stores import StoreRef, canonical_path, new_store_id, row_at, row_of, volume_count
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.checks import StoreIntegrityError
from oaicohort.imaging.store.volume_store import StoreError, VolumeStore

log = logging.getLogger(__name__)


class StoreMovedError(StoreIntegrityError):
    """A store is indexed at another path: moved (or copied) without ``oai store relocate``."""


def is_present(root: Path) -> bool:
    """Whether ``root`` holds anything (a missing or empty folder is where a new store may go)."""
    return root.exists() and any(root.iterdir())


def params_at(root: Path) -> PreprocessParams:
    """The parameters of the store at ``root``, or the full preset where there is none yet: what a
    run given no preset preprocesses with."""
    return VolumeStore.open(root).params if is_present(root) else PreprocessParams.full()


def _moved(ref: StoreRef, indexed_at: str) -> StoreMovedError:
    if (Path(indexed_at) / "zarr.json").is_file():
        return StoreMovedError(
            f"{ref.path}: a copy of the store at {indexed_at} (the same id {ref.id}), which is the one the "
            "database indexes; nothing was changed. Write to that store, or make a new store at another path"
        )
    return StoreMovedError(
        f"{ref.path}: the database indexes this store (id {ref.id}) at {indexed_at}, which is gone; nothing "
        f"was changed. If it moved here, record the move first: oai store relocate {indexed_at} {ref.path}"
    )


def check_store_present(indexed_rows: int, root: Path) -> None:
    """A missing or empty store path that the database indexes volumes in is never replaced silently."""
    if indexed_rows:
        where = "does not exist" if not root.exists() else "is empty"
        raise StoreIntegrityError(
            f"{root}: the database indexes {indexed_rows} volume(s) in a store at this path, but the path {where} "
            "(an unmounted disk or a moved folder?); nothing was changed. Mount or restore the store (a store "
            "that moved: oai store relocate OLD NEW); to start a new store here instead, give "
            "--replace-missing-store"
        )


def claim_store(db: Database, ref: StoreRef, *, replace_missing_store: bool) -> None:
    """Refuse to write at ``ref`` what would lose index rows or mix stores (see the module doc)."""
    present = is_present(ref.path)
    with db.read() as session:
        here = row_at(session, ref.path)
        here_id = None if here is None else here.id
        here_rows = volume_count(session, here_id)
        mine = row_of(session, ref.id) if present else None
        indexed_at = None if mine is None else mine.path
    if indexed_at is not None and indexed_at != str(ref.path):
        raise _moved(ref, indexed_at)
    if not here_rows or replace_missing_store or (present and ref.id in (None, here_id)):
        return
    if not present:
        check_store_present(here_rows, ref.path)
    raise StoreIntegrityError(
        f"{ref.path}: holds another store (id {ref.id}) than the one the database indexes at this path (id "
        f"{here_id}, {here_rows} volume(s)); nothing was changed. If that store moved, record it with oai store "
        "relocate OLD NEW; to drop its index and use this store here, give --replace-missing-store"
    )


def record_store(db: Database, store: VolumeStore, *, replace_missing_store: bool) -> StoreRef:
    """Record ``store`` (opened for writing) in the database; returns its identity.

    A store made before identities gets the id the database uses for its path (or a new one). A
    store recorded at this path before that is not this one loses its rows only when
    ``replace_missing_store`` says so (``claim_store`` refused otherwise)."""
    with db.write() as session:
        here = row_at(session, store.path)
        if store.ref.id is None:
            store.assign_id(here.id if here is not None else new_store_id())
        ref = store.ref
        if here is not None and here.id != ref.id:
            dropped = volume_count(session, here.id)
            if dropped and not replace_missing_store:
                raise StoreIntegrityError(f"{store.path}: another store's {dropped} volume(s) are indexed here")
            session.execute(delete(Volume).where(Volume.store_id == here.id))
            session.delete(here)
            session.flush()
            if dropped:
                log.warning("%s: removed %d index rows of the store that was at this path", store.path, dropped)
        mine = row_of(session, ref.id)
        if mine is None:
            session.add(Store(id=ref.id, path=str(ref.path)))
        elif mine.path != str(ref.path):
            raise _moved(ref, mine.path)
    return ref


def relocate_store(db: Database, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> dict[str, Any]:
    """Record that the store indexed at ``old`` is now at ``new`` (``oai store relocate``).

    ``new`` must hold that store (its UUID, or for a store made before identities, its parameter
    set) and ``old`` must hold none: a relocation records a move, never a copy."""
    old_path, new_path = canonical_path(old), canonical_path(new)
    if old_path == new_path:
        raise StoreError(f"{old_path}: the old and the new path are the same")
    store = VolumeStore.open(new_path)
    with db.read() as session:
        row = row_at(session, old_path)
        known = row_of(session, store.ref.id)
        hashes = (
            set(session.execute(select(Volume.params_hash).where(Volume.store_id == row.id)).scalars())
            if row
            else set()
        )
    if row is None:
        where = f"; it records the store now at {new_path} at {known.path}" if known is not None else ""
        raise StoreError(f"{old_path}: the database {db.url} records no store at this path{where}; nothing was changed")
    if (old_path / "zarr.json").exists():
        raise StoreError(
            f"{old_path}: still holds a store; a relocation records a move, not a copy (move the folder, or make "
            "a new store with oai preprocess); nothing was changed"
        )
    if store.ref.id not in (None, row.id) or (store.ref.id is None and hashes and store.params_hash not in hashes):
        raise StoreError(
            f"{new_path}: another store (id {store.ref.id}, parameters {store.params_hash[:12]}) than the one "
            f"indexed at {old_path} (id {row.id}); nothing was changed"
        )
    with db.write() as session:
        other = row_at(session, new_path)
        if other is not None and other.id != row.id:
            if volume_count(session, other.id):
                raise StoreError(
                    f"{new_path}: the database indexes another store at this path ({volume_count(session, other.id)} "
                    "volume(s)); nothing was changed"
                )
            session.delete(other)
            session.flush()
        if store.ref.id is None:  # made before identities: it takes the id its rows use
            VolumeStore.open(new_path, mode="r+").assign_id(row.id)
        moved = session.get(Store, row.id)
        assert moved is not None
        moved.moved_from, moved.path = str(old_path), str(new_path)
        count = volume_count(session, row.id)
    log.info("%s -> %s: store %s relocated (%d volume rows)", old_path, new_path, row.id, count)
    return {"store_id": row.id, "old": str(old_path), "new": str(new_path), "volumes": count}
