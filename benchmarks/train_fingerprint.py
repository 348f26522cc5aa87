"""Fingerprint of a toy training + evaluation run, to check a refactor changes no number.

    python benchmarks/train_fingerprint.py OUT.json            # write the fingerprint
    python benchmarks/train_fingerprint.py OUT.json --compare BEFORE.json

Trains the test toy model (``tests/helpers/training.py``: 3D CNN on 20x36x36 volumes) on two
folds for four epochs on CPU with deterministic settings, evaluates the run (fold ensemble on
the held-out knees), and records SHA-256 digests of every number that matters: each epoch's
log record (timings removed), the best/last weights, the validation and test predictions and
the metrics (efficiency timings removed). ``--compare`` exits 1 naming every entry that differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oaimodels import run_folder as rf
from oaimodels.evaluation.held_out import evaluate_run
from oaimodels.training.checkpoint import load_checkpoint
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run
from tests.helpers.training import make_toy_cohort, toy_model

TIMING = {"volumes_per_s", "train_seconds", "data_wait_seconds", "seconds"}


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(root: Path) -> dict[str, str]:
    torch.set_num_threads(1)
    out: dict[str, str] = {}
    with toy_model():
        store, knees = make_toy_cohort(root, n_subjects=20)
        config = TrainConfig(
            store=str(store), out=str(root / "run"), model="toy3d", epochs=4, batch_size=8, lr=3e-3,
            warmup_epochs=2, loader="resident", workers=0, device="cpu", threads=1, deterministic=True,
        )  # fmt: skip
        run = train_run(config, knees=knees)
        metrics = evaluate_run(run, device="cpu", n_resamples=100, latency=False, loader="resident", threads=1)
    for fold, path in rf.fold_dirs(run).items():
        log = [{k: v for k, v in r.items() if k not in TIMING} for r in rf.read_log(path / rf.LOG)]
        out[f"fold_{fold}/log"] = _digest(log)
        out[f"fold_{fold}/best.pt"] = _weights_digest(load_checkpoint(path / rf.BEST)["model"])
        out[f"fold_{fold}/last.pt"] = _weights_digest(load_checkpoint(path / rf.LAST)["model"])
        out[f"fold_{fold}/val_predictions"] = _digest(pd.read_csv(path / rf.VAL_PREDICTIONS).to_csv(index=False))
        summary = {k: v for k, v in rf.read_json(path / rf.SUMMARY).items() if k != "seconds"}
        out[f"fold_{fold}/summary"] = _digest(summary)
    eval_dir = run / rf.EVAL_DIR
    out["eval/predictions"] = _digest((eval_dir / "predictions.csv").read_text())
    kept = {k: v for k, v in metrics.items() if k not in ("efficiency", "run", "out_dir", "labels")}
    out["eval/metrics"] = _digest(kept)
    out["eval/ap"] = repr(metrics["ap"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp = fingerprint(Path(tmp))
    args.out.write_text(json.dumps(fp, indent=2) + "\n")
    print(json.dumps(fp, indent=2))
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = sorted(k for k in before.keys() | fp.keys() if before.get(k) != fp.get(k))
        print("identical" if not differ else f"DIFFERENT: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
