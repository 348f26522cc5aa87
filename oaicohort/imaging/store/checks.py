"""The volume store is trusted only after it is checked.

- Every slot's sha256 (the checksum the database index records) is also kept in the store, in
  ``checksums/<view>`` (uint8 (N, 32); all zeros: not recorded). Reads verify a volume against
  it the first time each process reads that slot, so a damaged or missing chunk stops training
  or evaluation with the knee, view and store path named; it is never read as zeros. (Stores
  written before these digests existed have none; ``oai store verify`` checks them against the
  database.)
- A store is created in a temporary sibling folder and renamed into place: two processes
  creating the same new store cannot mix their files; the second gets ``ConcurrentWriteError``
  (exit 3).
- A store path that is missing (an unmounted disk, a moved folder) while the database indexes
  volumes there is an error: no command drops those index rows or silently creates an empty
  replacement (``identity.claim_store``, for every kind of run).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.errors import ConcurrentWriteError, OAIError

DIGESTS = "checksums"
DIGEST_BYTES = 32
_DIGEST_CHUNK = 4096


class StoreIntegrityError(OAIError):
    """A stored volume is missing or does not match its checksum; or the store itself is missing."""


def create_digest_array(group: Any, view: str) -> None:
    group.create_array(
        f"{DIGESTS}/{view}", shape=(0, DIGEST_BYTES), chunks=(_DIGEST_CHUNK, DIGEST_BYTES), dtype="uint8", fill_value=0
    )


def has_digests(group: Any, view: str) -> bool:
    try:
        group[f"{DIGESTS}/{view}"]
    except KeyError:
        return False
    return True


def grow_digests(group: Any, view: str, capacity: int) -> None:
    if has_digests(group, view):
        group[f"{DIGESTS}/{view}"].resize((capacity, DIGEST_BYTES))


def record_digest(group: Any, view: str, position: int, checksum: str) -> None:
    if has_digests(group, view):
        group[f"{DIGESTS}/{view}"][position] = np.frombuffer(bytes.fromhex(checksum), dtype=np.uint8)


def knee_label(key: int) -> str:
    if key < 0:
        return "an unused slot"
    subject_id, code = divmod(int(key), 10)
    return f"knee {subject_id} {'R' if code == 1 else 'L' if code == 2 else '?'}"


class FirstReadVerifier:
    """Checks each slot against its recorded digest the first time this process reads it."""

    def __init__(self, group: Any, path: Path) -> None:
        self.group = group
        self.path = path
        self.digests: dict[str, np.ndarray | None] = {}
        self.keys: dict[str, np.ndarray] = {}
        self.verified: dict[str, set[int]] = {}

    def _digests(self, view: str) -> np.ndarray | None:
        if view not in self.digests:
            self.digests[view] = (
                np.asarray(self.group[f"{DIGESTS}/{view}"][:]) if has_digests(self.group, view) else None
            )
        return self.digests[view]

    def _key(self, view: str, position: int) -> int:
        if view not in self.keys:
            self.keys[view] = np.asarray(self.group[f"knee_keys/{view}"][:])
        keys = self.keys[view]
        return int(keys[position]) if position < len(keys) else -1

    def _fail(self, view: str, position: int, problem: str) -> StoreIntegrityError:
        return StoreIntegrityError(
            f"{self.path}: {view} volume of {knee_label(self._key(view, position))} (slot {position}) {problem}; "
            "the store is damaged: run `oai store verify` and re-run `oai preprocess` (nothing was trained on it)"
        )

    def missing_chunk(self, view: str, position: int) -> StoreIntegrityError | None:
        """The error for a slot whose chunk file is missing, unless the slot was never written."""
        if self._key(view, position) >= 0:
            return self._fail(view, position, "has no data on disk (missing chunk file)")
        digests = self._digests(view)
        if digests is not None and position < len(digests) and digests[position].any():
            return self._fail(view, position, "has no data on disk (missing chunk file)")
        return None

    def check(self, view: str, position: int, volume: np.ndarray) -> None:
        done = self.verified.setdefault(view, set())
        if position in done:
            return
        digests = self._digests(view)
        if digests is not None and position < len(digests) and digests[position].any():
            actual = hashlib.sha256(np.ascontiguousarray(volume, dtype=np.uint8).data).digest()
            if actual != digests[position].tobytes():
                raise self._fail(
                    view,
                    position,
                    f"does not match its checksum ({actual.hex()[:12]} != {digests[position].tobytes().hex()[:12]})",
                )
        done.add(position)


def create_atomically(root: Path, build: Callable[[Path], None]) -> None:
    """Build a new store in a temporary sibling and rename it to ``root`` in one step.

    ``root`` may be absent or an empty folder. When another process created a store there
    first, ours is discarded and ``ConcurrentWriteError`` raised (exit 3): the other store is
    left exactly as its creator wrote it."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        build(tmp)
        try:
            os.rename(tmp, root)  # atomic; replaces only an absent or empty folder
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise ConcurrentWriteError(
                    f"{root}: another process created a store at this path at the same moment; "
                    "nothing of this run was written there - run the command again"
                ) from None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
