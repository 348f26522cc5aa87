"""Benchmark: peak memory of `oai ingest` on a small zip holding one huge member (a zip bomb).

    python benchmarks/archive_memory.py [--megabytes 600] [--text]

Writes a zip (about 650 KB for 600 MB of zeros) whose one member is named like an OAI table
(``OAICompleteData_ASCII/AllClinical00.txt``) beside a good small release, runs `oai ingest` on it
in a child process and prints the child's peak resident memory (``getrusage(RUSAGE_CHILDREN)``),
its exit code and its error line. ``--text`` fills the member with table-like text lines instead
of zeros (which deflate compresses less well, yet still about 400-fold).

Target (issue 24): the member is refused from its zip header (its size and compression ratio,
``oaicohort.release.archive``) before any of it is read, so the peak stays near the toolkit's
own start-up footprint (before: the member was read whole, 1.4 GB for 600 MB).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_bomb(path: Path, megabytes: int, *, text: bool) -> None:
    block = (b"9000001|1|2|3\n" * (1 << 17))[: 1 << 20] if text else bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("OAICompleteData_ASCII/AllClinical00.txt", "w", force_zip64=True) as member,
    ):
        for _ in range(megabytes):
            member.write(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=600)
    parser.add_argument("--text", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bomb = root / "release.zip"
        write_bomb(bomb, args.megabytes, text=args.text)
        command = [sys.executable, "-m", "oaicli.main", "--db", str(root / "db.sqlite"), "ingest", str(bomb)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
        print(f"zip {bomb.stat().st_size / 1e3:,.0f} KB holding a {args.megabytes} MB member")
        print(f"oai ingest: exit {done.returncode}, peak memory {peak_mb:,.0f} MB")
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "(no message)")


if __name__ == "__main__":
    main()
