"""The preprocess run over the DB's series index: store + volumes rows, failures, resume, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database, open_database
from oaicohort.db.schema import ImageSeries, Knee, Volume
from oaicohort.imaging.recipe.extent import extent_notes
from oaicohort.imaging.recipe.mri import preprocess_mri
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.runs.writer import PreprocessFailure
from oaicohort.imaging.series.dicom import DicomVolume, read_series
from oaicohort.imaging.store.index import indexed_volumes, verify_store
from oaicohort.imaging.store.volume_store import StoreError, VolumeStore, knee_key
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaicohort.synth.mri_anatomy import render_knee_volume
from tests.helpers.mri_release import GEOMETRY, SMALL, SUBJECTS, make_release, read_series_for_tests


def volume_rows(db: Database) -> list[Volume]:
    with db.read() as session:
        return list(session.execute(select(Volume).order_by(Volume.view, Volume.knee_id)).scalars())


@pytest.fixture
def release(db: Database, tmp_path: Path) -> dict[tuple[int, str], Path]:
    return make_release(db, tmp_path / "release")


def test_run_writes_store_and_index(db: Database, release, tmp_path: Path) -> None:
    store_path = tmp_path / "vol.zarr"
    summary = run_preprocess(db, store_path, SMALL, views=("sag", "cor", "ax"), reader=read_series_for_tests)
    assert (summary.selected, summary.done, summary.skipped, summary.failed) == (6, 6, 0, 0)
    assert summary.volumes_written == 18
    rows = volume_rows(db)
    assert len(rows) == 18 and {r.status for r in rows} == {"ok"}
    store = VolumeStore.open(store_path)
    with db.read() as session:
        knees = {k.id: (k.subject_id, k.side) for k in session.execute(select(Knee)).scalars()}
    for row in rows:
        subject, side = knees[row.knee_id]
        assert row.store_id == store.ref.id and row.params_hash == SMALL.hash()
        assert row.array_path == row.view and row.shape == list(SMALL.stored_shape(row.view))
        assert store.knee_keys(row.view)[row.position] == knee_key(subject, side)
        # the stored volume is exactly what preprocessing makes of the series
        expected = preprocess_mri(read_series_for_tests(release[(subject, side)]), SMALL, (row.view,))
        np.testing.assert_array_equal(store.read(row.view, row.position), expected.volumes[row.view])
    sag = [r for r in rows if r.view == "sag"]
    assert sag[0].spacing_mm == pytest.approx([5.6, 2.92, 2.92])
    assert any(r.notes.get("flipped") for r in sag) and not all(r.notes.get("flipped") for r in sag)
    assert sorted(r.position for r in sag) == list(range(6))

    frame = indexed_volumes(db, store_path, view="sag")
    assert list(frame.columns[:8]) == ["knee_id", "subject_id", "side", "visit", "view", "position", "status", "reason"]
    assert len(frame) == 6 and set(frame["subject_id"]) == set(SUBJECTS)

    report = verify_store(db, store_path)
    assert report["checked"] == 18 and report["ok"] == 18 and report["mismatches"] == []
    assert report["orphans"] == {"sag": [], "cor": [], "ax": []}


def test_rerun_is_idempotent_and_adds_only_missing_views(db: Database, release, tmp_path: Path) -> None:
    store_path = tmp_path / "vol.zarr"
    run_preprocess(db, store_path, SMALL, reader=read_series_for_tests)
    before = {(r.view, r.knee_id): (r.position, r.checksum, r.id) for r in volume_rows(db)}
    mtime = (store_path / "sag" / "zarr.json").stat().st_mtime_ns

    again = run_preprocess(db, store_path, reader=read_series_for_tests)  # params from the store
    assert (again.done, again.skipped, again.failed, again.volumes_written) == (0, 6, 0, 0)
    assert {(r.view, r.knee_id): (r.position, r.checksum, r.id) for r in volume_rows(db)} == before
    assert (store_path / "sag" / "zarr.json").stat().st_mtime_ns == mtime

    more = run_preprocess(db, store_path, SMALL, views=("sag", "cor"), reader=read_series_for_tests)
    assert (more.done, more.skipped, more.volumes_written) == (6, 0, 6)
    assert VolumeStore.open(store_path).capacity("sag") == 6
    with pytest.raises(StoreError, match="other parameters"):
        run_preprocess(db, store_path, PreprocessParams.full(), reader=read_series_for_tests)


def test_failure_recorded_run_continues_then_retried(db: Database, release, tmp_path: Path) -> None:
    bad = release[(SUBJECTS[1], "L")]
    (bad / "007").write_bytes(b"this is not DICOM")
    store_path = tmp_path / "vol.zarr"
    summary = run_preprocess(db, store_path, SMALL, reader=read_series_for_tests)
    assert (summary.done, summary.failed) == (5, 1)
    failure = summary.failures[0]
    assert failure["subject_id"] == SUBJECTS[1] and failure["side"] == "L"
    assert str(bad) in failure["reason"]
    failed = [r for r in volume_rows(db) if r.status == "failed"]
    assert len(failed) == 1 and failed[0].position is None and str(bad) in failed[0].reason
    frame = indexed_volumes(db, store_path)
    assert frame.loc[frame["status"] == "failed", "subject_id"].tolist() == [SUBJECTS[1]]

    # the series is repaired: a re-run retries only the failed one
    (bad / "007").unlink()
    write_series(
        bad,
        render_knee_volume(0.0, "L", np.random.default_rng([SUBJECTS[1], ord("L")]), "small"),
        SeriesMeta(patient_id=str(SUBJECTS[1]), series_description="SAG_3D_DESS_LEFT", spacing_mm=GEOMETRY.spacing_mm),
    )
    retry = run_preprocess(db, store_path, SMALL, reader=read_series_for_tests)
    assert (retry.done, retry.skipped, retry.failed) == (1, 5, 0)
    rows = volume_rows(db)
    assert len(rows) == 6 and {r.status for r in rows} == {"ok"}
    assert verify_store(db, store_path)["ok"] == 6


def test_strict_run_stops_at_first_failure(db: Database, release, tmp_path: Path) -> None:
    (release[(SUBJECTS[0], "R")] / "002").write_bytes(b"\x00" * 10)
    with pytest.raises(PreprocessFailure, match=str(SUBJECTS[0])):
        run_preprocess(db, tmp_path / "vol.zarr", SMALL, strict=True, reader=read_series_for_tests)
    # series run in (subject, side) order: the left knee was done, nothing after the right one
    rows = volume_rows(db)
    assert sorted(r.status for r in rows) == ["failed", "ok"]


def test_limit_and_parallel_workers(db: Database, release, tmp_path: Path) -> None:
    store_path = tmp_path / "vol.zarr"
    first = run_preprocess(db, store_path, SMALL, limit=2, reader=read_series_for_tests)
    assert (first.done, first.remaining) == (2, 4)
    rest = run_preprocess(db, store_path, SMALL, workers=2, reader=read_series_for_tests)
    assert (rest.done, rest.skipped, rest.failed) == (4, 2, 0)
    positions = sorted(r.position for r in volume_rows(db))
    assert positions == list(range(6))
    assert verify_store(db, store_path)["ok"] == 6


def test_orphan_slot_is_reported_then_reused(db: Database, release, tmp_path: Path) -> None:
    store_path = tmp_path / "vol.zarr"
    run_preprocess(db, store_path, SMALL, limit=3, reader=read_series_for_tests)
    # a run killed after writing data + keys of a 4th volume, before indexing it
    store = VolumeStore.open(store_path, mode="r+")
    store.write("sag", 3, np.full(SMALL.stored_shape("sag"), 7, np.uint8), key=knee_key(1, "L"), visit=0)
    report = verify_store(db, store_path)
    assert report["orphans"]["sag"] == [3] and report["mismatches"] == [] and report["warnings"] == []
    run_preprocess(db, store_path, SMALL, reader=read_series_for_tests)
    report = verify_store(db, store_path)
    assert report["orphans"]["sag"] == [] and report["ok"] == 6
    assert VolumeStore.open(store_path).capacity("sag") == 6  # slot 3 reused, not appended


def test_verify_detects_a_flipped_byte_and_a_wrong_key(db: Database, release, tmp_path: Path) -> None:
    store_path = tmp_path / "vol.zarr"
    run_preprocess(db, store_path, SMALL, reader=read_series_for_tests)
    chunk = store_path / "sag" / "c" / "2" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    zarr.open_group(str(store_path), mode="r+")["knee_keys/sag"][4] = 12345
    report = verify_store(db, store_path)
    problems = {m["position"]: m["problem"] for m in report["mismatches"]}
    assert set(problems) == {2, 4} and report["ok"] == 4
    assert "knee key 12345" in problems[4]

    runner = CliRunner()
    result = runner.invoke(app, ["--db", db.url, "store", "verify", str(store_path), "--json"])
    assert result.exit_code == 1
    assert len(json.loads(result.stdout)["mismatches"]) == 2


def test_store_info_and_verify_cli(db: Database, release, tmp_path: Path) -> None:
    store_path = tmp_path / "vol.zarr"
    run_preprocess(db, store_path, SMALL, reader=read_series_for_tests)
    runner = CliRunner()
    result = runner.invoke(app, ["store", "info", str(store_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["params_hash"] == SMALL.hash() and info["views"]["sag"]["used"] == 6
    assert info["views"]["sag"]["compression_ratio"] > 1
    result = runner.invoke(app, ["store", "info", str(store_path)])
    assert result.exit_code == 0 and "20x44x44" in result.stdout
    result = runner.invoke(app, ["--db", db.url, "store", "verify", str(store_path)])
    assert result.exit_code == 0 and "6 ok" in result.stdout
    open_database(tmp_path / "other.sqlite").dispose()  # `store verify` only reads: it never creates one
    other_db = ["--db", str(tmp_path / "other.sqlite")]
    result = runner.invoke(app, [*other_db, "store", "verify", str(store_path), "--json"])
    assert result.exit_code == 0 and "is --db the database" in json.loads(result.stdout)["warnings"][0]
    result = runner.invoke(app, ["store", "info", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 1 and "not a volume store" in result.output


# --------------------------------------------------------------------------- the real CLI


def _cli(db: Database, *args: str) -> list[str]:
    return [sys.executable, "-m", "oaicli.main", "--db", db.url, *args]


@pytest.mark.slow
def test_cli_run_killed_halfway_resumes_exactly_once(db: Database, tmp_path: Path) -> None:
    subjects = tuple(9000100 + 10 * i for i in range(12))
    make_release(db, tmp_path / "release", subjects)
    store_path = tmp_path / "vol.zarr"
    cmd = _cli(db, "preprocess", "--store", str(store_path), "--preset", "small", "--workers", "1", "--json")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    indexed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        with db.read() as session:
            indexed = session.execute(select(func.count()).select_from(Volume)).scalar_one()
        if indexed >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 4 <= indexed < 24

    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["failed"] == 0 and summary["skipped"] >= 4
    assert summary["skipped"] + summary["done"] == 24

    with db.read() as session:
        rows = session.execute(select(Volume.knee_id, Volume.position, Volume.status)).all()
    assert len(rows) == 24 and {r.status for r in rows} == {"ok"}
    assert len({r.knee_id for r in rows}) == 24 and len({r.position for r in rows}) == 24
    verify = subprocess.run(
        _cli(db, "store", "verify", str(store_path), "--json"), cwd=repo, capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["ok"] == 24 and report["mismatches"] == []
    # a volume written but not indexed at the kill was an orphan slot, reused by the re-run
    assert report["orphans"]["sag"] == [] and report["unused"]["sag"] == 0


def test_cli_preprocess_strict_exit_code(db: Database, release, tmp_path: Path) -> None:
    (release[(SUBJECTS[2], "R")] / "003").write_bytes(b"garbage")
    runner = CliRunner()
    base = [
        "--db",
        db.url,
        "preprocess",
        "--store",
        str(tmp_path / "v.zarr"),
        "--preset",
        "small",
        "--workers",
        "1",
    ]
    result = runner.invoke(app, [*base, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["failed"] == 1 and summary["done"] == 5
    result = runner.invoke(app, [*base, "--strict"])
    # Rich wraps long lines: compare without whitespace (the path has none)
    assert result.exit_code == 1 and str(release[(SUBJECTS[2], "R")]) in "".join(result.output.split())


def test_cli_rejects_bad_options_and_empty_database(db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--db", db.url, "preprocess", "--store", str(tmp_path / "v.zarr")]
    result = runner.invoke(app, [*base, "--view", "sideways"])
    assert result.exit_code == 2 and "sideways" in result.output
    result = runner.invoke(app, [*base, "--preset", "huge"])
    assert result.exit_code == 2 and "huge" in result.output
    result = runner.invoke(app, base)
    assert result.exit_code == 1 and "no SAG_3D_DESS series of visit 0" in " ".join(result.output.split())
    assert not (tmp_path / "v.zarr").exists()


def test_second_writer_on_the_same_store_is_refused(db: Database, release, tmp_path: Path) -> None:
    from oaicohort.errors import ConcurrentWriteError
    from oaicohort.imaging.runs.writer import writer_lock

    store = VolumeStore.create(tmp_path / "vol.zarr", SMALL, views=("sag",))
    with writer_lock(store), pytest.raises(ConcurrentWriteError, match="another `oai preprocess`"):
        run_preprocess(db, store.path, SMALL, reader=read_series_for_tests)
    assert run_preprocess(db, store.path, SMALL, reader=read_series_for_tests).done == 6


def test_a_series_dropped_from_the_index_meanwhile_is_a_failure_not_a_crash(
    db: Database, release, tmp_path: Path
) -> None:
    """A concurrent ingest of a newer release may drop a series while it is being read."""
    dropped = release[(SUBJECTS[1], "L")]

    def read_then_drop(folder: Path) -> DicomVolume:
        series = read_series(folder)
        if folder == dropped:
            with db.write() as session:
                session.execute(
                    delete(ImageSeries).where(ImageSeries.folder == str(folder.relative_to(folder.parents[3])))
                )
        return series

    summary = run_preprocess(db, tmp_path / "vol.zarr", SMALL, reader=read_then_drop)
    assert (summary.done, summary.failed) == (5, 1)
    assert "left the database index" in summary.failures[0]["reason"]
    report = verify_store(db, tmp_path / "vol.zarr")
    assert report["mismatches"] == [] and report["ok"] == 5
    assert len(report["orphans"]["sag"]) == 1  # its data, unindexed, is reused by the next run


def test_a_padded_series_records_where_its_volumes_hold_real_data(
    db: Database, release: dict[tuple[int, str], Path], tmp_path: Path
) -> None:
    """A series one slice above the minimum (and two columns above it) is padded; each view's
    stored volume records the box of voxels whose blocks are all real data (issue 21)."""
    from oaicohort.imaging.recipe.extent import extent_of
    from oaicohort.imaging.series.size import minimum_source_shape

    need = minimum_source_shape(SMALL)  # (32, 88, 88)
    assert need == (32, 88, 88)

    def one_above_minimum(folder: Path) -> DicomVolume:
        series = read_series(folder)
        series.pixels = series.pixels[: need[0] + 1, :, : need[2] + 2]
        return series

    summary = run_preprocess(db, tmp_path / "vol.zarr", SMALL, views=("sag", "cor", "ax"), reader=one_above_minimum)
    assert summary.failed == 0 and summary.done == 6
    rows = volume_rows(db)
    # 33 slices centred in 40: real slices 3..35; 90 - 2*4 = 82 columns centred in 88: 3..84
    expected = {
        "sag": [[2, 18], [0, 44], [2, 42]],
        "cor": [[1, 21], [0, 44], [3, 36]],
        "ax": [[0, 22], [2, 42], [3, 36]],
    }
    for row in rows:
        assert row.notes["slices_padded"] == {"from": 33, "to": 40}
        assert row.notes["valid_extent"][row.view] == expected[row.view]
        # the recorded box is the one derived from the series shape (stores made before it was recorded)
        legacy = {k: v for k, v in row.notes.items() if k != "valid_extent"}
        assert extent_of(legacy, SMALL, row.view) == tuple(tuple(a) for a in expected[row.view])
        # and it is at least the crop: random crops can stay inside it
        crop = SMALL.crop_shape(row.view)
        assert all(b - a >= c for (a, b), c in zip(expected[row.view], crop))
    # an unpadded series records nothing (its notes, and the store fingerprint, are unchanged)
    unpadded = read_series(next(iter(release.values()))).pixels.shape
    assert extent_notes(unpadded, SMALL, ("sag", "cor", "ax")) == {}
