"""``write_release``: a synthetic OAI release in the real file formats (OAI_FORMATS.md).

Layout written under ``out``::

    OAICompleteData_ASCII/Enrollees.txt, AllClinical00..11.txt, SubjectChar00.txt,
        Outcomes99.txt, kXR_SQ_BU{00,01,03,05,06,08,10}.txt (file-name case varies)
    00m/contents.csv          baseline MR series index (series folders: oaicohort.synth.images)
    synth_truth.csv           subject_id,side,latent,label_hint (never part of a real release)

``latent`` is the per-knee progression factor (standard normal, correlation 0.5 between the two
knees of a person) that multiplies the hazard of KLG progression; ``label_hint`` is what the knee
truly did, read the way the reference label algorithm reads it but free of drop-outs, missed
readings and reader error (``fast``: first KLG rise to a grade other than 1, or a replacement, by
36 months; ``slow``: by 96 months; ``none`` otherwise). Labels derived from the files differ from
it wherever the release hides or distorts the truth, as a real release does.

The same ``(subjects, seed)`` always gives byte-identical files.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oaicohort.errors import OAIError
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.synth.allclinical import YES_NO, allclinical_columns, subjectchar_columns
from oaicohort.synth.mri_index import contents_rows
from oaicohort.synth.tables import NOT_EXPECTED, coded, write_table
from oaicohort.synth.trajectories import CLINIC_MONTHS, CLINIC_VISITS, SynthCohort, simulate_cohort, stream
from oaicohort.synth.xray import LAYOUTS, xray_columns
from oaicohort.visits import XRAY_VISITS
from oaicohort.vocabulary import SIDES

log = logging.getLogger(__name__)

OAI_SIZE = 4796  # participants enrolled in the OAI
MAX_SUBJECTS = 1_000_000  # OAI ids are 7 digits starting with 9
ASCII_DIR = "OAICompleteData_ASCII"
TRUTH_FILE = "synth_truth.csv"
CONTENTS_FILE = "00m/contents.csv"
TRUTH_COLUMNS = ("subject_id", "side", "latent", "label_hint")

SEX_LABELS = {1: "Male", 2: "Female"}
RACE_LABELS = {0: "Other Non-white", 1: "White or Caucasian", 2: "Black or African American", 3: "Asian"}
COHORT_LABELS = {1: "Progression", 2: "Incidence", 3: "Non-exposed control group"}
VISIT_LABELS = {
    0: "Baseline",
    1: "12-month",
    2: "18-month",
    3: "24-month",
    4: "30-month",
    5: "36-month",
    6: "48-month",
    7: "60-month",
    8: "72-month",
    9: "84-month",
    10: "96-month",
    11: "108-month",
}
REPLACEMENT_SEEN = {
    0: "No replacement seen on any FU xray",
    1: "Yes, replacement seen on FU xray",
    2: "No FU xrays of this knee",
}
CONFIRMATION = {1: "Confirmed", 2: "Not confirmed"}
REPLACEMENT_TYPE = {1: "Total", 2: "Partial"}
P_PARTIAL_REPLACEMENT = 0.1
P_UNCONFIRMED_REPLACEMENT = 0.05
P_SYMPTOMATIC = 0.8  # of knees with radiographic OA: makes the subject "Progression" cohort
P_CONTROL = 0.06  # of subjects without radiographic OA: the non-exposed control group
DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True)
class SynthSummary:
    """What ``write_release`` wrote."""

    root: Path
    subjects: int
    knees: int
    seed: int
    files: tuple[str, ...]  # relative to root, forward slashes
    rows: dict[str, int] = field(default_factory=dict)  # data rows per file
    xray_readings: int = 0
    image_series: int = 0
    knee_replacements: int = 0  # knees with a replacement recorded in Outcomes99 (baseline or follow-up)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = str(self.root)
        data["files"] = list(self.files)
        return data


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OAIError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / TRUTH_FILE).exists():
        # refuse to mix synthetic files into a real release or an unrelated folder
        raise OAIError(
            f"{out}: folder is not empty and holds no synthetic release ({TRUTH_FILE}); choose an empty or new folder"
        )


def _listed_folders(contents: Path) -> set[str]:
    """Series folders listed in a contents.csv (first column), empty if there is none."""
    if not contents.is_file():
        return set()
    with open(contents, encoding="utf-8") as fh:
        next(fh, None)
        return {line.split(",", 1)[0] for line in fh if line.strip()}


def _remove_stale_series(visit_dir: Path, old: set[str], new: set[str]) -> int:
    """Delete image series of an earlier synthetic release that the new index no longer lists,
    so that a rewritten release does not carry another seed's images. Only folders that the old
    synthetic index listed are touched."""
    removed = 0
    for folder in sorted(old - new):
        path = visit_dir / folder
        if path.is_dir() and visit_dir.resolve() in path.resolve().parents:
            shutil.rmtree(path)
            removed += 1
            for parent in path.parents:  # tidy the emptied date/participant/release folders
                if parent == visit_dir or any(parent.iterdir()):
                    break
                parent.rmdir()
    return removed


def enrollees_columns(cohort: SynthCohort) -> dict[str, np.ndarray]:
    rng = stream(cohort.seed, "enrollees")
    kl0 = cohort.kl_clinic[:, :, 0].max(axis=1)
    u = rng.random(cohort.n_subjects)
    group = np.where((kl0 >= 2) & (u < P_SYMPTOMATIC), 1, np.where((kl0 == 0) & (u < P_CONTROL), 3, 2))
    n = cohort.n_subjects
    return {
        "ID": cohort.subject_id.astype(str).astype(object),
        "VERSION": np.full(n, "1.4", dtype=object),
        "V00SITE": cohort.site.astype(object),
        "V00COHORT": coded(group, COHORT_LABELS, "labelled", rng),
        "P02SEX": coded(np.where(cohort.female, 2, 1), SEX_LABELS, "labelled", rng),
        "P02RACE": coded(cohort.race, RACE_LABELS, "labelled", rng),
        "P02HISP": coded(cohort.hispanic.astype(np.int64), YES_NO, "labelled", rng),
        "V00IMAGESC": coded(cohort.has_mri.astype(np.int64), YES_NO, "labelled", rng),
    }


def _visit_code(visit: int | None) -> str:
    return NOT_EXPECTED if visit is None else f"{visit}: {VISIT_LABELS[visit]}"


def _knee_outcome(cohort: SynthCohort, i: int, side: int, rng: np.random.Generator) -> dict[str, str]:
    """Outcomes99 fields of one knee, consistent with its X-ray rows and the visits attended."""
    attended = [v for v, a in zip(CLINIC_VISITS, cohort.attended[i]) if a]
    xray = [v for v in attended if v in XRAY_VISITS]
    followup_xray = [v for v in xray if v > 0]
    month = float(cohort.tkr_month[i, side])
    seen_after = [] if np.isnan(month) else [v for v in attended if CLINIC_MONTHS[CLINIC_VISITS.index(v)] >= month]
    fields = {
        "KRPSN": "",
        "KBLRP": "0: No",
        "KDAYS": "",
        "KVSPR": NOT_EXPECTED,
        "KVSAF": NOT_EXPECTED,
        "KXRPR": NOT_EXPECTED,
        "KXRAF": NOT_EXPECTED,
        "KRPCF": NOT_EXPECTED,
        "KTLPR": NOT_EXPECTED,
    }
    known = not np.isnan(month) and bool(seen_after)  # a replacement after the last contact is unknown
    if not known:
        fields["KRPSN"] = f"{0 if followup_xray else 2}: {REPLACEMENT_SEEN[0 if followup_xray else 2]}"
        return fields
    before = [v for v in attended if CLINIC_MONTHS[CLINIC_VISITS.index(v)] < month]
    xray_after = [v for v in xray if CLINIC_MONTHS[CLINIC_VISITS.index(v)] >= month]
    xray_before = [v for v in xray if CLINIC_MONTHS[CLINIC_VISITS.index(v)] < month]
    seen = 1 if any(v > 0 for v in xray_after) else (0 if followup_xray else 2)
    confirmation = 2 if rng.random() < P_UNCONFIRMED_REPLACEMENT else 1
    kind = 2 if rng.random() < P_PARTIAL_REPLACEMENT else 1
    fields.update(
        KRPSN=f"{seen}: {REPLACEMENT_SEEN[seen]}",
        KBLRP="1: Yes" if month == 0 else "0: No",
        KDAYS="" if month == 0 else str(max(1, int(month * DAYS_PER_MONTH - rng.integers(0, 30)))),
        KVSPR=_visit_code(before[-1] if before else None),
        KVSAF=_visit_code(seen_after[0]),
        KXRPR=_visit_code(xray_before[-1] if xray_before else None),
        KXRAF=_visit_code(xray_after[0] if xray_after else None),
        KRPCF=f"{confirmation}: {CONFIRMATION[confirmation]}",
        KTLPR=f"{kind}: {REPLACEMENT_TYPE[kind]}",
    )
    return fields


def outcomes_columns(cohort: SynthCohort) -> dict[str, list[str]]:
    """``Outcomes99.txt``: knee replacements per knee (lower-case ``id`` as in the real file)."""
    rng = stream(cohort.seed, "outcomes99")
    n = cohort.n_subjects
    columns: dict[str, list[str]] = {"id": [str(s) for s in cohort.subject_id], "VERSION": ["3.2"] * n}
    per_side: list[list[dict[str, str]]] = [
        [_knee_outcome(cohort, i, side, rng) for i in range(n)] for side in range(2)
    ]
    for side, letter in enumerate("RL"):
        for key in per_side[side][0]:
            columns[f"V99E{letter}{key}"] = [f[key] for f in per_side[side]]
    hip = rng.random((n, 2)) < 0.02
    for side, letter in enumerate("RL"):
        columns[f"V99E{letter}HRPSN"] = [
            "1: Yes, replacement seen on FU xray" if h else "0: No replacement seen on any FU xray"
            for h in hip[:, side]
        ]
    return columns


def truth_columns(cohort: SynthCohort) -> dict[str, list[str]]:
    ids = np.repeat(cohort.subject_id, 2).astype(str)
    return {
        "subject_id": list(ids),
        "side": list(SIDES) * cohort.n_subjects,
        "latent": [f"{x:.6f}" for x in cohort.latent.reshape(-1)],
        "label_hint": list(cohort.label_hint.reshape(-1)),
    }


def write_release(
    out: Path, *, subjects: int = OAI_SIZE, seed: int = 0, progress: ProgressCallback | None = None
) -> SynthSummary:
    """Write a synthetic OAI release of ``subjects`` participants under ``out``.

    ``out`` must be new, empty, or a previous synthetic release (whose files are rewritten).
    """
    if not 1 <= subjects <= MAX_SUBJECTS:
        raise OAIError(f"subjects must be between 1 and {MAX_SUBJECTS}, got {subjects}")
    if seed < 0:
        raise OAIError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out)
    _check_target(out)
    report = progress or no_progress
    started = time.perf_counter()
    cohort = simulate_cohort(subjects, seed)
    ascii_dir = Path(ASCII_DIR)
    outcomes = outcomes_columns(cohort)
    previous_series = _listed_folders(out / CONTENTS_FILE)
    jobs: list[tuple[Path, Any, dict[str, str]]] = [
        # the truth file first: it marks the folder as synthetic, so an interrupted run can be redone
        (Path(TRUTH_FILE), lambda: truth_columns(cohort), {"delimiter": ","}),
        (ascii_dir / "Enrollees.txt", lambda: enrollees_columns(cohort), {}),
        *[
            (ascii_dir / f"AllClinical{v:02d}.txt", (lambda v=v: allclinical_columns(cohort, v)), {})
            for v in CLINIC_VISITS
        ],
        (ascii_dir / "SubjectChar00.txt", lambda: subjectchar_columns(cohort), {}),
        # this one with Windows line ends, as files edited on a PC come
        (ascii_dir / "Outcomes99.txt", lambda: outcomes, {"line_end": "\r\n"}),
        *[(ascii_dir / LAYOUTS[v].file_name, (lambda v=v: xray_columns(cohort, v)), {}) for v in XRAY_VISITS],
        (Path(CONTENTS_FILE), lambda: contents_rows(cohort), {"delimiter": ","}),
    ]
    rows: dict[str, int] = {}
    task = "synthesising OAI release"
    report(task, 0, len(jobs))
    for done, (relative, build, options) in enumerate(jobs, start=1):
        rows[relative.as_posix()] = write_table(out / relative, build(), **options)
        report(task, done, len(jobs))
    stale = _remove_stale_series((out / CONTENTS_FILE).parent, previous_series, _listed_folders(out / CONTENTS_FILE))
    if stale:
        log.info("removed %d image series of the earlier synthetic release in %s", stale, out)
    summary = SynthSummary(
        root=out,
        subjects=subjects,
        knees=2 * subjects,
        seed=seed,
        files=tuple(rows),
        rows=rows,
        xray_readings=sum(n for name, n in rows.items() if name.lower().startswith(f"{ASCII_DIR.lower()}/kxr")),
        image_series=rows[CONTENTS_FILE],
        knee_replacements=sum(
            int(blrp.startswith("1") or bool(days))
            for letter in "RL"
            for blrp, days in zip(outcomes[f"V99E{letter}KBLRP"], outcomes[f"V99E{letter}KDAYS"])
        ),
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info("synthetic release of %d subjects (seed %d) written to %s in %.1f s", subjects, seed, out, summary.seconds)
    return summary
