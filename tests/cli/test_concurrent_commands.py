"""Several processes on one cohort database, as in a lab where people and jobs share it: readers
while another process ingests or labels, two ingests at once, ingest and preprocess at once, many
processes opening a new database. Real processes, bounded in count and time, on SQLite (WAL) and
PostgreSQL; test_concurrency.py covers the writer lock itself.

Writers are slowed down inside their write transaction (a wrapped step sleeps) so that the
others run while it is open: readers must see the state before it or after it, never between.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort
from oaicohort.db import open_database
from oaicohort.db.migrate import current_revision, head_revision
from oaicohort.db.schema import IngestRun, Subject
from oaicohort.imaging.store.index import verify_store
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from tests.helpers.reliability import DATA_TABLES, REPO, counts, spawn_oai, table_rows

pytestmark = pytest.mark.slow

SLOW_INGEST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import oaicohort.ingest.run as ingest
    import oaicohort.ingest.writer as writer
    from oaicohort.db import open_database

    write_clinical = writer._write_clinical

    def slow(*args, **kwargs):
        write_clinical(*args, **kwargs)
        print("mid", flush=True)  # every table written, nothing committed yet
        hold = sys.argv[3]
        if hold.startswith("until:"):  # hold the transaction open until the test says so
            release, deadline = Path(hold[6:]), time.monotonic() + 240
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            time.sleep(float(hold))

    writer._write_clinical = slow
    result = ingest.ingest_release(open_database(sys.argv[1]), sys.argv[2])
    print(result.status, flush=True)
    """
)

SLOW_LABEL = textwrap.dedent(
    """
    import sys, time
    import oaicohort.cohort.labels as labels
    from oaicohort.db import open_database

    insert_frame = labels.insert_frame

    def slow(session, model, frame):
        print("mid", flush=True)  # the old labels are deleted, the new ones not yet inserted
        time.sleep(float(sys.argv[2]))
        return insert_frame(session, model, frame)

    labels.insert_frame = slow
    db = open_database(sys.argv[1])
    for _ in range(int(sys.argv[3])):
        labels.derive_labels(db)
    print("done", flush=True)
    """
)

COUNT_READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from sqlalchemy import text
    from oaicohort.db import open_database

    db, stop, tables = open_database(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
    while not stop.exists():
        with db.read() as s:  # one snapshot for all tables
            seen = [s.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables]
        print(json.dumps(seen), flush=True)
        time.sleep(0.01)
    """
)

COHORT_READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from oaicohort.db import open_database
    from oaicohort.cohort.query import Cohort

    db, stop = open_database(sys.argv[1]), Path(sys.argv[2])
    cohort = Cohort(db)
    while not stop.exists():
        knees = cohort.knees(include_excluded=True)
        print(json.dumps([len(knees), int(knees["label"].notna().sum())]), flush=True)
        time.sleep(0.01)
    """
)


def _spawn(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    if got != line:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"expected {line!r}, got {got!r}: {err}")


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def _start_reader(code: str, *args: str) -> tuple[subprocess.Popen[str], tuple[int, ...]]:
    """A reader process, once it has made its first observation (and that observation)."""
    reader = _spawn(code, *args)
    assert reader.stdout is not None
    first = reader.stdout.readline()
    if not first:
        raise AssertionError(reader.communicate()[1])
    return reader, tuple(json.loads(first))


def _observations(reader: subprocess.Popen[str], stop: Path) -> list[tuple[int, ...]]:
    stop.touch()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err  # never "database is locked"
    assert "locked" not in err
    return [tuple(json.loads(line)) for line in out.splitlines()]


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("concurrent")
    write_release(base / "a", subjects=150, seed=1)
    write_release(base / "b", subjects=250, seed=2)
    return base / "a", base / "b"


def test_many_processes_opening_a_new_database_migrate_it_once(database_url: str) -> None:
    code = "import sys; from oaicohort.db import open_database; open_database(sys.argv[1])"
    procs = [_spawn(code, database_url) for _ in range(4)]
    # every process is waited for before any assertion, so a failure leaks none into later tests
    results = [(proc.communicate(timeout=120), proc.returncode) for proc in procs]
    assert [code for _, code in results] == [0] * 4, [err for (_, err), _ in results]
    db = open_database(database_url, migrate=False)
    assert current_revision(db.engine) == head_revision()
    db.dispose()


def test_readers_see_two_concurrent_ingests_all_or_nothing_and_both_complete(
    database_url: str, releases: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two ingests at once are serialised (the second's data write waits for the first's), the
    second does not mark the first's running row interrupted, and a reader counting rows in a
    loop only ever sees the database before, between or after the two ingests."""
    a, b = releases
    db = open_database(database_url)
    tables = ",".join(DATA_TABLES)
    reader, initial = _start_reader(COUNT_READER, database_url, str(tmp_path / "stop"), tables)
    first = _spawn(SLOW_INGEST, database_url, str(a), "1.5")
    _wait_for(first, "mid")  # inside its data transaction, its run row committed as running
    second = _spawn(SLOW_INGEST, database_url, str(b), "0.5")
    _wait_for(second, "mid")
    assert _finish(first).split() == ["succeeded"]
    assert _finish(second).split() == ["succeeded"]
    seen = {initial, *_observations(reader, tmp_path / "stop")}

    with db.read() as s:
        runs = s.scalars(select(IngestRun).order_by(IngestRun.finished_at)).all()
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    # the same data as the two ingests one after the other, in their commit order
    reference = open_database(tmp_path / "reference.sqlite")
    states = [tuple(counts(reference, DATA_TABLES).values())]
    for run in runs:
        ingest_release(reference, run.source_root)
        states.append(tuple(counts(reference, DATA_TABLES).values()))
    assert table_rows(db, DATA_TABLES) == table_rows(reference, DATA_TABLES)
    assert seen <= set(states), f"a reader saw a half-finished ingest: {seen - set(states)}"
    assert len(seen) >= 2  # the reader ran across the commits
    reference.dispose()
    db.dispose()


def test_an_ingest_waiting_past_the_lock_timeout_is_refused_cleanly(
    database_url: str, releases: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = releases
    db = open_database(database_url)
    release = tmp_path / "release-holder"
    # the holder keeps its write transaction open until the second ingest has given up, however
    # long that one's interpreter takes to start on a loaded machine
    holder = _spawn(SLOW_INGEST, database_url, str(a), f"until:{release}")
    _wait_for(holder, "mid")
    second = spawn_oai(database_url, "ingest", str(b), env={"OAI_DB_LOCK_TIMEOUT": "1"})
    try:
        out, err = second.communicate(timeout=120)
    finally:
        release.touch()
    assert second.returncode == 3, out + err
    message = " ".join(err.split())
    assert "another process is writing to this database" in message and "nothing was changed" in message
    assert _finish(holder).split() == ["succeeded"]
    with db.read() as s:
        assert [r.source_root for r in s.scalars(select(IngestRun))] == [str(a)]
    db.dispose()


def test_cohort_readers_never_see_labels_half_replaced(
    database_url: str, releases: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = releases
    db = open_database(database_url)
    ingest_release(db, a)
    derive_labels(db)
    reader, initial = _start_reader(COHORT_READER, database_url, str(tmp_path / "stop"))
    writer = _spawn(SLOW_LABEL, database_url, "0.7", "2")
    _wait_for(writer, "mid")
    _wait_for(writer, "mid")
    assert _finish(writer).split() == ["done"]
    seen = _observations(reader, tmp_path / "stop")
    knees = Cohort(db).knees(include_excluded=True)
    # relabelling with the same definition gives the same labels: any other count is a glimpse
    # of the transaction that deleted the old labels and inserts the new ones
    assert set(seen) | {initial} == {(len(knees), int(knees["label"].notna().sum()))}
    assert len(seen) >= 10
    db.dispose()


@pytest.fixture(scope="module")
def image_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from oaicohort.synth.images import write_images

    root = tmp_path_factory.mktemp("concurrent_images") / "release"
    write_release(root, subjects=6, seed=4)
    write_images(root, size="small", seed=4)
    return root


def test_ingest_and_preprocess_at_once_both_complete(database_url: str, image_release: Path, tmp_path: Path) -> None:
    db = open_database(database_url)
    ingest_release(db, image_release)
    update = tmp_path / "update"  # a newer release: same images, one participant moved site
    shutil.copytree(image_release / "OAICompleteData_ASCII", update / "OAICompleteData_ASCII")
    (update / "00m").symlink_to(image_release / "00m")
    enrollees = update / "OAICompleteData_ASCII" / "Enrollees.txt"
    lines = enrollees.read_text().splitlines()
    cells = lines[1].split("|")
    cells[2] = "E" if cells[2] != "E" else "A"
    enrollees.write_text("\n".join([lines[0], "|".join(cells), *lines[2:]]) + "\n")

    ingest = _spawn(SLOW_INGEST, database_url, str(update), "2")
    _wait_for(ingest, "mid")
    store = tmp_path / "vol.zarr"
    t0 = time.monotonic()
    preprocess = spawn_oai(
        database_url, "preprocess", "--store", str(store), "--preset", "small", "--workers", "1", "--json"
    )
    assert _finish(ingest).split() == ["succeeded"]
    summary = json.loads(_finish(preprocess))
    assert time.monotonic() - t0 < 120
    assert summary["failed"] == 0 and summary["done"] == summary["selected"] > 0
    with db.read() as s:
        assert s.get(Subject, int(cells[0])).site == cells[2]
    report = verify_store(db, store)
    assert report["mismatches"] == [] and report["ok"] == summary["done"]
    db.dispose()
