"""The sha256 of the volume in a store slot: what identifies a knee's volume wherever it is stored.

It is the checksum the index records and the digest the store keeps (``checks``), so a run can
record, per knee, the volume it read, and a later command can tell whether a store still holds
that volume and in which slot (a store rebuilt with the same parameters holds the same bytes,
perhaps in another slot order). A store written before the digests existed has its volumes
hashed on the spot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from oaicohort.imaging.store.checks import DIGESTS, has_digests
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key, volume_checksum


def slot_checksums(store: VolumeStore, view: str, positions: Sequence[int]) -> list[str | None]:
    """The checksum of each slot's volume (None for a slot out of range or never written)."""
    group: Any = store.group  # zarr's stubs type members as arrays or groups
    digests = np.asarray(group[f"{DIGESTS}/{view}"][:]) if has_digests(group, view) else None
    keys = store.knee_keys(view)
    out: list[str | None] = []
    for position in (int(p) for p in positions):
        if not 0 <= position < store.capacity(view):
            out.append(None)
        elif digests is not None and position < len(digests) and digests[position].any():
            out.append(digests[position].tobytes().hex())
        elif position < len(keys) and keys[position] < 0:
            out.append(None)  # an unused slot
        else:
            out.append(volume_checksum(store.read(view, position)))
    return out


def knee_slots(store: VolumeStore, view: str, subject_id: int, side: str, visit: int) -> list[int]:
    """The slots that hold a volume of this knee at ``visit`` (the store's own keys)."""
    keys, visits = store.knee_keys(view), store.visits(view)
    n = min(len(keys), len(visits))
    return [int(p) for p in np.flatnonzero((keys[:n] == knee_key(subject_id, side)) & (visits[:n] == visit))]
