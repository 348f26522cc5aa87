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

CONTENTS_COLUMNS = ("Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription",
                    "SeriesDescription")
# the right knee gets the full protocol, the left the reduced one (as in the OAI)
KNEE_PROTOCOL = {
    "RIGHT": ("MP_LOCATOR_RIGHT", "COR_IW_TSE_RIGHT", "SAG_3D_DESS_RIGHT", "COR_MPR_RIGHT",
              "AX_MPR_RIGHT", "SAG_IW_TSE_RIGHT", "SAG_T2_MAP_RIGHT", "SAG_T2_CALC_RIGHT",
              "COR_T1_3D_FLASH_RIGHT"),
    "LEFT": ("MP_LOCATOR_LEFT", "COR_IW_TSE_LEFT", "SAG_3D_DESS_LEFT", "COR_MPR_LEFT",
             "AX_MPR_LEFT", "SAG_IW_TSE_LEFT"),
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


def contents_rows(cohort: SynthCohort) -> dict[str, list[str]]:
    """The columns of ``00m/contents.csv``."""
    rng = stream(cohort.seed, "contents")
    n = cohort.n_subjects
    release = np.where(rng.random(n) < P_RELEASE_E, RELEASES[1], RELEASES[0])
    study_date = yyyymmdd(cohort.enrolment + rng.integers(0, 30, n).astype("timedelta64[D]"))
    thigh = rng.random(n) < P_THIGH_STUDY
    per_subject = len(KNEE_PROTOCOL["RIGHT"]) + len(KNEE_PROTOCOL["LEFT"]) + len(THIGH_PROTOCOL)
    series_ids = (10_000_000 + rng.choice(90_000_000, size=int(n * per_subject * 1.1) + 16,
                                          replace=False)).astype(str)
    barcodes = (10_000_000 + rng.choice(90_000_000, size=3 * n, replace=False)).astype(str)
    u_pad = rng.random(n * per_subject)
    u_pad_kind = rng.random(n * per_subject)
    u_zero = rng.random(n * 3)
    u_rescan = rng.random(n * per_subject)

    columns: dict[str, list[str]] = {name: [] for name in CONTENTS_COLUMNS}
    next_series = 0
    row_index = 0

    def add(i: int, study: int, study_name: str, description: str) -> None:
        nonlocal next_series
        pid = str(cohort.subject_id[i])
        barcode = BARCODE_PREFIX + barcodes[3 * i + study]
        if u_zero[3 * i + study] < P_BARCODE_NO_ZEROS:
            barcode = barcode.lstrip("0")
        columns["Folder"].append(f"{release[i]}/{pid}/{study_date[i]}/{series_ids[next_series]}")
        next_series += 1
        columns["ParticipantID"].append(pid)
        columns["StudyDate"].append(study_date[i])
        columns["Barcode"].append(barcode)
        columns["StudyDescription"].append(f"OAI^MR^ENROLLMENT^{study_name}")
        columns["SeriesDescription"].append(description)

    for i in range(n):
        if not cohort.has_mri[i]:
            continue
        rescans: list[tuple[int, str, str]] = []
        studies = [(0, "RIGHT"), (1, "LEFT")] + ([(2, "THIGH")] if thigh[i] else [])
        for study, name in studies:
            protocol = THIGH_PROTOCOL if name == "THIGH" else KNEE_PROTOCOL[name]
            for description in protocol:
                if name != "THIGH" and not cohort.has_dess[i, study] and description.startswith(DESS_DERIVED):
                    continue
                written = description
                if u_pad[row_index] < P_PADDED:
                    written = _pad(description, u_pad_kind[row_index])
                add(i, study, name, written)
                if u_rescan[row_index] < P_RESCAN:
                    rescans.append((study, name, description))
                row_index += 1
        for study, name, description in rescans:
            add(i, study, name, description)
    return columns
