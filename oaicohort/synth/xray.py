"""Central X-ray readings: ``kXR_SQ_BU{vv}.txt``, one row per subject x knee x reading project.

Real releases differ between files, so these do too (OAI_FORMATS.md): file-name case, SIDE
written bare or labelled, ``READPRJ`` in lower case in one file, KLG labelled (``2: 2``), bare
or both in one column, fractional OARSI grades, and missing codes. A reading by a second
project duplicates (ID, SIDE), sometimes with another grade and sometimes written first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oaicohort.synth.tables import MISSING_FORM, PROSTHESIS, TECHNICAL, Style, coded, numbers
from oaicohort.synth.trajectories import (
    KL_MISSING,
    KL_PROSTHESIS,
    KL_TECHNICAL,
    SynthCohort,
    stream,
)
from oaicohort.visits import XRAY_VISITS

SIDE_LABELS = {1: "Right", 2: "Left"}
GRADE_LABELS = {g: str(g) for g in range(5)}
FILE_VERSION = "1.6"
# OARSI features graded with the KLG: medial/lateral joint-space narrowing, osteophytes
# (femur/tibia, medial/lateral), sclerosis, chondrocalcinosis, attrition
FEATURES = ("JSM", "JSL", "OSFM", "OSFL", "OSTM", "OSTL", "SCFM", "SCFL", "SCTM", "SCTL", "CHM", "CHL", "ATTM", "ATTL")
# expected grade of each feature by KLG 0..4 (narrowing and osteophytes follow the KLG)
FEATURE_MEANS = {
    "JSM": (0.0, 0.15, 0.6, 1.6, 2.6),
    "JSL": (0.0, 0.05, 0.2, 0.6, 1.2),
    "OSFM": (0.0, 0.5, 1.1, 1.8, 2.5),
    "OSFL": (0.0, 0.4, 0.9, 1.5, 2.2),
    "OSTM": (0.0, 0.4, 0.9, 1.5, 2.2),
    "OSTL": (0.0, 0.3, 0.8, 1.3, 2.0),
    "SCFM": (0.0, 0.05, 0.2, 0.6, 1.2),
    "SCFL": (0.0, 0.02, 0.1, 0.3, 0.7),
    "SCTM": (0.0, 0.05, 0.3, 0.8, 1.5),
    "SCTL": (0.0, 0.02, 0.1, 0.3, 0.7),
    "CHM": (0.05, 0.05, 0.08, 0.1, 0.12),
    "CHL": (0.04, 0.04, 0.06, 0.08, 0.1),
    "ATTM": (0.0, 0.0, 0.05, 0.3, 1.0),
    "ATTL": (0.0, 0.0, 0.02, 0.1, 0.4),
}
P_FRACTIONAL_JSN = 0.03  # JSN sometimes graded in half steps (``1.5``)
P_BARE_TECHNICAL = 0.3  # `.T` written without its label
P_EMPTY_MISSING = 0.2  # a missing KLG left empty rather than coded


@dataclass(frozen=True)
class XrayFileLayout:
    """How one visit's file is written."""

    file_name: str
    side_style: Style
    kl_style: Style
    readprj_header: str


LAYOUTS: dict[int, XrayFileLayout] = {
    0: XrayFileLayout("kXR_SQ_BU00.txt", "labelled", "labelled", "READPRJ"),
    1: XrayFileLayout("kXR_SQ_BU01.txt", "labelled", "labelled", "READPRJ"),
    3: XrayFileLayout("kXR_SQ_BU03.txt", "bare", "bare", "READPRJ"),
    5: XrayFileLayout("kxr_sq_bu05.txt", "labelled", "mixed", "readprj"),
    6: XrayFileLayout("kXR_SQ_BU06.txt", "labelled", "labelled", "READPRJ"),
    8: XrayFileLayout("KXR_SQ_BU08.txt", "bare", "bare", "READPRJ"),
    10: XrayFileLayout("kXR_SQ_BU10.txt", "labelled", "labelled", "READPRJ"),
}
SECOND_PROJECT = {15: 37, 37: 42, 42: 15}


def _grades(kl: np.ndarray, feature: str, rng: np.random.Generator) -> np.ndarray:
    means = np.asarray(FEATURE_MEANS[feature])
    value = np.clip(np.round(means[np.clip(kl, 0, 4)] + rng.normal(0, 0.3, kl.shape)), 0, 3)
    return value


def _missing_code(kl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a reader wrote where there is no KLG."""
    u = rng.random(kl.shape)
    technical = np.where(u < P_BARE_TECHNICAL, ".T", TECHNICAL)
    missing = np.where(u < P_EMPTY_MISSING, "", MISSING_FORM)
    return np.select(
        [kl == KL_PROSTHESIS, kl == KL_TECHNICAL, kl == KL_MISSING], [PROSTHESIS, technical, missing], ""
    ).astype(object)


def xray_columns(cohort: SynthCohort, visit: int) -> dict[str, np.ndarray]:
    """The columns of a visit's ``kXR_SQ_BU`` file, rows ordered by ID then SIDE."""
    rng = stream(cohort.seed, f"kxr{visit:02d}")
    layout = LAYOUTS[visit]
    j = XRAY_VISITS.index(visit)
    subject, side = np.nonzero(cohort.xray_row[:, :, j])
    kl = cohort.xray_kl[subject, side, j].astype(np.int64)
    project = cohort.reading_project[subject]
    order_key = np.where(cohort.second_first[subject, side, j], 1, 0)
    s2, k2 = np.nonzero(cohort.second_row[:, :, j])
    subject = np.concatenate([subject, s2])
    side = np.concatenate([side, k2])
    kl = np.concatenate([kl, cohort.second_kl[s2, k2, j].astype(np.int64)])
    project = np.concatenate([project, [SECOND_PROJECT[int(p)] for p in cohort.reading_project[s2]]])
    order_key = np.concatenate([order_key, np.where(cohort.second_first[s2, k2, j], 0, 2)])
    order = np.lexsort((order_key, side, subject))
    subject, side, kl, project = subject[order], side[order], kl[order], project[order]

    valid = kl >= 0
    missing_code = _missing_code(kl, rng)
    columns: dict[str, np.ndarray] = {
        "ID": cohort.subject_id[subject].astype(str).astype(object),
        "SIDE": coded(side + 1, SIDE_LABELS, layout.side_style, rng),
        layout.readprj_header: project.astype(str).astype(object),
        "VERSION": np.full(subject.shape[0], FILE_VERSION, dtype=object),
        f"V{visit:02d}XRKL": np.where(
            valid, coded(np.clip(kl, 0, 4), GRADE_LABELS, layout.kl_style, rng), missing_code
        ),
    }
    for feature in FEATURES:
        grades = _grades(kl, feature, rng)
        text = coded(grades.astype(np.int64), {g: str(g) for g in range(4)}, layout.kl_style, rng)
        if feature in ("JSM", "JSL"):
            half = (rng.random(grades.shape) < P_FRACTIONAL_JSN) & (grades > 0)
            text = np.where(half, numbers(grades - 0.5, 1), text)
        columns[f"V{visit:02d}XR{feature}"] = np.where(valid, text, missing_code)
    return columns
