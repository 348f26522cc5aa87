"""Benchmark: synthetic DESS series (render + DICOM write) and reading them back.

    python benchmarks/synth_images.py [--full 3] [--small 60] [--workers 2]

Per size: the phantom render, the DICOM write (fast slice encoder vs pydicom's writer for every
slice), ``write_images`` over a small release with 1 and ``--workers`` processes, and
``read_series`` against a bare loop of ``pydicom.dcmread(path).pixel_array`` (the baseline the
preprocessing benchmark uses). Times are the best of the repeats, in wall seconds and, for the
single-process steps, CPU seconds of this process (steadier on a shared machine).
Target (issue 4): the demo writes a few hundred ``small`` series on 2 cores well under a minute;
``read_series`` no slower than the bare loop.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from oaicohort.imaging.series.dicom import read_series
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaicohort.synth.images import write_images
from oaicohort.synth.mri_anatomy import render_knee_volume
from oaicohort.synth.raster import IMAGE_SIZES


def best(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``fn`` over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_release(root: Path, count: int) -> None:
    rows = ["Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription"]
    truth = ["subject_id,side,latent,label_hint"]
    rng = np.random.default_rng(0)
    for i in range(count):
        subject, side = 9000000 + i // 2, "RL"[i % 2]
        word = {"R": "RIGHT", "L": "LEFT"}[side]
        folder = f"0.C.2/{subject}/20050101/{10000000 + i}"
        rows.append(f"{folder},{subject},20050101,0166{i:06d},OAI^MR^ENROLLMENT^{word},SAG_3D_DESS_{word}")
        truth.append(f"{subject},{side},{rng.normal():.4f},none")
    (root / "00m").mkdir(parents=True)
    (root / "00m" / "contents.csv").write_text("\n".join(rows) + "\n")
    (root / "synth_truth.csv").write_text("\n".join(truth) + "\n")


def bench_size(size: str, count: int, workers: int, repeats: int) -> None:
    geometry = IMAGE_SIZES[size]
    megabytes = np.prod(geometry.shape) * 2 / 1e6
    print(
        f"\n== {size}: {geometry.shape} (slices, rows, cols) at {geometry.spacing_mm} mm, "
        f"{megabytes:.1f} MB of pixels per series"
    )
    seeds = iter(range(10**6))
    render_wall, render_cpu = best(
        lambda: render_knee_volume(0.5, "L", np.random.default_rng(next(seeds)), size), repeats
    )
    volume = render_knee_volume(0.5, "L", np.random.default_rng(0), size)
    meta = SeriesMeta("9000099", "SAG_3D_DESS_LEFT", spacing_mm=geometry.spacing_mm)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        fast_wall, fast_cpu = best(lambda: write_series(folder, volume, meta), repeats)
        slow_wall, slow_cpu = best(lambda: write_series(folder, volume, meta, force_pydicom=True), repeats)
        files = sorted(folder.iterdir())
        bare_wall, bare_cpu = best(lambda: [pydicom.dcmread(p).pixel_array for p in files], repeats)
        read_wall, read_cpu = best(lambda: read_series(folder), repeats)
    print(f"render phantom          {render_wall:7.3f} s wall  {render_cpu:7.3f} s CPU")
    print(
        f"write (fast encoder)    {fast_wall:7.3f} s wall  {fast_cpu:7.3f} s CPU   "
        f"{megabytes / fast_cpu:6.0f} MB per CPU s"
    )
    print(
        f"write (pydicom writer)  {slow_wall:7.3f} s wall  {slow_cpu:7.3f} s CPU   "
        f"fast is {slow_cpu / fast_cpu:.1f}x cheaper"
    )
    print(
        f"render + write          {render_wall + fast_wall:7.3f} s wall per series, "
        f"{1 / (render_cpu + fast_cpu):.1f} series per CPU second"
    )
    print(f"bare dcmread+pixel_array{bare_wall:7.3f} s wall  {bare_cpu:7.3f} s CPU")
    print(
        f"read_series             {read_wall:7.3f} s wall  {read_cpu:7.3f} s CPU   "
        f"ratio to bare {read_cpu / bare_cpu:.2f} (CPU), {read_wall / bare_wall:.2f} (wall)"
    )

    for n_workers in sorted({1, workers}):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "release"
            make_release(root, count)
            before = children_cpu()
            wall, cpu = best(
                lambda root=root, n_workers=n_workers: write_images(root, size=size, seed=0, workers=n_workers), 1
            )
            cpu += children_cpu() - before
            shutil.rmtree(root / "00m" / "0.C.2")
        print(
            f"write_images {count:4d} series, {n_workers} worker(s): {wall:7.2f} s wall "
            f"({count / wall:6.1f} series/s), {cpu:7.2f} s CPU in all"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=int, default=3, help="series written by write_images at full size")
    parser.add_argument("--small", type=int, default=60, help="series written by write_images at small size")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_size("small", args.small, args.workers, max(args.repeats, 5))
    bench_size("full", args.full, args.workers, args.repeats)


if __name__ == "__main__":
    main()
