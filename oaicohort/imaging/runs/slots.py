"""Store slots through the database, and shards of one store written by many processes at once.

A run reserves the slots it needs as ``slot_claims`` rows (``SlotAllocator``), inside the
database's write transaction, which is serialised across processes (PostgreSQL: an advisory
transaction lock; SQLite: ``BEGIN IMMEDIATE``). Under that lock the allocator re-reads the
array's shape from disk, hands out empty and orphan slots (neither indexed ``ok`` nor claimed)
first and only then grows the array, so two shards never take one slot and no shard undoes
another's growth. The small shared arrays (knee keys, visits, digests: many slots per chunk) are
written under the same lock (``runs.mri``), since a chunk write is a read-modify-write.

Who may write a store at once (``run_locks``): an unsharded run has the store alone (the file
lock of ``writer.writer_lock``, and on PostgreSQL an exclusive session lock on the store); shards
(``Shard``, ``--shard K/N``, PostgreSQL only) share the store and each holds its own shard's
lock, so a shard runs once at a time, and a shared lock on its N, so shards of another N (which
would select other subjects and write some series twice) are refused while they run.
PostgreSQL drops a session lock with its connection, so a killed run blocks nobody. Its claims
stay until the next run of the same shard (or an unsharded run) takes them back (``take_back``):
its reserved slots are then reusable orphans.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oaicohort.db import Database
from oaicohort.db.schema import SlotClaim, Volume
from oaicohort.errors import ConcurrentWriteError, OAIError
from oaicohort.imaging.store.volume_store import VolumeStore

log = logging.getLogger(__name__)

UNSHARDED = "all"  # the owner of an unsharded run's claims
# advisory lock namespaces (the two-int form: apart from the one-bigint writer lock of db.locks)
_STORE_LOCKS = 0x0A1C
_SHARD_LOCKS = 0x0A1D
_COUNT_LOCKS = 0x0A1E  # shared, one per shard count N of a store: shards of another N are refused
_MAX_SHARDS = 4096  # the shard counts a running shard's lock is looked up among


class ShardError(OAIError):
    """A ``--shard`` that cannot be used: malformed, or on a database that has one writer."""

    exit_code = 2


@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n`` (1-based: ``1/3``, ``2/3``, ``3/3``): the subjects whose id hashes to it.

    A series belongs to shard ``k`` when ``crc32(str(subject_id)) % n == k - 1``: a deterministic
    partition (both knees of a subject in one shard) that does not depend on database ids, so a
    shard rerun on any machine selects the same series."""

    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m:
            raise ShardError(f"--shard {text!r}: expected K/N, e.g. 1/3 (shard K of N, K from 1 to N)")
        k, n = int(m[1]), int(m[2])
        if n < 1:
            raise ShardError(f"--shard {text}: N must be at least 1")
        if k == 0:
            raise ShardError(f"--shard {text}: shards count from 1 (1/{n} to {n}/{n}), not from 0")
        if k > n:
            raise ShardError(f"--shard {text}: K must be between 1 and N ({n})")
        return cls(k, n)

    @property
    def label(self) -> str:
        return f"{self.k}/{self.n}"

    def owns(self, subject_id: int) -> bool:
        return zlib.crc32(str(int(subject_id)).encode()) % self.n == self.k - 1


def check_shard(db: Database, shard: Shard | None) -> None:
    """Shards need a database that takes concurrent writers' slots atomically: PostgreSQL."""
    if shard is not None and db.is_sqlite:
        raise ShardError(
            f"--shard {shard.label}: a SQLite database has one writer; shards of one store need PostgreSQL "
            "(--db postgresql+psycopg://...); on SQLite run oai preprocess without --shard"
        )


# --------------------------------------------------------------------------- who writes the store


def _key(text: str) -> int:
    """A signed 32-bit lock key for ``text``."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


@contextmanager
def run_locks(db: Database, store: VolumeStore, shard: Shard | None) -> Iterator[None]:
    """Hold the store (unsharded) or one shard of it for the run (PostgreSQL session locks)."""
    if db.is_sqlite:
        yield
        return
    store_id = str(store.ref.id)
    with db.engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")  # held by the session, not a transaction

        def take(function: str, space: int, name: str) -> bool:
            return bool(conn.exec_driver_sql(f"SELECT {function}({space}, {_key(name)})").scalar())

        try:
            if shard is None:
                if not take("pg_try_advisory_lock", _STORE_LOCKS, store_id):
                    raise ConcurrentWriteError(
                        f"{store.path}: shards (--shard) or another oai preprocess are writing this store; wait "
                        "for them to finish"
                    )
            else:
                if not take("pg_try_advisory_lock_shared", _STORE_LOCKS, store_id):
                    raise ConcurrentWriteError(
                        f"{store.path}: an oai preprocess without --shard is writing this store; wait for it to finish"
                    )
                if not take("pg_try_advisory_lock", _SHARD_LOCKS, f"{store_id}:{shard.label}"):
                    raise ConcurrentWriteError(
                        f"{store.path}: shard {shard.label} of this store is being written by another process; "
                        "wait for it to finish"
                    )
                take("pg_try_advisory_lock_shared", _COUNT_LOCKS, f"{store_id}:n={shard.n}")
                other = _other_shard_count(conn, store_id, shard.n)
                if other is not None:
                    raise ConcurrentWriteError(
                        f"{store.path}: shards of N={other} are writing this store; shard {shard.label} would "
                        f"select other subjects than theirs and write some series twice: run every shard of a "
                        f"store with the same N (K/{other} while they run)"
                    )
            yield
        finally:
            conn.exec_driver_sql("SELECT pg_advisory_unlock_all()")


def _other_shard_count(conn: Any, store_id: str, n: int) -> int | None:
    """The N of another running process's shards of this store, if any (its count lock in pg_locks:
    an advisory lock on two int4 keys shows them as classid and objid, objsubid 2)."""
    held = {
        int(objid)
        for (objid,) in conn.exec_driver_sql(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            f"AND classid = {_COUNT_LOCKS} AND pid <> pg_backend_pid()"
        )
    }
    for m in range(1, _MAX_SHARDS + 1):
        if m != n and _key(f"{store_id}:n={m}") & 0xFFFFFFFF in held:
            return m
    return None


def owner_of(shard: Shard | None) -> str:
    return UNSHARDED if shard is None else shard.label


def take_back(db: Database, store: VolumeStore, shard: Shard | None) -> int:
    """Drop the claims a killed earlier run of this owner left (an unsharded run: every claim of
    the store, since it has the store alone); returns how many."""
    where = [SlotClaim.store_id == store.ref.id]
    if shard is not None:
        where.append(SlotClaim.owner == shard.label)
    with db.write() as session:
        count = session.execute(delete(SlotClaim).where(*where)).rowcount  # type: ignore[attr-defined]
    if count:
        log.info("%s: %d slot(s) reserved by an interrupted run are reusable again", store.path, count)
    return int(count or 0)


# --------------------------------------------------------------------------- slots


def claim_slots(session: Session, store: VolumeStore, view: str, count: int, owner: str) -> list[int]:
    """Claim ``count`` slots of ``view`` for ``owner`` (lowest free first, then new ones at the
    end); call inside ``db.write()``, whose lock makes reading and growing the shape safe."""
    used = set(
        session.execute(
            select(Volume.position).where(
                Volume.store_id == store.ref.id,
                Volume.params_hash == store.params_hash,
                Volume.view == view,
                Volume.status == "ok",
            )
        ).scalars()
    )
    used.update(
        session.execute(select(SlotClaim.position).where(SlotClaim.store_id == store.ref.id, SlotClaim.view == view))
        .scalars()
        .all()
    )
    store.reload(view)  # another shard may have grown the array since this process looked
    capacity = store.capacity(view)
    taken: list[int] = []
    for position in range(capacity):
        if len(taken) == count:
            break
        if position not in used:
            taken.append(position)
    if len(taken) < count:
        store.grow(view, capacity + count - len(taken))
        taken.extend(range(capacity, capacity + count - len(taken)))
    session.add_all(SlotClaim(store_id=store.ref.id, view=view, position=p, owner=owner) for p in taken)
    return taken


class SlotAllocator:
    """Hands out the store positions a run writes: claimed in the database, reserved in bulk."""

    def __init__(self, db: Database, store: VolumeStore, views: tuple[str, ...], owner: str = UNSHARDED) -> None:
        self.db = db
        self.store = store
        self.owner = owner
        self.free: dict[str, list[int]] = {view: [] for view in views}

    def reserve(self, view: str, count: int) -> None:
        """Claim enough slots that ``count`` more volumes fit (one transaction, one resize)."""
        missing = count - len(self.free[view])
        if missing <= 0:
            return
        with self.db.write() as session:
            taken = claim_slots(session, self.store, view, missing, self.owner)
        self.free[view] = sorted({*self.free[view], *taken}, reverse=True)

    def take(self, view: str) -> int:
        if not self.free[view]:
            self.reserve(view, 1)
        return self.free[view].pop()

    def release(self) -> None:
        """The run is over: its claims go (slots it did not index become reusable orphans)."""
        with self.db.write() as session:
            session.execute(
                delete(SlotClaim).where(SlotClaim.store_id == self.store.ref.id, SlotClaim.owner == self.owner)
            )
        for view in self.free:
            self.free[view] = []
