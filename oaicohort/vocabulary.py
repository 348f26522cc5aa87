"""The toolkit's core words, each defined once and imported everywhere else.

Every value here is also what the database stores (and, for the statuses and roles, what its
CHECK constraints allow): a knee's ``side``, a label's ``label``, a volume's ``view`` and
``status``, a split assignment's ``role``, an ingest run's ``status``.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Label = Literal["none", "fast", "slow"]
CLASSES: Final[tuple[Label, ...]] = get_args(Label)
"""Progression classes in model-output order: no progression, fast (< 72 months), slow (72-96)."""
PROGRESSION_CLASSES: Final[tuple[Label, ...]] = ("fast", "slow")
"""The classes that make up the binary target "progressor"."""

EventType = Literal["progression", "knee_replacement"]
EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)
"""What ended a knee's time under a time-to-event definition (none: censored); a knee replacement
is a competing event of its own."""

MriView = Literal["sag", "cor", "ax"]
MRI_VIEWS: Final[tuple[MriView, ...]] = get_args(MriView)
"""DESS reslicing planes, in the order stores, models and reports list them."""

XRAY_VIEW: Final = "xray"
"""The knee ROI of the baseline bilateral PA radiograph, stored beside the MRI views."""
STORE_VIEWS: Final[tuple[str, ...]] = (*MRI_VIEWS, XRAY_VIEW)
"""Every array a volume store can hold."""

Side = Literal["R", "L"]
SIDES: Final[tuple[Side, ...]] = get_args(Side)

Sex = Literal["M", "F"]
SEXES: Final[tuple[Sex, ...]] = get_args(Sex)

Role = Literal["train", "test"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

IngestStatus = Literal["running", "succeeded", "unchanged", "failed", "interrupted"]
INGEST_STATUSES: Final[tuple[IngestStatus, ...]] = get_args(IngestStatus)

VolumeStatus = Literal["ok", "failed"]
VOLUME_STATUSES: Final[tuple[VolumeStatus, ...]] = get_args(VolumeStatus)

DEFAULT_DEFINITION: Final = "panfilov2022"
"""The label definition every command uses unless told otherwise (the paper's, quirks included)."""
