"""Class 4: the store is trusted only after it is checked.

A damaged or missing chunk stops training/evaluation reads with knee, view and store path named
(never zeros); a missing store path never drops index rows nor becomes a silent replacement,
whatever the kind of run (MRI or X-ray); creating a store is race-free (the second creator gets
exit 3)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from oaicohort.db import Database, open_database
from oaicohort.db.schema import Volume
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.imaging.store.checks import StoreIntegrityError
from oaicohort.imaging.store.index import indexed_volumes, verify_store
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.ingest.run import ingest_release
from oaimodels.data import make_source
from tests.helpers.reliability import REPO, message_lines, run_oai, spawn_oai, table_rows

SMALL = PreprocessParams.preset_named("small")


@pytest.fixture
def preprocessed(xray_imaging_release: Path, any_db: Database, tmp_path: Path) -> tuple[Database, Path]:
    ingest_release(any_db, xray_imaging_release)
    store = tmp_path / "vol.zarr"
    summary = run_preprocess(any_db, store, SMALL, views=("sag",), workers=1)
    assert summary.done == 6
    return any_db, store


def _volumes(db: Database, store: Path):  # type: ignore[no-untyped-def]
    frame = indexed_volumes(db, store, "sag")
    return frame[frame["status"] == "ok"].sort_values("position").reset_index(drop=True)


def _chunk(store: Path, position: int) -> Path:
    return store / "sag" / "c" / str(position) / "0" / "0" / "0"


@pytest.mark.parametrize("mode", ["resident", "workers"])
def test_a_damaged_chunk_stops_training_reads_naming_knee_view_store(preprocessed, mode: str) -> None:  # type: ignore[no-untyped-def]
    db, store = preprocessed
    rows = _volumes(db, store)
    victim = rows.iloc[2]
    volume = VolumeStore.open(store).read("sag", int(victim.position))
    volume[5, 5, 5] ^= 0xFF  # one voxel changed, re-compressed: a valid chunk with the wrong content
    _chunk(store, int(victim.position)).write_bytes(numcodecs.Zstd().encode(np.ascontiguousarray(volume)))
    with pytest.raises(StoreIntegrityError) as err:  # resident: while loading; workers: while iterating
        source = make_source(
            mode, VolumeStore.open(store), "sag", rows["position"].to_numpy(), torch.device("cpu"), workers=0
        )
        for _ in source.iterate([np.arange(len(rows))]):
            pass
    message = str(err.value)
    assert f"knee {victim.subject_id} {victim.side}" in message and "sag volume" in message
    assert str(store) in message and "does not match its checksum" in message


def test_a_missing_chunk_is_never_read_as_zeros(preprocessed) -> None:  # type: ignore[no-untyped-def]
    db, store = preprocessed
    rows = _volumes(db, store)
    victim = rows.iloc[0]
    _chunk(store, int(victim.position)).unlink()
    with pytest.raises(StoreIntegrityError, match="missing chunk file") as err:
        VolumeStore.open(store).read("sag", int(victim.position))
    assert f"knee {victim.subject_id} {victim.side}" in str(err.value)
    report = verify_store(db, store)
    assert len(report["mismatches"]) == 1


def test_an_intact_store_reads_exactly_and_verifies_once(preprocessed) -> None:  # type: ignore[no-untyped-def]
    db, store = preprocessed
    rows = _volumes(db, store)
    opened = VolumeStore.open(store)
    from oaicohort.imaging.store.volume_store import volume_checksum

    for row in rows.itertuples():
        assert volume_checksum(opened.read("sag", int(row.position))) == row.checksum
    assert opened._verifier().verified["sag"] == set(rows["position"].astype(int))


def test_a_missing_store_path_never_drops_index_rows_nor_creates_a_store(preprocessed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, store = preprocessed
    before = table_rows(db, ("volumes",))
    moved = tmp_path / "elsewhere.zarr"
    shutil.move(store, moved)  # the disk is unmounted
    with pytest.raises(StoreIntegrityError, match="indexes 6 volume") as err:
        run_preprocess(db, store, SMALL, views=("sag",), workers=1)
    assert "does not exist" in str(err.value) and "--replace-missing-store" in str(err.value)
    assert not store.exists()
    assert table_rows(db, ("volumes",)) == before
    done = run_oai(db.url, "preprocess", "--store", str(store), "--workers", "1", "--preset", "small")
    assert done.returncode == 1 and "indexes 6 volume(s)" in " ".join(done.stderr.split()), done.stderr
    assert not store.exists() and table_rows(db, ("volumes",)) == before
    store.mkdir()  # an empty mount point
    with pytest.raises(StoreIntegrityError, match="is empty"):
        run_preprocess(db, store, SMALL, views=("sag",), workers=1)
    assert table_rows(db, ("volumes",)) == before
    summary = run_preprocess(db, store, SMALL, views=("sag",), workers=1, replace_missing_store=True)
    assert summary.done == 6  # said explicitly: a new store, the old rows replaced


def test_an_xray_run_on_a_missing_store_path_refuses_and_drops_no_row(preprocessed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The X-ray run had no missing-store guard: on an unmounted store it created a new store at the
    path and forgot every volume row of that path, the MRI rows included."""
    db, store = preprocessed
    before = table_rows(db, ("volumes", "xray_rois"))
    assert len(before["volumes"]) == 6  # the MRI volumes of the store
    shutil.move(store, tmp_path / "elsewhere.zarr")  # the disk is unmounted
    with pytest.raises(StoreIntegrityError, match="indexes 6 volume") as err:
        run_xray_preprocess(db, store, SMALL, workers=1)
    assert "does not exist" in str(err.value) and "--replace-missing-store" in str(err.value)
    assert not store.exists() and table_rows(db, ("volumes", "xray_rois")) == before
    args = ("preprocess", "--view", "xray", "--store", str(store), "--workers", "1", "--preset", "small")
    done = run_oai(db.url, *args)
    assert done.returncode == 1 and "indexes 6 volume(s)" in " ".join(done.stderr.split()), done.stderr
    assert not store.exists() and table_rows(db, ("volumes", "xray_rois")) == before
    # --replace-missing-store is heard for --view xray too: a new store, the old rows replaced
    replaced = run_oai(db.url, *args, "--replace-missing-store", "--json")
    assert replaced.returncode == 0, replaced.stderr
    with db.read() as s:
        views = sorted(s.scalars(select(Volume.view).where(Volume.status == "ok")))
    assert views and views == ["xray"] * json.loads(replaced.stdout)["done"]  # the MRI rows are gone, by request
    assert VolumeStore.open(store).views == ("xray",)


SLOW_CREATE = textwrap.dedent(
    """
    import sys, time
    import oaicohort.imaging.store.volume_store as st
    from oaicohort.errors import ConcurrentWriteError
    from oaicohort.imaging.recipe.params import PreprocessParams
    original = st.create_atomically
    def slow(root, build):
        def slow_build(folder):
            build(folder)
            time.sleep(1.0)  # both creators are past the "does it exist" check by now
        original(root, slow_build)
    st.create_atomically = slow
    while time.time() < float(sys.argv[2]):
        time.sleep(0.005)
    try:
        st.VolumeStore.create(sys.argv[1], PreprocessParams.preset_named(sys.argv[3]), views=("sag",))
    except ConcurrentWriteError as exc:
        print(exc, flush=True)
        sys.exit(3)
    print("created", flush=True)
    """
)


def test_two_creators_of_one_store_the_second_gets_exit_3(tmp_path: Path) -> None:
    target = tmp_path / "new.zarr"
    start = str(time.time() + 3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SLOW_CREATE, str(target), start, preset],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for preset in ("small", "full")
    ]
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], results
    winner = "small" if procs[0].returncode == 0 else "full"
    store = VolumeStore.open(target)
    assert store.params.preset == winner and store.views == ("sag",)  # one creator's store, whole
    assert [p.name for p in tmp_path.iterdir()] == ["new.zarr"]  # no temporary folder left
    loser = results[1] if procs[0].returncode == 0 else results[0]
    assert "another process created a store at this path" in loser[0]


def test_two_preprocess_runs_on_one_new_store(xray_imaging_release: Path, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_oai(db_url, "ingest", str(xray_imaging_release)).returncode == 0
    store = tmp_path / "vol.zarr"
    args = ("preprocess", "--store", str(store), "--preset", "small", "--workers", "1")
    procs = [spawn_oai(db_url, *args), spawn_oai(db_url, *args)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 3} and 0 in codes, outs
    for code, (_, err) in zip(codes, outs, strict=True):
        if code == 3:
            assert "Traceback" not in err and len(message_lines(err)) <= 3
    db = open_database(db_url)
    report = verify_store(db, store)
    assert report["ok"] == 6 and report["mismatches"] == []
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Volume).where(Volume.status == "ok")) == 6
    db.dispose()
    assert [n for n in os.listdir(tmp_path) if "zarr" in n] == ["vol.zarr"]  # no temporary store left
