"""Benchmark: `oai preprocess` throughput (series/s) against workers (1, 2) and shards (1, 2, 3).

    OAI_TEST_POSTGRES_URL=postgresql+psycopg://... python benchmarks/preprocess_shards.py \\
        [--subjects 40] [--size small] [--repeats 1]

In one run: a synthetic release (``oai synth --images --image-size small``: two DESS series per
subject, at least 64 series) is ingested into a fresh PostgreSQL database (shards need it); then
each configuration preprocesses every series into a fresh store, timed from the start of the
first process to the end of the last:

- ``workers N``: one ``oai preprocess --workers N`` process;
- ``shards N``: N ``oai preprocess --shard K/N --workers 1`` processes at once (what a SLURM array
  of N one-core jobs does on N machines, here on one).

Throughput is printed as series/s and as a ratio against ``workers 1, shards 1`` measured in the
same run. Each store is checked (every series exactly once, ``oai store verify`` clean). On a
machine with C cores, workers and shards beyond C cannot gain; say C with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oaicohort.db import open_database  # noqa: E402
from oaicohort.imaging.store.index import verify_store  # noqa: E402
from oaicohort.ingest.run import ingest_release  # noqa: E402
from oaicohort.synth import write_release  # noqa: E402
from oaicohort.synth.images import write_images  # noqa: E402

CONFIGS = (("workers", 1), ("workers", 2), ("shards", 2), ("shards", 3))  # workers 1 = shards 1


def _admin(server: str, sql: str) -> None:
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def _oai(db_url: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "oaicli.main", "--db", db_url, "--quiet", "preprocess", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def run_config(db_url: str, store: Path, kind: str, n: int) -> tuple[float, int]:
    """Seconds for every series into ``store``, and how many series were done."""
    common = ("--store", str(store), "--preset", "small", "--view", "sag", "--json")
    start = time.perf_counter()
    if kind == "workers":
        procs = [_oai(db_url, *common, "--workers", str(n))]
    else:
        procs = [_oai(db_url, *common, "--workers", "1", "--shard", f"{k}/{n}") for k in range(1, n + 1)]
    done = 0
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{kind} {n}: oai preprocess failed: {err.strip().splitlines()[-1:]}")
        done += json.loads(out)["done"]
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=40)
    parser.add_argument("--size", default="small")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (the best counts)")
    args = parser.parse_args()
    server = os.environ.get("OAI_TEST_POSTGRES_URL")
    if not server:
        raise SystemExit("set OAI_TEST_POSTGRES_URL to a PostgreSQL server (shards need PostgreSQL)")
    name = f"oai_bench_{uuid.uuid4().hex[:10]}"
    _admin(server, f'CREATE DATABASE "{name}"')
    db_url = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "release"
            write_release(root, subjects=args.subjects, seed=3)
            write_images(root, size=args.size, seed=3)
            db = open_database(db_url)
            ingest_release(db, root)
            results: dict[str, float] = {}
            series = 0
            for kind, n in CONFIGS:
                best = float("inf")
                for r in range(args.repeats):
                    store = Path(tmp) / f"{kind}{n}-{r}.zarr"
                    seconds, done = run_config(db_url, store, kind, n)
                    report = verify_store(db, store)
                    assert report["mismatches"] == [] and report["ok"] == done, report
                    series = done
                    best = min(best, seconds)
                results[f"{kind} {n}"] = best
            db.dispose()
        if series < 64:
            print(f"note: only {series} series (the target is at least 64; raise --subjects)")
        base = results["workers 1"]
        print(f"{series} series ({args.size}), {os.cpu_count()} CPU cores, PostgreSQL")
        print(f"{'configuration':<14} {'seconds':>8} {'series/s':>9} {'vs workers 1':>13}")
        for label, seconds in results.items():
            print(f"{label:<14} {seconds:8.1f} {series / seconds:9.2f} {base / seconds:12.2f}x")
    finally:
        _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
