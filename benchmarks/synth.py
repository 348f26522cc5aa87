"""Benchmark: `oai synth` (clinical release, no images) at the OAI size.

    python benchmarks/synth.py [--subjects 4796] [--seed 0] [--repeat 3]

Target (issue 2): the full-size clinical release in a few seconds (under 10 s on one core).
Prints the best and median wall time of ``write_release``, the bytes written and the time per
million cells of the wide AllClinical files.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oaicohort.synth import OAI_SIZE, write_release

TARGET_SECONDS = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=OAI_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="oai-synth-bench-") as tmp:
        out = Path(tmp) / "release"
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            summary = write_release(out, subjects=args.subjects, seed=args.seed)
            times.append(time.perf_counter() - started)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        cells = 0
        for name, rows in summary.rows.items():
            if "allclinical" in name.lower():
                with open(out / name, encoding="utf-8") as fh:
                    cells += rows * len(fh.readline().split("|"))

    best, median = min(times), statistics.median(times)
    print(
        f"oai synth: {args.subjects} subjects, seed {args.seed}, {len(summary.files)} files, "
        f"{size / 1e6:.1f} MB, {summary.xray_readings} X-ray readings, {summary.image_series} series rows"
    )
    print(
        f"write_release: best {best:.2f} s, median {median:.2f} s over {args.repeat} runs "
        f"(target < {TARGET_SECONDS:.0f} s: {'met' if best < TARGET_SECONDS else 'MISSED'})"
    )
    print(
        f"AllClinical: {cells / 1e6:.1f} M cells, {best / (cells / 1e6):.2f} s per million cells (whole release time)"
    )


if __name__ == "__main__":
    main()
