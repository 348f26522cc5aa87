"""Benchmark: the overhead of one ``oai train --launcher local`` job against a plain process.

    python benchmarks/launcher.py [--repeats 3] [--json OUT.json]

Both run the same work, importing the training code (torch included), which is what every
fold job pays before it trains: ``plain`` = ``python -c`` in a subprocess; ``submitit`` = a
submitit LocalExecutor job (pickling, controller process, result pickle, polling) waited on with
``job.result()``. Reported: the median wall time of each and the difference (the per-job
overhead), in seconds. A fold of the paper trains for hours, so seconds of overhead are
irrelevant there; the number matters for tiny test runs only. The machine may be shared: rerun
and compare medians, not single runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORK = "import oaimodels.training.run"


def import_training() -> None:
    import oaimodels.training.run  # noqa: F401


def plain() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", WORK], check=True)
    return time.perf_counter() - start


def submitit_job(folder: Path) -> float:
    import submitit

    executor = submitit.LocalExecutor(folder=str(folder / "%j"))
    executor.update_parameters(timeout_min=10)
    start = time.perf_counter()
    executor.submit(import_training).result()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain_s = [plain() for _ in range(args.repeats)]
        job_s = [submitit_job(Path(tmp)) for _ in range(args.repeats)]
    result = {
        "repeats": args.repeats,
        "plain_s": round(statistics.median(plain_s), 2),
        "submitit_local_s": round(statistics.median(job_s), 2),
        "overhead_s": round(statistics.median(job_s) - statistics.median(plain_s), 2),
        "all_plain_s": [round(x, 2) for x in plain_s],
        "all_submitit_s": [round(x, 2) for x in job_s],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
