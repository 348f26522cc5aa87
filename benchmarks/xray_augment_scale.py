"""Does augmenting the radiograph at twice the model's resolution change results? (issue 21)

    python benchmarks/xray_augment_scale.py --seeds 0 1 4 --json xray_scale.json
    python benchmarks/xray_augment_scale.py --inputs-only --size full --subjects 40

The reference rotates and gamma-corrects its 700-pixel knee ROI and only then downscales it x0.5
for the model; a store at ``xray_stored_scale=1`` holds the ROI at the model's input size and
augments it there. This script compares the two on the synthetic demo radiographs, with
everything else equal:

- **scale 1**: the ``small`` preset's 70-pixel ROIs, rotated and gamma-corrected at 70 pixels;
- **scale 2**: the same ROIs stored at 140 pixels, rotated and gamma-corrected at 140, then
  reduced by 2x2 means to the same 70-pixel model input (the reference's order).

Per seed: one synthetic release (the X-ray demo's size), one split, and xr_resnext50 trained on
both stores with the X-ray demo recipe plus the paper's augmentations (rotation +-15 deg p 0.5,
gamma 0.5-2 p 0.5), the same seed, folds and epochs. Two measurements:

1. **Inputs:** the model inputs of the validation knees under the same random draws, scale 2
   against scale 1: mean absolute difference, against the mean change the augmentations
   themselves make (normalised units).
2. **Results:** the validation folds' AP and ROC AUC per epoch (``fold_k/log.jsonl``): the last
   epoch's and the mean of the last four, never the best epoch (chosen on the same knees).

``--inputs-only --size full`` measures (1) alone at the reference's own sizes: 700-pixel ROIs
augmented at 700 and reduced to 350, against 350-pixel ROIs augmented at 350 (no training).

This decides a default, so it reads validation folds only: the held-out site is never
evaluated, and the fresh seeds of ``benchmarks/demo_seeds.py`` (from 100 on) are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.demo_seeds import FIRST_FRESH_SEED
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.splits import make_split
from oaicohort.db import open_database
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.imaging.store.selection import select_slots, store_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.ingest.run import ingest_release
from oaicohort.synth.clinical import write_release
from oaicohort.synth.radiograph_release import write_radiographs
from oaimodels import run_folder as rf
from oaimodels.data import AugmentParams, resolve_layout
from oaimodels.data.augment import cpu_generator
from oaimodels.data.pipeline import BatchPreparer
from oaimodels.demo import DEMO_DEFINITION, DEMO_SIZE, XRAY_DEMO_RECIPE
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run

MODEL = "xr_resnext50"
SCALES = (1, 2)
LAST = 4  # epochs averaged at the end of training


def _store(scale: int, size: str = "small") -> PreprocessParams:
    return dataclasses.replace(PreprocessParams.preset_named(size), xray_stored_scale=scale)


def inputs_only(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Measurement (1) on ``args.subjects`` synthetic subjects at ``args.size`` (no training)."""
    seed = args.seeds[0]
    release = root / "release"
    write_release(release, subjects=args.subjects, seed=seed)
    write_radiographs(release, size=args.size, seed=seed, workers=args.workers)
    db = open_database(root / "oai.sqlite")
    try:
        ingest_release(db, release)
        stores = {scale: root / f"store_x{scale}.zarr" for scale in SCALES}
        for scale, path in stores.items():
            run_xray_preprocess(db, path, _store(scale, args.size), workers=args.workers)
    finally:
        db.dispose()
    slots = store_slots(VolumeStore.open(stores[1]), "xray", visit=None)
    knees = [(int(subject), str(side)) for subject, side in zip(slots["subject_id"], slots["side"])]
    shapes = {scale: list(VolumeStore.open(path).volume_shape("xray")) for scale, path in stores.items()}
    return {"size": args.size, "knees": len(knees), "stored_shapes": shapes, **input_difference(stores, knees)}


def input_difference(stores: dict[int, Path], knees: list[tuple[int, str]], samples: int = 4) -> dict[str, float]:
    """Mean |scale 2 - scale 1| of the augmented model inputs of ``knees`` under the same draws,
    and the mean |augmented - unaugmented| at scale 1 (the augmentations' own size)."""
    batches: dict[int, torch.Tensor] = {}
    preparers: dict[int, BatchPreparer] = {}
    for scale, path in stores.items():
        vs = VolumeStore.open(path)
        chosen = select_slots(store_slots(vs, "xray", visit=None), knees, where=f"{path} (xray)")
        positions = [int(p) for p in chosen["position"]]
        batches[scale] = torch.from_numpy(vs.read_many("xray", positions))
        preparers[scale] = BatchPreparer(resolve_layout(MODEL, "xray", vs), AugmentParams())
    diffs, effects = [], []
    unaugmented = float(
        (preparers[2].eval_inputs(batches[2])["xray"] - preparers[1].eval_inputs(batches[1])["xray"]).abs().mean()
    )
    for k in range(samples):
        # the same generator state for both: the same angles and gammas (a downscale draws nothing)
        one, two = (preparers[s].train_inputs(batches[s], cpu_generator(7, k))["xray"] for s in SCALES)
        plain = preparers[1].eval_inputs(batches[1])["xray"]
        diffs.append(float((two - one).abs().mean()))
        effects.append(float((one - plain).abs().mean()))
    return {
        "scale2_vs_scale1": statistics.fmean(diffs),
        "scale2_vs_scale1_unaugmented": unaugmented,  # the stores' own difference (rounding, percentiles)
        "augmentation_effect": statistics.fmean(effects),
    }


def _fold_logs(run: Path) -> dict[int, list[dict[str, Any]]]:
    return {fold: rf.read_log(folder / rf.LOG) for fold, folder in rf.fold_dirs(run).items()}


def _summary(logs: dict[int, list[dict[str, Any]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in ("val_ap", "val_roc_auc"):
        last = [rows[-1][metric] for rows in logs.values()]
        tail = [statistics.fmean(r[metric] for r in rows[-LAST:]) for rows in logs.values()]
        out[f"{metric}_last"] = statistics.fmean(last)
        out[f"{metric}_last{LAST}"] = statistics.fmean(tail)
    return out


def run_seed(seed: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = root / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    release = out / "release"
    write_release(release, subjects=args.subjects, seed=seed)
    write_radiographs(release, size="small", seed=seed, workers=args.workers)
    db = open_database(out / "oai.sqlite")
    row: dict[str, Any] = {"seed": seed}
    try:
        ingest_release(db, release)
        stores = {scale: out / f"store_x{scale}.zarr" for scale in SCALES}
        for scale, path in stores.items():
            run_xray_preprocess(db, path, _store(scale), workers=args.workers)
        derive_labels(db, DEMO_DEFINITION)
        split = make_split(db, definition=DEMO_DEFINITION, test_sites=("D",), folds=5, seed=seed)
        for scale, path in stores.items():
            started = time.perf_counter()
            recipe = {**XRAY_DEMO_RECIPE, "augment": AugmentParams()}
            config = TrainConfig(
                **recipe, store=str(path), out=str(out / f"run_x{scale}"), model=MODEL, folds=list(args.folds),
                epochs=args.epochs, init="scratch", batch_size=16, warmup_epochs=0, threads=args.threads,
                seed=seed, definition=DEMO_DEFINITION, split=split.split_id, loader="resident",
            )  # fmt: skip
            train_run(config, db)
            logs = _fold_logs(out / f"run_x{scale}")
            row[f"x{scale}"] = {**_summary(logs), "seconds": round(time.perf_counter() - started, 1)}
            row[f"x{scale}"]["per_epoch_val_ap"] = {f: [r["val_ap"] for r in rows] for f, rows in logs.items()}
            row["n_val"] = sum(rows[-1]["n_val"] for rows in logs.values())
        val_knees = _validation_knees(out / "run_x1", args.folds)
        row["inputs"] = input_difference(stores, val_knees)
    finally:
        db.dispose()
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def _validation_knees(run: Path, folds: list[int]) -> list[tuple[int, str]]:
    """Up to 256 knees of the validation folds (training knees whose fold is validated)."""
    table = rf.read_table(run / rf.KNEES, ("subject_id", "side", "role", "fold"))
    val = table[(table["role"] == "train") & table["fold"].isin(folds)].head(256)
    return [(int(s), str(side)) for s, side in zip(val["subject_id"], val["side"])]


def main(argv: list[str] | None = None) -> int:
    subjects, epochs = DEMO_SIZE["radiographs"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 4])
    parser.add_argument("--subjects", type=int, default=subjects)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--inputs-only", action="store_true", help="measure the model inputs only, no training")
    parser.add_argument("--size", choices=("small", "full"), default="small", help="radiographs and preset")
    args = parser.parse_args(argv)
    fresh = [s for s in args.seeds if s >= FIRST_FRESH_SEED]
    if fresh:
        parser.error(f"seeds {fresh} are kept fresh for benchmarks/demo_seeds.py (use seeds below {FIRST_FRESH_SEED})")
    root = args.out or Path(tempfile.mkdtemp(prefix="xray_scale_"))
    if args.inputs_only:
        result = inputs_only(root, args)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"inputs ({args.size}): mean |x2 - x1| {result['scale2_vs_scale1']:.4f} augmented, "
            f"{result['scale2_vs_scale1_unaugmented']:.4f} unaugmented, against the augmentations' own "
            f"{result['augmentation_effect']:.4f} (normalised units, {result['knees']} knees)"
        )
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    if args.size != "small":
        parser.error("training runs use the small preset (the demo's); --size full goes with --inputs-only")
    rows = []
    for seed in args.seeds:
        row = run_seed(seed, root, args)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items()}, default=str), flush=True)
    print(
        f"\n{'seed':>4}  {'x1 AP last/last4':>18}  {'x2 AP last/last4':>18}  {'x1 AUC last4':>12}  {'x2 AUC last4':>12}"
    )
    for r in rows:
        a, b = r["x1"], r["x2"]
        print(
            f"{r['seed']:>4}  {a['val_ap_last']:.3f} / {a[f'val_ap_last{LAST}']:.3f}     "
            f"{b['val_ap_last']:.3f} / {b[f'val_ap_last{LAST}']:.3f}     "
            f"{a[f'val_roc_auc_last{LAST}']:>12.3f}  {b[f'val_roc_auc_last{LAST}']:>12.3f}"
        )
    for key in (f"val_ap_last{LAST}", f"val_roc_auc_last{LAST}"):
        delta = [r["x2"][key] - r["x1"][key] for r in rows]
        sd = f" ± {statistics.stdev(delta):.3f}" if len(delta) > 1 else ""
        print(f"x2 - x1, {key}: {statistics.fmean(delta):+.3f}{sd} over {len(delta)} seeds")
    diff = statistics.fmean(r["inputs"]["scale2_vs_scale1"] for r in rows)
    effect = statistics.fmean(r["inputs"]["augmentation_effect"] for r in rows)
    plain = statistics.fmean(r["inputs"]["scale2_vs_scale1_unaugmented"] for r in rows)
    print(
        f"inputs: mean |x2 - x1| {diff:.4f} augmented, {plain:.4f} unaugmented, against the augmentations' "
        f"own {effect:.4f} (normalised units)"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
