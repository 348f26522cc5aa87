"""Synthetic baseline knee radiographs for a synthetic OAI release, in the X-ray package layout.

``write_radiographs`` gives every subject with a baseline central X-ray reading
(``kXR_SQ_BU00``, read with the toolkit's own reader) one bilateral PA fixed-flexion radiograph:

    <root>/XR/00m/contents.csv                            row "Bilateral PA Fixed Flexion Knee"
    <root>/XR/00m/0.E.1/<ID>/<yyyymmdd>/<8 digits>/001    one DICOM file per series
    <root>/XR/P001/...                                    the same, for participants screened
    <root>/synth_xray_truth.csv                           per knee: true joint centre, KLG, JSW

As in the OAI (OAI_DISTRIBUTIONS.md section 5), the baseline radiograph of some participants
(``screening_share``) was taken at the screening visit: it lies in the screening package
``XR/P001`` (StudyDescription ``OAI^XR^SCREENING^KNEE``, dated 30 days before the one it
replaces) and not in ``XR/00m``. The image is the same either way.

Each knee's joint-space width and osteophytes follow its baseline KLG (the first reading in file
order; a knee without a grade is drawn as KLG 4, the reference's proxy for a replaced knee) and,
more weakly, its latent progression factor from ``synth_truth.csv``. Determinism: every series
draws from ``SeedSequence([seed, subject, crc32("xray")])``.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.release.discovery import KXR_SQ_BU, discover_release
from oaicohort.release.readers import read_kxr
from oaicohort.release.text import load_source
from oaicohort.synth.dicom_writer import RadiographMeta, synth_uid, write_radiograph
from oaicohort.synth.images import read_latents
from oaicohort.synth.radiographs import draw_layout, radiograph_knee, render_radiograph

log = logging.getLogger(__name__)

BILATERAL_PA = "Bilateral PA Fixed Flexion Knee"
PACKAGE_DIR = "XR"
BASELINE_DIR, SCREENING_DIR = "00m", "P001"
STUDIES = {BASELINE_DIR: "OAI^XR^ENROLLMENT", SCREENING_DIR: "OAI^XR^SCREENING^KNEE"}
SCREENING_DAYS_BEFORE = 30
XRAY_TRUTH_FILE = "synth_xray_truth.csv"
TRUTH_COLUMNS = (
    "subject_id",
    "side",
    "folder",
    "klg",
    "latent",
    "centre_row",
    "centre_col",
    "spacing_mm",
    "rows",
    "cols",
    "jsw_medial_mm",
    "jsw_lateral_mm",
    "osteophytes",
    "visit_dir",  # XR/00m, or XR/P001 for a radiograph of the screening visit
)
_RELEASE_CODE = "0.E.1"


@dataclass(frozen=True)
class _RadiographTask:
    subject: int
    grades: dict[str, int]
    latents: dict[str, float]
    seed: int
    size: str
    package_root: str  # the X-ray packages' folder: <root>/XR
    visit_dir: str  # 00m, or P001 for a radiograph of the screening visit


def baseline_grades(release_root: Path) -> dict[int, dict[str, int]]:
    """Baseline KLG per subject and side: the first reading in file order; missing grade -> 4."""
    sources = [s for s in discover_release(release_root) if s.kind == KXR_SQ_BU and s.visit == 0]
    if not sources:
        raise InputFileError(release_root, "no baseline X-ray reading file (kXR_SQ_BU00.txt) in the release")
    frame = read_kxr(load_source(sources[0])).drop_duplicates(["subject_id", "side"], keep="first")
    grades: dict[int, dict[str, int]] = {}
    for subject, side, klg in zip(frame["subject_id"], frame["side"], frame["klg"]):
        grades.setdefault(int(subject), {})[str(side)] = 4 if pd.isna(klg) else int(klg)
    return grades


def _render_task(task: _RadiographTask) -> list[dict[str, object]]:
    rng = np.random.default_rng(np.random.SeedSequence([task.seed, task.subject, zlib.crc32(b"xray")]))
    layout = draw_layout(rng, task.size)
    knees = {side: radiograph_knee(side, task.grades[side], task.latents[side], rng) for side in ("R", "L")}
    image = render_radiograph(knees, layout, rng)
    date = f"2005{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    series_number = int(rng.integers(10_000_000, 100_000_000))
    if task.visit_dir == SCREENING_DIR:  # the same image, taken at the screening visit
        day = dt.datetime.strptime(date, "%Y%m%d") - dt.timedelta(days=SCREENING_DAYS_BEFORE)
        date = day.strftime("%Y%m%d")
    folder = f"{_RELEASE_CODE}/{task.subject}/{date}/{series_number}"
    meta = RadiographMeta(
        patient_id=str(task.subject),
        series_description=BILATERAL_PA,
        study_date=date,
        accession_number=f"0166{task.subject:08d}",
        series_uid=synth_uid("xray-series", task.seed, task.subject),
        study_uid=synth_uid("xray-study", task.seed, task.subject),
        pixel_spacing_mm=layout.spacing_mm,
        study_description=STUDIES[task.visit_dir],
    )
    write_radiograph(Path(task.package_root) / task.visit_dir / folder / "001", image, meta)
    rows = []
    for side, knee in knees.items():
        centre_row, centre_col = layout.centres[side]
        rows.append(
            {
                "subject_id": task.subject,
                "side": side,
                "visit_dir": f"{PACKAGE_DIR}/{task.visit_dir}",
                "folder": folder,
                "klg": knee.klg,
                "latent": f"{knee.latent:.6f}",
                "centre_row": f"{centre_row:.2f}",
                "centre_col": f"{centre_col:.2f}",
                "spacing_mm": f"{layout.spacing_mm:.4f}",
                "rows": layout.rows,
                "cols": layout.cols,
                "jsw_medial_mm": f"{knee.jsw_mm[0]:.3f}",
                "jsw_lateral_mm": f"{knee.jsw_mm[1]:.3f}",
                "osteophytes": len(knee.spurs),
            }
        )
    return rows


def write_radiographs(
    release_root: Path,
    *,
    size: str = "full",
    seed: int = 0,
    workers: int = 1,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    screening_share: float = 0.0,
) -> int:
    """Write a bilateral PA radiograph per subject with a baseline X-ray reading; returns the count.

    ``size``: ``full`` (OAI detector sizes, 0.10-0.20 mm pixels) or ``small`` (a quarter of the
    resolution, for tests and the demo). ``limit`` keeps the first subjects only.
    ``screening_share``: the share of subjects whose radiograph is in the screening package
    (``XR/P001``) instead of ``XR/00m`` (drawn from ``seed``, the same whatever ``limit``).
    """
    release_root = Path(release_root)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    report = progress or no_progress
    if not 0.0 <= screening_share <= 1.0:
        raise ValueError(f"screening_share must be between 0 and 1, not {screening_share}")
    latents = read_latents(release_root / "synth_truth.csv")
    grades = baseline_grades(release_root)
    package = release_root / PACKAGE_DIR
    screened = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(b"screening")])).random(len(grades))
    tasks = []
    for subject, u in zip(sorted(grades), screened):
        if (subject, "R") not in latents or (subject, "L") not in latents:
            raise InputFileError(release_root / "synth_truth.csv", f"no latent for both knees of subject {subject}")
        knee_grades = {side: grades[subject].get(side, 0) for side in ("R", "L")}
        knee_latents = {side: latents[(subject, side)] for side in ("R", "L")}
        visit_dir = SCREENING_DIR if u < screening_share else BASELINE_DIR
        tasks.append(_RadiographTask(subject, knee_grades, knee_latents, seed, size, str(package), visit_dir))
    if limit is not None:
        tasks = tasks[:limit]
    total = len(tasks)
    log.info("writing %d %s bilateral PA radiographs (seed %d, %d workers)", total, size, seed, workers)
    report("radiographs", 0, total)
    truth: list[dict[str, object]] = []
    if workers == 1 or total <= 1:
        results = map(_render_task, tasks)
        for done, rows in enumerate(results, start=1):
            truth.extend(rows)
            report("radiographs", done, total)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
            for done, rows in enumerate(pool.map(_render_task, tasks, chunksize=4), start=1):
                truth.extend(rows)
                report("radiographs", done, total)
    for visit_dir in (BASELINE_DIR, SCREENING_DIR):
        rows = [r for r in truth if r["visit_dir"] == f"{PACKAGE_DIR}/{visit_dir}"]
        if rows or visit_dir == BASELINE_DIR:
            (package / visit_dir).mkdir(parents=True, exist_ok=True)
            _write_contents(package / visit_dir / "contents.csv", rows, STUDIES[visit_dir])
    with (release_root / XRAY_TRUTH_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRUTH_COLUMNS)
        writer.writeheader()
        writer.writerows(truth)
    return total


def _write_contents(path: Path, truth: list[dict[str, object]], study: str) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription", "SeriesDescription"])
        for row in truth:
            if row["side"] != "R":
                continue  # one row per series
            folder = str(row["folder"])
            date = folder.split("/")[2]
            subject = int(row["subject_id"])  # type: ignore[call-overload]
            writer.writerow([folder, subject, date, f"0166{subject:08d}", study, BILATERAL_PA])


def read_xray_truth(release_root: Path) -> dict[tuple[int, str], dict[str, str]]:
    """``synth_xray_truth.csv`` keyed by (subject, side)."""
    path = Path(release_root) / XRAY_TRUTH_FILE
    if not path.is_file():
        raise InputFileError(path, "synthetic radiograph truth not found (run `oai synth --images`)")
    with path.open(newline="") as handle:
        return {(int(r["subject_id"]), r["side"]): r for r in csv.DictReader(handle)}
