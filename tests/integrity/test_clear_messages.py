"""Class 6 (continued): the failures of the run-folder commands are one line naming the file,
value or option, never "unexpected error: <Python exception>"; usage errors exit 2.

An empty ``knees.csv`` or ``val_predictions.csv``, ``--device tpu``, a series too small for the
run's crop given to ``oai predict``, and a resident loader without the memory for the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaimodels.data import make_source
from oaimodels.data.layout import DataError
from tests.helpers.toy_run import ToyRun, copy_toy_run
from tests.helpers.training import toy_model


def _oai(*args: str) -> tuple[int, str]:
    with toy_model():
        result = CliRunner().invoke(app, list(args))
    output = " ".join(result.output.split())
    assert "Traceback" not in result.output and "unexpected error" not in output, output
    assert len(output) < 600, output
    return result.exit_code, output


@pytest.fixture
def run_copy(toy_run: ToyRun, tmp_path: Path) -> ToyRun:
    return copy_toy_run(toy_run, tmp_path)


@pytest.mark.parametrize("name", ["knees.csv", "fold_0/val_predictions.csv"])
def test_an_empty_run_table_is_named(run_copy: ToyRun, tmp_path: Path, name: str) -> None:
    path = run_copy.run / name
    path.write_bytes(b"")
    code, out = _oai("eval", str(run_copy.run), "--out", str(tmp_path / "ev"), "--no-latency")
    assert code == 1 and f"{path}: the file is empty; the run folder is damaged" in out, out
    if name == "knees.csv":
        code, out = _oai("predict", str(run_copy.run), str(run_copy.store), "--out", str(tmp_path / "p.csv"))
        assert code == 1 and f"{path}: the file is empty" in out, out


@pytest.mark.parametrize("command", ["predict", "eval", "explain"])
def test_an_unknown_device_is_a_usage_error(run_copy: ToyRun, tmp_path: Path, command: str) -> None:
    args = {
        "predict": ["predict", str(run_copy.run), str(run_copy.store), "--out", str(tmp_path / "p.csv")],
        "eval": ["eval", str(run_copy.run), "--out", str(tmp_path / "ev")],
        "explain": ["explain", str(run_copy.run), "--out", str(tmp_path / "ex")],
    }[command]
    code, out = _oai(*args, "--device", "tpu")
    assert code == 2 and "--device 'tpu': not a device; use auto, cpu, cuda or cuda:N" in out, out


def test_a_series_too_small_for_the_runs_crop_is_named_by_predict(run_copy: ToyRun, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    volume = np.random.default_rng(0).integers(0, 4096, size=(12, 40, 40)).astype(np.uint16)
    write_series(folder, volume, SeriesMeta(patient_id="9000099", series_description="SAG_3D_DESS_RIGHT"))
    code, out = _oai("predict", str(run_copy.run), str(folder), "--out", str(tmp_path / "p.csv"))
    assert code == 1 and f"{folder}: image_too_small: series is 12x40x40" in out, out


def test_a_resident_loader_without_the_memory_names_the_store(
    run_copy: ToyRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_empty = torch.empty

    def no_memory(*args: object, **kwargs: object) -> torch.Tensor:
        shape = args[0] if args else kwargs.get("size")
        if isinstance(shape, tuple) and len(shape) == 4 and shape[0] > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 999 bytes.")
        return real_empty(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(torch, "empty", no_memory)
    with pytest.raises(DataError) as err:
        make_source("resident", VolumeStore.open(run_copy.store), "sag", list(range(6)), torch.device("cpu"))
    assert str(run_copy.store) in str(err.value) and "--loader workers" in str(err.value)
