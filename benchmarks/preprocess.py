"""Benchmark: `oai preprocess` of full-size DESS series against a bare pydicom read of them.

    python benchmarks/preprocess.py [--series 8] [--views sag] [--keep DIR]

In one run: ``--series`` full-size synthetic series (160 slices of 384x384,
``oaicohort.synth.images``) are written and indexed in a fresh database, then
(a) bare read: ``pydicom.dcmread(f).pixel_array`` for every file of every series;
(b) ``oai preprocess`` of the same series (a fresh store each time) with 1 and 2 workers, each
    run in its own process so its peak RSS is its own.
Targets (issue 4): (b) per series and per worker within 1.5x of (a); peak memory per worker
under 1 GB. The files are read once before timing so both sides find them in the page cache.
Wall times on a loaded machine are noisy: the in-worker seconds (read + preprocess, summed by
the run) are printed too, in wall and CPU time (CPU time does not count waiting for a core).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oaicohort.db import open_database  # noqa: E402
from oaicohort.db.schema import ImageSeries, Subject  # noqa: E402
from oaicohort.synth.dicom_writer import SeriesMeta, write_series  # noqa: E402
from oaicohort.synth.mri_anatomy import render_knee_volume  # noqa: E402
from oaicohort.synth.raster import IMAGE_SIZES  # noqa: E402


def write_release(root: Path, db_path: Path, n: int, seed: int) -> list[Path]:
    IMAGE_SIZES["full"]
    db = open_database(db_path)
    folders = []
    with db.write() as session:
        for i in range(n):
            subject, side = 9100000 + 10 * (i // 2), "RL"[i % 2]
            if i % 2 == 0:
                session.add(Subject(id=subject, site="A", sex="F"))
                session.flush()
            description = "SAG_3D_DESS_RIGHT" if side == "R" else "SAG_3D_DESS_LEFT"
            rel = f"0.C.2/{subject}/20040101/{i:08d}"
            volume = render_knee_volume(0.0, side, np.random.default_rng([seed, i]), "full")
            write_series(root / rel, volume, SeriesMeta(patient_id=str(subject), series_description=description))
            folders.append(root / rel)
            session.add(
                ImageSeries(
                    subject_id=subject,
                    visit=0,
                    month=0,
                    side=side,
                    sequence="SAG_3D_DESS",
                    series_description=description,
                    folder=rel,
                    visit_dir=str(root),
                    source_file="benchmark",
                    source_row=i,
                )
            )
    db.dispose()
    return folders


def bare_read(folders: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds of reading every file's pixels."""
    start, cpu = time.perf_counter(), time.process_time()
    for folder in folders:
        for path in sorted(folder.iterdir()):
            pydicom.dcmread(path).pixel_array  # noqa: B018
    return time.perf_counter() - start, time.process_time() - cpu


def run_cli(db_path: Path, store: Path, workers: int, views: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "oaicli.main", "--db", str(db_path), "preprocess", "--store", str(store),
           "--workers", str(workers), "--view", views, "--json"]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"oai preprocess failed:\n{result.stderr}")
    return wall, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--views", default="sag", choices=("sag", "cor", "ax", "all"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()

    tmp = None if args.keep else tempfile.TemporaryDirectory()
    work = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "bench.sqlite"
    start = time.perf_counter()
    if db_path.exists():
        folders = sorted(p for p in (work / "00m" / "0.C.2").glob("*/*/*"))
    else:
        folders = write_release(work / "00m", db_path, args.series, args.seed)
    print(f"{len(folders)} full-size series (160 x 384 x 384) ready in {time.perf_counter() - start:.1f} s")

    bare_read(folders)  # page cache
    a_wall, a_cpu = (t / len(folders) for t in bare_read(folders))
    a = a_wall
    print(f"(a) bare pydicom read:          {a:6.3f} s/series wall, {a_cpu:.3f} s CPU")
    for workers in (1, 2):
        store = work / f"store_w{workers}.zarr"
        if store.exists():
            import shutil

            shutil.rmtree(store)
        wall, summary = run_cli(db_path, store, workers, args.views)
        assert summary["done"] == len(folders) and summary["failed"] == 0, summary
        run = summary["seconds"] / len(folders)
        per_worker = run * workers
        in_worker = summary["worker_seconds"] / len(folders)
        in_worker_cpu = summary["worker_cpu_seconds"] / len(folders)
        print(
            f"(b) oai preprocess, {workers} worker{'s' if workers > 1 else ' '}: {run:6.3f} s/series wall; "
            f"per series per worker {per_worker:.3f} s = {per_worker / a:.2f}x (a); "
            f"in-worker {in_worker:.3f} s wall = {in_worker / a:.2f}x (a), {in_worker_cpu:.3f} s CPU = "
            f"{in_worker_cpu / a_cpu:.2f}x (a) CPU; process start {wall - summary['seconds']:.1f} s; "
            f"peak RSS per worker {summary['worker_peak_rss_mb']:.0f} MB"
        )
    print("targets: per worker within 1.5x of (a); peak RSS per worker < 1024 MB")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
