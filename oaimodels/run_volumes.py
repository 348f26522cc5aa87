"""A volume's identity travels with its run.

``knees.csv`` records, per knee, the store slot the run read and the sha256 of the volume in it
(``checksum``, the store's own digest: ``oaicohort.imaging.store.slot_checksums``). Whatever
reads a store for the run's knees afterwards (``oai eval``, ``oai explain``, ``oai predict``)
checks each knee's volume first:

- the recorded slot still holds that volume: used as it is;
- the volume is in another slot of the knee (a store rebuilt with the same parameters in
  another order): read from there, and counted as ``relocated``;
- the store holds another volume for that knee, or none: refused, naming the knee, the store
  and both checksums. Scoring another knee's volume under the run's knee names is never silent.

Runs made before the checksums were recorded have none: their knees are followed by the
store's knee keys (the slot must hold that knee, or it is looked up by key) with a warning that
the volumes themselves cannot be checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from oaicohort.errors import OAIError
from oaicohort.imaging.store.selection import knee_name
from oaicohort.imaging.store.slot_checksums import knee_slots, slot_checksums
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaimodels import run_folder as rf

log = logging.getLogger(__name__)

SHOWN = 5  # knees named in an error before "and N more"


class VolumeIdentityError(OAIError):
    """A store does not hold the volume a run was trained or tested on for one of its knees."""


@dataclass(frozen=True)
class VolumeCheck:
    """What the check found: knees checked, knees read from another slot, knees without a checksum."""

    checked: int
    relocated: int
    unverified: int

    def to_dict(self) -> dict[str, int]:
        return {"checked": self.checked, "relocated": self.relocated, "unverified": self.unverified}


def _recorded(knees: pd.DataFrame) -> list[str | None]:
    if rf.CHECKSUM not in knees.columns:
        return [None] * len(knees)
    return [str(c) if isinstance(c, str) and c else None for c in knees[rf.CHECKSUM]]


def _refuse(store: VolumeStore, view: str, run: Path, problems: list[str]) -> VolumeIdentityError:
    more = f" (and {len(problems) - SHOWN} more knee(s))" if len(problems) > SHOWN else ""
    return VolumeIdentityError(
        f"{store.path}: the {view} volume of {'; '.join(problems[:SHOWN])}{more}: not the volume the run "
        f"{run.name} was trained or tested on; the store was rebuilt or changed since the run (evaluate with "
        "the store the run used, or train again)"
    )


def locate_run_volumes(
    store: VolumeStore, view: str, knees: pd.DataFrame, *, visit: int, run: Path
) -> tuple[pd.DataFrame, VolumeCheck]:
    """``knees`` (subject_id, side, position, [checksum]) with ``position`` the slot of ``store``
    that holds each knee's recorded volume; refuses a store that does not hold it."""
    out = knees.reset_index(drop=True).copy()
    recorded = _recorded(out)
    positions = [int(p) for p in out["position"]]
    current = slot_checksums(store, view, positions)
    keys = store.knee_keys(view)
    problems: list[str] = []
    relocated = unverified = 0
    for i, row in enumerate(out.itertuples(index=False)):
        name, want, pos = knee_name(row.subject_id, row.side), recorded[i], positions[i]
        if want is not None and current[i] == want:
            continue
        candidates = [p for p in knee_slots(store, view, int(row.subject_id), str(row.side), visit) if p != pos]
        if want is None:  # a run without checksums: follow the knee keys
            unverified += 1
            if 0 <= pos < len(keys) and int(keys[pos]) == knee_key(int(row.subject_id), str(row.side)):
                continue
            if len(candidates) == 1:
                positions[i], relocated = candidates[0], relocated + 1
                continue
            problems.append(f"knee {name} (slot {pos} holds another knee, and the run records no checksum)")
            continue
        found = [p for p, c in zip(candidates, slot_checksums(store, view, candidates), strict=True) if c == want]
        if found:
            positions[i], relocated = found[0], relocated + 1
            continue
        have = (current[i] or "")[:12] or "nothing"
        problems.append(f"knee {name} (slot {pos} holds {have}, the run recorded {want[:12]})")
    if problems:
        raise _refuse(store, view, run, problems)
    if relocated:
        log.warning(
            "%s: %d of run %s's knees are in other slots than when the run was made (the store was rebuilt); "
            "each is read from the slot that holds its own volume",
            store.path,
            relocated,
            run.name,
        )
    if unverified:
        log.warning(
            "run %s records no volume checksums (made before they were recorded): %d knee(s) followed by "
            "the store's knee keys, their volumes not checked",
            run.name,
            unverified,
        )
    out["position"] = positions
    return out, VolumeCheck(len(out), relocated, unverified)


def check_known_volumes(
    store: VolumeStore, view: str, chosen: pd.DataFrame, run_knees: pd.DataFrame, *, visit: int, run: Path
) -> VolumeCheck:
    """Refuse ``chosen`` slots (subject_id, side, visit, position) that hold, for a knee of the run
    at the run's ``visit``, another volume than the run recorded; other knees are new scans."""
    if rf.CHECKSUM not in run_knees.columns or chosen.empty:
        return VolumeCheck(0, 0, 0)
    recorded = {
        (int(s), str(d)): str(c)
        for s, d, c in zip(run_knees["subject_id"], run_knees["side"], run_knees[rf.CHECKSUM], strict=True)
        if isinstance(c, str) and c
    }
    known = pd.Series(
        [(int(s), str(d)) in recorded for s, d in zip(chosen["subject_id"], chosen["side"], strict=True)],
        index=chosen.index,
    )
    if "visit" in chosen.columns:
        known &= chosen["visit"].astype(int) == visit
    mine = chosen[known]
    if mine.empty:
        return VolumeCheck(0, 0, 0)
    current = slot_checksums(store, view, [int(p) for p in mine["position"]])
    problems = []
    for row, have in zip(mine.itertuples(index=False), current, strict=True):
        want = recorded[(int(row.subject_id), str(row.side))]
        if have != want:
            shown = have[:12] if have else "nothing"
            problems.append(
                f"knee {knee_name(row.subject_id, row.side)} (slot {int(row.position)} holds {shown}, "
                f"the run recorded {want[:12]})"
            )
    if problems:
        raise _refuse(store, view, run, problems)
    return VolumeCheck(len(mine), 0, 0)
