"""The baseline image package index, ``00m/contents.csv`` (comma-separated).

One row per MR series: ``Folder`` (``<release>/<ParticipantID>/<yyyymmdd>/<8-digit series>``,
relative to ``00m``), ``ParticipantID``, ``StudyDate``, ``Barcode``, ``StudyDescription``,
``SeriesDescription``. Each knee is a study (``OAI^MR^ENROLLMENT^RIGHT``/``LEFT``) with the OAI
knee protocol, plus a thigh study. Real indexes have quirks that readers must survive, so this one
has them too: padded descriptions, rescans (a repeated series later in the file; the last row
wins), barcodes that lost their leading zeros, and knees without a DESS series.
"""

from __future__ import annotations

import numpy as np

from oaicohort.synth.tables import yyyymmdd
from oaicohort.synth.trajectories import SynthCohort, stream

CONTENTS_COLUMNS = ("Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription", "SeriesDescription")
# the right knee gets the full protocol, the left the reduced one (as in the OAI)
KNEE_PROTOCOL = {
    "RIGHT": (
        "MP_LOCATOR_RIGHT",
        "COR_IW_TSE_RIGHT",
        "SAG_3D_DESS_RIGHT",
        "COR_MPR_RIGHT",
        "AX_MPR_RIGHT",
        "SAG_IW_TSE_RIGHT",
        "SAG_T2_MAP_RIGHT",
        "SAG_T2_CALC_RIGHT",
        "COR_T1_3D_FLASH_RIGHT",
    ),
    "LEFT": (
        "MP_LOCATOR_LEFT",
        "COR_IW_TSE_LEFT",
        "SAG_3D_DESS_LEFT",
        "COR_MPR_LEFT",
        "AX_MPR_LEFT",
        "SAG_IW_TSE_LEFT",
    ),
}
THIGH_PROTOCOL = ("MP_LOCATOR_THIGH", "AX_T1_THIGH", "PRESCRIPTION_THIGH")
# DESS and its multiplanar reformats are missing together
DESS_DERIVED = ("SAG_3D_DESS_", "COR_MPR_", "AX_MPR_")
RELEASES = ("0.C.2", "0.E.1")
P_RELEASE_E = 0.1
P_THIGH_STUDY = 0.85
P_PADDED = 0.02  # SeriesDescription with padding spaces
P_BARCODE_NO_ZEROS = 0.05  # barcode written as a number
P_RESCAN = 0.015  # series acquired again
BARCODE_PREFIX = "0166"


def _pad(description: str, u: float) -> str:
    """Leading or 1-3 trailing spaces, as seen in real indexes."""
    return f" {description}" if u < 0.25 else description + " " * (1 + int(u * 12) % 3)


STUDIES = ("RIGHT", "LEFT", "THIGH")
# one row per series a fully imaged subject gets: (study index, description)
_TEMPLATE: tuple[tuple[int, str], ...] = (
    *((0, d) for d in KNEE_PROTOCOL["RIGHT"]),
    *((1, d) for d in KNEE_PROTOCOL["LEFT"]),
    *((2, d) for d in THIGH_PROTOCOL),
)


def contents_rows(cohort: SynthCohort) -> dict[str, list[str]]:
    """The columns of ``00m/contents.csv``: subjects in ID order, each subject's rescans after
    its other series."""
    rng = stream(cohort.seed, "contents")
    n = cohort.n_subjects
    release = np.where(rng.random(n) < P_RELEASE_E, RELEASES[1], RELEASES[0])
    study_date = yyyymmdd(cohort.enrolment + rng.integers(0, 30, n).astype("timedelta64[D]"))
    thigh = rng.random(n) < P_THIGH_STUDY
    barcodes = np.char.add(BARCODE_PREFIX, (10_000_000 + rng.choice(90_000_000, size=3 * n, replace=False)).astype(str))
    barcodes = np.where(rng.random(3 * n) < P_BARCODE_NO_ZEROS, np.char.lstrip(barcodes, "0"), barcodes)

    study_of = np.asarray([study for study, _ in _TEMPLATE])
    description_of = np.asarray([d for _, d in _TEMPLATE], dtype=object)
    from_dess = np.asarray([d.startswith(DESS_DERIVED) for _, d in _TEMPLATE])
    subject = np.repeat(np.arange(n), len(_TEMPLATE))
    template = np.tile(np.arange(len(_TEMPLATE)), n)
    study = study_of[template]
    knee_has_dess = cohort.has_dess[subject, np.minimum(study, 1)]
    keep = cohort.has_mri[subject] & ((study < 2) | thigh[subject]) & ~(from_dess[template] & ~knee_has_dess)
    subject, template, study = subject[keep], template[keep], study[keep]

    rows = subject.size
    description = description_of[template]
    padded = rng.random(rows) < P_PADDED
    padding_kind = rng.random(rows)
    written = description.copy()
    written[padded] = [_pad(d, u) for d, u in zip(description[padded], padding_kind[padded])]
    rescan = np.flatnonzero(rng.random(rows) < P_RESCAN)
    # a rescan repeats the series (unpadded) after the subject's other rows
    index = np.concatenate([np.arange(rows), rescan])
    is_rescan = np.concatenate([np.zeros(rows, dtype=bool), np.ones(rescan.size, dtype=bool)])
    order = np.lexsort((np.arange(index.size), is_rescan, subject[index]))
    index, is_rescan = index[order], is_rescan[order]
    subject, study = subject[index], study[index]
    written = np.where(is_rescan, description[index], written[index])
    series = (10_000_000 + rng.choice(90_000_000, size=index.size, replace=False)).astype(str)

    pid = cohort.subject_id[subject].astype(str)
    date = study_date[subject]
    return {
        "Folder": [f"{r}/{p}/{d}/{s}" for r, p, d, s in zip(release[subject], pid, date, series)],
        "ParticipantID": pid.tolist(),
        "StudyDate": list(date),
        "Barcode": barcodes[3 * subject + study].tolist(),
        "StudyDescription": [f"OAI^MR^ENROLLMENT^{STUDIES[k]}" for k in study],
        "SeriesDescription": list(written),
    }
