"""kill -9 at chosen and at seeded random points of `oai ingest`, `oai label`, `oai split` and
`oai preprocess` (the real command, in a subprocess), on SQLite and PostgreSQL.

After every kill the database holds either everything the command writes or none of it (for
preprocess: complete volumes only, and the store verifies); a run left `running` is marked
`interrupted` by the next ingest; re-running gives what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from oaicohort.cohort.labels import derive_labels, stored_definition, stored_labels
from oaicohort.cohort.splits import make_split
from oaicohort.db import Database, open_database
from oaicohort.db.schema import IngestRun, Knee, SplitAssignment
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.store.index import verify_store
from oaicohort.ingest.provenance import list_runs
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from tests.helpers.reliability import (
    DATA_TABLES,
    counts,
    kill_when,
    run_oai,
    spawn_oai,
    store_checksums,
    table_rows,
    write_lock_held,
    write_lock_held_for,
)

pytestmark = pytest.mark.slow

SUBJECTS = 700
SEED = 7


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "release"
    write_release(root, subjects=SUBJECTS, seed=SEED)
    return root


@pytest.fixture(scope="module")
def reference(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """What uninterrupted ingest, label and split runs write."""
    db = open_database(tmp_path_factory.mktemp("reference") / "ref.sqlite")
    ingest_release(db, release)
    derive_labels(db)
    make_split(db)
    yield db
    db.dispose()


def _labels(db: Database) -> list[tuple]:
    with db.read() as s:
        frame = stored_labels(s, stored_definition(s).id)
    return sorted(map(tuple, frame.drop(columns="knee_id").astype(str).to_numpy().tolist()))


def _split(db: Database) -> list[tuple]:
    with db.read() as s:
        rows = s.execute(
            select(Knee.subject_id, Knee.side, SplitAssignment.role, SplitAssignment.fold).join(
                Knee, Knee.id == SplitAssignment.knee_id
            )
        ).all()
    return sorted(map(tuple, rows))


def _running_row_committed(db: Database) -> bool:
    with db.read() as s:
        return s.execute(select(IngestRun.id).where(IngestRun.status == "running")).first() is not None


def test_ingest_killed_anywhere_leaves_before_or_after_and_reruns_to_the_same_data(
    database_url: str, release: Path, reference: Database
) -> None:
    db = open_database(database_url)
    empty = table_rows(db, DATA_TABLES)
    full = table_rows(reference, DATA_TABLES)
    rng = random.Random(SEED)
    # a progress marker (the committed `running` row), the middle of the data transaction (the
    # writer lock held after it), and a seeded random moment
    kill_points = [
        ("after the running row", lambda: _running_row_committed(db), rng.uniform(0.0, 0.5)),
        # (the unchanged-release check before it holds the lock for milliseconds only)
        (
            "inside the data transaction",
            lambda: _running_row_committed(db) and write_lock_held_for(database_url, 0.1),
            0.0,
        ),
        ("at a random moment", lambda: True, rng.uniform(1.0, 5.0)),
    ]
    killed_inside_write = False
    for where, ready, delay in kill_points:
        proc = spawn_oai(database_url, "ingest", str(release), "--json")
        killed = kill_when(proc, ready, delay=delay)
        killed_inside_write |= killed and where == "inside the data transaction"
        now = table_rows(db, DATA_TABLES)
        assert now in (empty, full), f"half an ingest is visible after a kill {where}"
        statuses = [r["status"] for r in list_runs(db)]
        assert "running" not in statuses  # a dead writer's run is shown interrupted at once
        if now == full:  # committed just before the kill: its run says so
            assert "succeeded" in statuses
            empty = full
    assert killed_inside_write

    result = run_oai(database_url, "ingest", str(release), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] in ("succeeded", "unchanged")
    assert table_rows(db, DATA_TABLES) == full
    with db.read() as s:
        recorded = list(s.execute(select(IngestRun.status).order_by(IngestRun.id)).scalars())
    assert "running" not in recorded  # the re-run marked every killed run
    assert recorded.count("interrupted") >= 1 and recorded[-1] in ("succeeded", "unchanged")
    db.dispose()


def test_label_and_split_killed_leave_all_or_nothing_and_rerun_to_the_same_result(
    database_url: str, release: Path, reference: Database
) -> None:
    db = open_database(database_url)
    ingest_release(db, release)
    rng = random.Random(SEED)
    for command, read, table in (("label", _labels, "knee_labels"), ("split", _split, "split_assignments")):
        expected = read(reference)
        killed_inside_write = False
        for ready, delay in ((lambda: write_lock_held(database_url), 0.0), (lambda: True, rng.uniform(0.5, 3.0))):
            proc = spawn_oai(database_url, command, "--json")
            killed = kill_when(proc, ready, delay=delay)
            killed_inside_write |= killed and delay == 0.0
            if counts(db, (table,))[table]:  # committed before the kill: then all of it
                assert read(db) == expected
        assert killed_inside_write, f"oai {command} was never killed inside its transaction"
        result = run_oai(database_url, command, "--json")
        assert result.returncode == 0, result.stderr
        assert read(db) == expected
    # one definition and one split: no killed run left a second, partial one behind
    assert counts(db, ("label_definitions", "splits")) == {"label_definitions": 1, "splits": 1}
    db.dispose()


@pytest.fixture(scope="module")
def image_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from oaicohort.synth.images import write_images

    root = tmp_path_factory.mktemp("crash_images") / "release"
    write_release(root, subjects=10, seed=SEED)
    write_images(root, size="small", seed=SEED)
    return root


def test_preprocess_killed_at_random_points_verifies_and_reruns_to_the_samestore_checksums(
    database_url: str, image_release: Path, tmp_path: Path
) -> None:
    small = PreprocessParams.preset_named("small")
    reference = open_database(tmp_path / "ref.sqlite")
    ingest_release(reference, image_release)
    run_preprocess(reference, tmp_path / "ref.zarr", small, views=("sag",))
    expected = store_checksums(reference, tmp_path / "ref.zarr")
    reference.dispose()

    db = open_database(database_url)
    ingest_release(db, image_release)
    store = tmp_path / "vol.zarr"
    args = ("preprocess", "--store", str(store), "--preset", "small", "--workers", "1", "--json")
    rng = random.Random(SEED)
    done: dict[tuple[int, str, str], str] = {}
    # when the first volume is indexed, then at a seeded random moment
    kill_points = ((lambda: bool(store_checksums(db, store)), 0.0), (lambda: True, rng.uniform(1.5, 4.0)))
    for n, (ready, delay) in enumerate(kill_points):
        proc = spawn_oai(database_url, *args)
        killed = kill_when(proc, ready, delay=delay)
        now = store_checksums(db, store)
        if n == 0:
            assert killed and 0 < len(now) < len(expected)
        assert set(done) <= set(now)  # what was indexed stays indexed
        assert all(expected[k] == v for k, v in now.items())
        report = verify_store(db, store)
        assert report["mismatches"] == [] and report["ok"] == len(now)
        done = now
    result = run_oai(database_url, *args)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["failed"] == 0 and summary["skipped"] + summary["done"] == summary["selected"]
    assert store_checksums(db, store) == expected
    report = verify_store(db, store)
    assert report["mismatches"] == [] and report["ok"] == summary["selected"]
    assert report["orphans"]["sag"] == []  # slots of killed writes were reused
    db.dispose()
