"""Synthetic images for a synthetic OAI release: release orchestration.

``write_images`` reads the release's baseline ``contents.csv`` and ``synth_truth.csv`` and writes
a sagittal 3D DESS series (``oaicohort.synth.mri_anatomy`` phantom, ``oaicohort.synth.dicom_writer``
files, one per slice) for every DESS row, like the real release.

Determinism: every series draws from ``SeedSequence([seed, subject, side, crc32(folder)])`` and
all UIDs are derived from the same inputs, so the same seed gives the same bytes whatever the
number of workers.
"""

from __future__ import annotations

import csv
import logging
import math
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oaicohort.errors import InputFileError
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.synth.dicom_writer import SeriesMeta, synth_uid, write_series
from oaicohort.synth.mri_anatomy import render_knee_volume
from oaicohort.synth.raster import ImageGeometry, image_geometry

log = logging.getLogger(__name__)

DESS_DESCRIPTIONS = {"SAG_3D_DESS_LEFT": "L", "SAG_3D_DESS_RIGHT": "R"}


@dataclass(frozen=True)
class _SeriesTask:
    folder: str
    latent: float
    side: str
    entropy: tuple[int, ...]
    geometry: ImageGeometry
    meta: SeriesMeta


def _strip_row(row: dict[str | None, str | None]) -> dict[str, str]:
    return {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}


def _integer(path: Path, row: dict[str, str], column: str, line: int) -> int:
    try:
        return int(row[column])
    except ValueError:
        raise InputFileError(path, f"{column} {row[column]!r} is not an integer", line=line, column=column) from None


def read_latents(path: Path) -> dict[tuple[int, str], float]:
    if not path.is_file():
        raise InputFileError(path, "synth_truth.csv not found (write the clinical synth first)")
    latents: dict[tuple[int, str], float] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"subject_id", "side", "latent"} - {(h or "").strip() for h in reader.fieldnames or []}
        if missing:
            raise InputFileError(path, f"missing column(s) {sorted(missing)}", line=1)
        for line, raw in enumerate(reader, start=2):
            row = _strip_row(raw)
            subject = _integer(path, row, "subject_id", line)
            side = row["side"].upper()[:1]
            if side not in ("L", "R"):
                raise InputFileError(path, f"side {row['side']!r} is not R or L", line=line, column="side")
            try:
                latent = float(row["latent"])
            except ValueError:
                latent = math.nan
            if not math.isfinite(latent):
                raise InputFileError(path, f"latent {row['latent']!r} is not a number", line=line, column="latent")
            latents[(subject, side)] = latent
    return latents


class SeriesNumbers:
    """``SeriesNumber`` of each row of an image index: 1, 2, ... per participant in file order, as a
    scanner numbers the series of a session; a rescan, listed after the series it replaces, gets
    the larger number, so that the images alone tell which one is the later."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def next(self, participant: str) -> int:
        self.count[participant] = self.count.get(participant, 0) + 1
        return self.count[participant]


def _dess_tasks(release_root: Path, visit_dir: str, geometry: ImageGeometry, seed: int) -> list[_SeriesTask]:
    contents = release_root / visit_dir / "contents.csv"
    if not contents.is_file():
        raise InputFileError(contents, "contents.csv not found")
    latents = read_latents(release_root / "synth_truth.csv")
    visit_root = (release_root / visit_dir).resolve()
    tasks = []
    with contents.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = {(h or "").strip() for h in reader.fieldnames or []}
        required = {"Folder", "ParticipantID", "StudyDate", "StudyDescription", "SeriesDescription"}
        if missing := required - header:
            raise InputFileError(contents, f"missing column(s) {sorted(missing)}", line=1)
        # the barcode column is called AccessionNumber in some releases
        barcode_column = next((c for c in ("Barcode", "AccessionNumber") if c in header), None)
        numbers = SeriesNumbers()
        for line, raw in enumerate(reader, start=2):
            row = _strip_row(raw)
            series_number = numbers.next(row["ParticipantID"])
            description = row["SeriesDescription"].upper()
            if description not in DESS_DESCRIPTIONS:
                continue
            side = DESS_DESCRIPTIONS[description]
            subject = _integer(contents, row, "ParticipantID", line)
            folder = (visit_root / row["Folder"]).resolve()
            if not row["Folder"] or not folder.is_relative_to(visit_root):
                message = f"Folder {row['Folder']!r} is not inside {visit_dir}/"
                raise InputFileError(contents, message, line=line, column="Folder")
            if (subject, side) not in latents:
                message = f"no latent for subject {subject} side {side} (listed in {contents}, line {line})"
                raise InputFileError(release_root / "synth_truth.csv", message)
            series_key = row["Folder"].replace("\\", "/")
            entropy = (seed, subject, 1 if side == "R" else 2, zlib.crc32(series_key.encode()))
            meta = SeriesMeta(
                patient_id=str(subject),
                series_description=description,
                study_date=row["StudyDate"],
                study_description=row["StudyDescription"],
                accession_number=row.get(barcode_column, "") if barcode_column else "",
                series_uid=synth_uid("series", seed, subject, side, series_key),
                study_uid=synth_uid("study", seed, subject, row["StudyDate"]),
                spacing_mm=geometry.spacing_mm,
                series_number=series_number,
            )
            tasks.append(_SeriesTask(str(folder), latents[(subject, side)], side, entropy, geometry, meta))
    return tasks


def _write_task(task: _SeriesTask) -> str:
    rng = np.random.default_rng(np.random.SeedSequence(list(task.entropy)))
    volume = render_knee_volume(task.latent, task.side, rng, task.geometry)
    folder = Path(task.folder)
    if folder.is_dir():
        # a re-run replaces the series; slice files of an earlier, longer series must not linger
        for stale in folder.iterdir():
            if stale.is_file() and stale.name.isdigit():
                stale.unlink()
    write_series(folder, volume, task.meta)
    return task.folder


def write_images(
    release_root: Path,
    *,
    size: str = "full",
    seed: int = 0,
    workers: int = 1,
    progress: ProgressCallback | None = None,
    visit_dir: str = "00m",
) -> int:
    """Write a DESS series for every ``SAG_3D_DESS_{LEFT,RIGHT}`` row of ``<visit_dir>/contents.csv``.

    Latents come from ``release_root/synth_truth.csv``. Each series goes to
    ``<visit_dir>/<Folder>/001, 002, ...``; ``workers > 1`` renders series in a process pool.
    Returns the number of series written.
    """
    release_root = Path(release_root)
    geometry = image_geometry(size)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    report = progress or no_progress
    tasks = _dess_tasks(release_root, visit_dir, geometry, seed)
    total = len(tasks)
    log.info("writing %d %s DESS series (seed %d, %d workers)", total, size, seed, workers)
    report("images", 0, total)
    if workers == 1 or total <= 1:
        for done, task in enumerate(tasks, start=1):
            _write_task(task)
            report("images", done, total)
        return total
    with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
        futures = [pool.submit(_write_task, task) for task in tasks]
        for done, future in enumerate(as_completed(futures), start=1):
            future.result()
            report("images", done, total)
    return total
