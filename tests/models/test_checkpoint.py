"""Checkpoints hold weights and plain values only: a file that would run code is refused unread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from oaimodels import run_folder as rf
from oaimodels.training.checkpoint import CheckpointError, load_checkpoint, load_fold_model, save_checkpoint
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run
from tests.helpers.training import make_toy_cohort, toy_model

REPO = Path(__file__).resolve().parents[2]


class _OpensAFile:
    """Unpickling this would create ``path`` (what any code in a malicious checkpoint could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


class _Settings:
    """A harmless class instance: still not a plain state dict."""

    lr = 1e-4


def _plain() -> dict:
    return {"model": {"w": torch.ones(2)}, "meta": {"epoch": 0}}


def test_plain_state_dict_round_trips(tmp_path: Path) -> None:
    save_checkpoint(_plain(), tmp_path / "ok.pt")
    loaded = load_checkpoint(tmp_path / "ok.pt")
    assert torch.equal(loaded["model"]["w"], torch.ones(2)) and loaded["meta"] == {"epoch": 0}
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary left


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda marker: _OpensAFile(marker), id="object-that-runs-code"),
        pytest.param(lambda marker: os.getcwd, id="function"),
        pytest.param(lambda marker: _Settings(), id="class-instance"),
    ],
)
def test_checkpoint_holding_code_is_refused_and_not_run(tmp_path: Path, payload) -> None:
    marker = tmp_path / "ran.txt"
    ckpt = _plain() | {"extra": payload(marker)}
    torch.save(ckpt, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: not a plain state dict"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused: not a plain state dict"):
        load_fold_model(tmp_path / "evil.pt")
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_a_non_dict_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="refused: not a plain state dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_resume_refuses_a_poisoned_last_checkpoint(tmp_path: Path) -> None:
    with toy_model():
        store, knees = make_toy_cohort(tmp_path, n_subjects=10)
        config = TrainConfig(
            store=str(store), out=str(tmp_path / "run"), model="toy3d", epochs=2, folds=[0], batch_size=8,
            warmup_epochs=0, loader="resident", workers=0, device="cpu", threads=1,
        )  # fmt: skip
        run = train_run(config, knees=knees)
        last = rf.fold_dir(run, 0) / rf.LAST
        (rf.fold_dir(run, 0) / rf.SUMMARY).unlink()  # unfinished: resume reads last.pt
        marker = tmp_path / "ran.txt"
        torch.save(load_checkpoint(last) | {"extra": _OpensAFile(marker)}, last)
        with pytest.raises(CheckpointError, match="refused: not a plain state dict"):
            train_run(config, knees=pd.read_csv(run / rf.KNEES), resume=True)
    assert not marker.exists()


def test_evaluation_does_not_import_the_training_loop() -> None:
    code = (
        "import sys, oaimodels.evaluation.held_out; "
        "loaded = sorted(m for m in sys.modules if m in ('oaimodels.training.loop', 'oaimodels.training.run')); "
        "print(loaded)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"
