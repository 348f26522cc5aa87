"""Class 8: outputs never overwrite inputs, and no temporary file outlives its command.

Every command that writes checks its output paths first (``oaicohort.outputs``): the database, a
volume store, a run's own files, a release or the command's own input is refused in one line
naming the path and what it is (exit 2), and nothing is written. Writes are atomic; a failed
write (an exception, a full disk) leaves no temporary behind, and one left by a killed process
(SIGKILL) is removed by the next command writing into that folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database
from oaicohort.files import atomic_path, atomic_write_text, clean_leftovers, staged_folder
from oaicohort.ingest.run import ingest_release
from oaicohort.outputs import OutputPathError, check_output
from tests.helpers.releases import ASCII
from tests.helpers.reliability import DATA_TABLES, REPO, table_rows
from tests.helpers.toy_run import ToyRun, copy_toy_run, train_toy_run
from tests.helpers.training import toy_model

LEFTOVER_MARKS = (".tmp", ".partial-", ".creating-")


def _oai(*args: str) -> tuple[int, str]:
    with toy_model():
        result = CliRunner().invoke(app, list(args))
    output = " ".join(result.output.split())
    assert "Traceback" not in result.output and "unexpected error" not in output, output
    return result.exit_code, output


def _digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(
            b"".join(
                p.relative_to(path).as_posix().encode() + p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            )
        ).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(*folders: Path) -> list[str]:
    return sorted(
        str(p) for folder in folders for p in folder.rglob(".*") if any(mark in p.name for mark in LEFTOVER_MARKS)
    )


@pytest.fixture
def run_copy(toy_run: ToyRun, tmp_path: Path) -> ToyRun:
    return copy_toy_run(toy_run, tmp_path)


# --------------------------------------------------------------------------- the guard, command by command


def test_cohort_out_the_database_or_a_release_file_is_refused(
    any_db: Database, pristine_release: Path, tmp_path: Path, run_copy: ToyRun
) -> None:
    release = tmp_path / "release"
    shutil.copytree(pristine_release, release)
    ingest_release(any_db, release)
    rows = table_rows(any_db, DATA_TABLES)
    other_sqlite = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other_sqlite)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    database = Path(any_db.url.removeprefix("sqlite:///")) if any_db.is_sqlite else other_sqlite
    cases = {
        database: "is the database" if any_db.is_sqlite else "is a SQLite database",
        release / ASCII / "AllClinical00.txt": f"is inside the OAI release ingested from {release.resolve()}",
        run_copy.run / "config.json": "is the run's own config.json",
        run_copy.store / "sag" / "new.csv": "is inside the volume store",
    }
    for target, what in cases.items():
        before = _digest(target) if target.exists() else None
        code, out = _oai("--db", any_db.url, "cohort", "--include-excluded", "--format", "csv", "--out", str(target))
        assert code == 2, out
        assert f"--out {target.resolve()}: {what}" in out and "never overwrites" in out, out
        assert (_digest(target) if target.exists() else None) == before
    knees = run_copy.run / "knees.csv"
    code, out = _oai("--db", any_db.url, "cohort", "--table1", str(knees), "--format", "csv")
    assert code == 2 and f"--table1 {knees}: is the run's own knees.csv" in out, out
    assert table_rows(any_db, DATA_TABLES) == rows


def test_predict_out_the_runs_config_is_refused(run_copy: ToyRun) -> None:
    config = run_copy.run / "config.json"
    before = config.read_bytes()
    code, out = _oai("predict", str(run_copy.run), str(run_copy.store), "--out", str(config), "--device", "cpu")
    assert code == 2 and f"--out {config}: is the run's own config.json (run {run_copy.run})" in out, out
    assert config.read_bytes() == before
    code, out = _oai("predict", str(run_copy.run), str(run_copy.store), "--out", str(run_copy.store / "p.csv"))
    assert code == 2 and "is inside the input" in out and not (run_copy.store / "p.csv").exists(), out
    code, out = _oai("predict", str(run_copy.run), str(run_copy.store), "--out", str(run_copy.run / "fold_0" / "p.csv"))
    assert code == 2 and "is the run's own fold_0/p.csv" in out, out


def test_explain_out_the_knee_list_or_the_run_folder_is_refused(run_copy: ToyRun) -> None:
    knees = run_copy.run / "knees.csv"
    before = _digest(run_copy.run)
    for target, what in ((knees, "is the run's own knees.csv"), (run_copy.run, "is the run folder")):
        code, out = _oai("explain", str(run_copy.run), "--out", str(target), "--device", "cpu", "--steps", "2")
        assert code == 2 and f"--out {target}: {what}" in out, out
    assert _digest(run_copy.run) == before
    code, out = _oai("explain", str(run_copy.run), "--out", str(run_copy.store), "--steps", "2")
    assert code == 2 and "is the volume store" in out, out


def test_eval_store_and_train_outputs_inside_inputs_are_refused(run_copy: ToyRun, tmp_path: Path) -> None:
    from oaimodels.training.config import TrainConfig
    from oaimodels.training.run import train_run

    code, out = _oai("eval", str(run_copy.run), "--out", str(run_copy.run / "fold_1"), "--no-latency")
    assert code == 2 and "is the run's own fold_1" in out, out
    code, out = _oai("store", "qc", str(run_copy.store), "--out", str(run_copy.store / "qc"))
    assert code == 2 and "--out" in out and "is inside the input" in out, out
    code, out = _oai(
        "--db", str(tmp_path / "x.sqlite"), "store", "export", str(run_copy.store), "--nifti", str(run_copy.run)
    )
    assert code == 2 and "is the run folder" in out, out
    before = _digest(run_copy.store)
    code, out = _oai("demo", "--out", str(run_copy.store), "--fresh")  # --fresh would delete OUT
    assert code == 2 and "is the volume store" in out and _digest(run_copy.store) == before, out
    code, out = _oai("synth", str(run_copy.store / "release"), "-n", "5")
    assert code == 2 and "is inside the volume store" in out and not (run_copy.store / "release").exists(), out
    with toy_model(), pytest.raises(OutputPathError, match="is inside the input"):
        config = TrainConfig(store=str(run_copy.store), out=str(run_copy.store / "run"), model="toy3d", epochs=1,
                             device="cpu", loader="resident", workers=0)  # fmt: skip
        train_run(config, knees=run_copy.knees)
    assert not (run_copy.store / "run").exists()  # the folder the lock made is gone again


def test_preprocess_store_may_not_be_the_database_or_inside_a_release(
    any_db: Database, pristine_release: Path, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    shutil.copytree(pristine_release, release)
    ingest_release(any_db, release)
    targets = [release / "00m" / "store.zarr", release]
    if any_db.is_sqlite:
        targets.append(Path(any_db.url.removeprefix("sqlite:///")))
    for target in targets:
        code, out = _oai(
            "--db", any_db.url, "preprocess", "--store", str(target), "--preset", "small", "--workers", "1"
        )
        assert code == 2 and f"--store {target.resolve()}" in out, out
    assert not (release / "00m" / "store.zarr").exists()


def test_a_store_export_adds_to_the_folders_index(tmp_path: Path) -> None:
    from oaicohort.imaging.store.export import _merged_index

    out = tmp_path / "nifti"
    out.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        (out / name).write_bytes(b"x")
    first = pd.DataFrame({"file": ["a.nii.gz", "b.nii.gz"], "view": ["sag", "sag"]})
    atomic_write_text(out / "index.csv", first.to_csv(index=False))
    second = pd.DataFrame({"file": ["b.nii.gz", "c.nii.gz"], "view": ["cor", "cor"]})
    merged = _merged_index(out, second)
    assert merged["file"].tolist() == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    assert merged["view"].tolist() == ["sag", "cor", "cor"]  # b rewritten by the second export
    (out / "a.nii.gz").unlink()
    assert _merged_index(out, second)["file"].tolist() == ["b.nii.gz", "c.nii.gz"]  # a file gone: its row too


@pytest.mark.slow
def test_two_nifti_exports_into_one_folder_list_both(tmp_path: Path) -> None:
    from oaicohort.db import open_database
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.runs.mri import run_preprocess
    from oaicohort.imaging.store.selection import store_slots
    from oaicohort.imaging.store.volume_store import VolumeStore
    from tests.helpers.releases import small_imaging_release

    pytest.importorskip("nibabel")
    _, template = small_imaging_release(tmp_path, subjects=2)
    db = open_database(template)
    store = tmp_path / "v.zarr"
    run_preprocess(db, store, PreprocessParams.preset_named("small"), views=("sag",), workers=1)
    db.dispose()
    slots = store_slots(VolumeStore.open(store), "sag")
    out = tmp_path / "nifti"
    for knees in (f"{slots.subject_id[0]}{slots.side[0]}", f"{slots.subject_id[1]}{slots.side[1]}"):
        code, output = _oai("--db", str(template), "store", "export", str(store), "--nifti", str(out), "--knees", knees)
        assert code == 0, output
    index = pd.read_csv(out / "index.csv")
    assert sorted(index["file"]) == sorted(p.name for p in out.glob("*.nii.gz")) and len(index) == 2
    assert _leftovers(tmp_path) == []


def test_the_guard_itself(tmp_path: Path) -> None:
    plain = tmp_path / "results.csv"
    assert check_output(plain, option="--out") == plain.resolve()
    series = tmp_path / "series"
    series.mkdir()
    with pytest.raises(OutputPathError, match=r"--out .*series/p.csv: is inside the input .*series of this command"):
        check_output(series / "p.csv", option="--out", inputs=[series])
    (tmp_path / "Enrollees.txt").write_text("ID|V00SITE\n")
    with pytest.raises(OutputPathError, match=r"is an OAI release file \(enrollees\)"):
        check_output(tmp_path / "Enrollees.txt", option="--out")
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    assert check_output(store, option="--store", allow="store") == store  # preprocess writes its store
    with pytest.raises(OutputPathError, match="is inside the volume store"):
        check_output(store / "inner.zarr", option="--store", allow="store")  # never a store in a store
    assert OutputPathError("x").exit_code == 2


def test_a_run_folder_is_protected_without_the_model_layer(run_copy: ToyRun) -> None:
    """The guard knows a run's files from the cohort layer alone (an install without torch)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['oaimodels'] = None; sys.modules['torch'] = None\n"
        "from oaicohort.outputs import check_output\n"
        f"check_output({str(run_copy.run / 'knees.csv')!r}, option='--out')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "is the run's own knees.csv" in result.stderr, result.stderr
    assert "ModuleNotFoundError" not in result.stderr and "ImportError" not in result.stderr


# --------------------------------------------------------------------------- no temporary outlives its command


def test_an_injected_failure_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from oaimodels import run_folder as rf
    from oaimodels.training.checkpoint import CheckpointError, save_checkpoint

    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt), staged_folder(tmp_path / "explain") as stage:
        (stage / "explanations.csv").write_text("half")
        raise KeyboardInterrupt
    assert _leftovers(tmp_path) == [] and not (tmp_path / "explain").exists()

    def full_disk(obj: object, f: object) -> None:
        Path(str(f)).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint({"x": 1}, tmp_path / "last.pt")
    message = str(err.value)
    assert str(tmp_path / "last.pt") in message and "MB free" in message and "--resume" in message
    assert "inline_container" not in message.split("(")[0]  # the file first, torch's words in brackets
    assert _leftovers(tmp_path) == [] and not (tmp_path / "last.pt").exists()
    with pytest.raises(OSError):  # a failed write of the run folder's writer: nothing left either
        rf.write_json(tmp_path / "no_such_folder" / "config.json", {"a": 1})
    assert _leftovers(tmp_path) == []


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from oaicohort.files import atomic_path, staged_folder
    folder, kind = Path(sys.argv[1]), sys.argv[2]
    if kind == "file":
        with atomic_path(folder / "predictions.csv") as tmp:
            tmp.write_text("half")
            print("ready", flush=True)
            time.sleep(60)
    elif kind == "checkpoint":
        import torch
        from oaimodels.training import checkpoint
        def slow_save(obj, f):
            Path(str(f)).write_bytes(b"half")
            print("ready", flush=True)
            time.sleep(60)
        torch.save = slow_save
        checkpoint.save_checkpoint({"x": 1}, folder / "last.pt")
    else:
        with staged_folder(folder / "explain") as stage:
            (stage / "explanations.csv").write_text("half")
            print("ready", flush=True)
            time.sleep(60)
    """
)


@pytest.mark.parametrize("kind", ["file", "checkpoint", "folder"])
def test_a_killed_writers_temporary_is_removed_by_the_next_command(tmp_path: Path, kind: str, run_copy: ToyRun) -> None:
    folder = run_copy.run / "fold_0" if kind == "checkpoint" else tmp_path / "out"
    folder.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(folder), kind], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    left = _leftovers(tmp_path)
    assert len(left) == 1 and f"{proc.pid}" in left[0], left  # what a killed write leaves ...
    if kind == "checkpoint":  # ... and the next command writing there removes it (resuming the run)
        train_toy_run(run_copy.run, run_copy.store, run_copy.knees, resume=True)
    elif kind == "file":
        code, out = _oai("predict", str(run_copy.run), str(run_copy.store), "--out", str(folder / "predictions.csv"))
        assert code == 0, out
    else:
        code, out = _oai("explain", str(run_copy.run), "--out", str(folder / "explain"), "--steps", "2", "--top", "0")
        assert code == 0, out
    assert _leftovers(tmp_path) == []


def test_a_live_writers_temporary_is_kept(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".predictions.csv.tmp{sleeper.pid}"
        live.write_text("being written")
        dead = tmp_path / ".predictions.csv.tmp999999999"
        dead.write_text("left")
        assert clean_leftovers(tmp_path) == [dead] and live.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
