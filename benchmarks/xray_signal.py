"""Check: is the progression signal of the synthetic radiographs in the stored X-ray knee ROIs?

    oai demo --model xr_resnext50 --out DEMO ...      # or any synth -> ingest -> preprocess --view xray
    python benchmarks/xray_signal.py DEMO [--store DEMO/store.zarr] [--run DEMO/run]

Separates "the pipeline loses the signal" from "the model does not learn it". For the included
knees of the demo's cohort it prints, each as AUC and AP for fast-or-slow (prevalence alongside):

- the truth the synthetic radiographs were drawn from (``release/synth_xray_truth.csv``): the
  latent progression factor, the baseline KLG, medial joint-space width, osteophyte count;
- ``medial gap``: a hand measurement on the STORED ROI (its intensity dip across the medial
  tibiofemoral joint: summed darkness of the central rows in the medial half of the crop, left
  knees already flipped), with its Spearman correlation to the true medial JSW;
- with ``--run``: the trained model's test-set AP and AUC (from ``RUN/eval/metrics.json``).

The measurement needs no training: when it tracks the true JSW and beats prevalence, the stored
crops carry the signal, and a model that does not is a training question.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

from oaicohort.cohort.query import Cohort
from oaicohort.db import open_database
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.vocabulary import XRAY_VIEW


def medial_gap(rois: np.ndarray) -> np.ndarray:
    """Darkness of the joint line in the medial half of each (N, H, W) ROI: the larger, the wider
    the medial joint space. Left knees are stored flipped, so medial is the same side for all."""
    size = rois.shape[-1]
    centre = size // 2
    band = rois[:, centre - size // 8 : centre + size // 8, int(size * 0.5) : int(size * 0.7)].astype(np.float64)
    profile = band.mean(axis=2)  # (N, rows)
    return (profile.max(axis=1, keepdims=True) - profile).sum(axis=1)


def score(name: str, y: np.ndarray, x: np.ndarray) -> dict[str, object]:
    """AUC and AP of ``x`` oriented so that higher means progression (the orientation is shown)."""
    auc = roc_auc_score(y, x)
    sign = 1.0 if auc >= 0.5 else -1.0
    return {
        "feature": name,
        "direction": "higher" if sign > 0 else "lower",
        "auc": round(float(roc_auc_score(y, sign * x)), 3),
        "ap": round(float(average_precision_score(y, sign * x)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="folder with oai.sqlite, store.zarr and release/")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    store_path = (args.store or args.demo / "store.zarr").resolve()
    db = open_database(args.demo / "oai.sqlite")
    try:
        knees = Cohort(db).knees(store=store_path, view=XRAY_VIEW)
    finally:
        db.dispose()
    truth = pd.read_csv(args.demo / "release" / "synth_xray_truth.csv")
    knees = knees.merge(truth, on=["subject_id", "side"], how="inner")
    store = VolumeStore.open(store_path)
    rois = store.read_many(XRAY_VIEW, knees["position"].tolist())[:, 0]
    y = (knees["label"] != "none").to_numpy().astype(int)
    gap = medial_gap(rois)
    rows = [
        score("latent (truth)", y, knees["latent"].to_numpy()),
        score("KLG (truth)", y, knees["klg"].to_numpy()),
        score("medial JSW mm (truth)", y, knees["jsw_medial_mm"].to_numpy()),
        score("osteophytes (truth)", y, knees["osteophytes"].to_numpy()),
        score("medial gap (stored ROI)", y, gap),
    ]
    result: dict[str, object] = {
        "knees": len(knees),
        "roi_shape": list(rois.shape[1:]),
        "prevalence": round(float(y.mean()), 3),
        "gap_vs_true_jsw_spearman": round(float(spearmanr(gap, knees["jsw_medial_mm"]).statistic), 3),
        "features": rows,
    }
    if args.run is not None:
        metrics = json.loads((args.run / "eval" / "metrics.json").read_text())
        result["model_test"] = {k: metrics.get(k) for k in ("ap", "roc_auc", "prevalence", "n_knees")}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['knees']} knees, ROI {result['roi_shape']}, prevalence {result['prevalence']}")
    print(f"medial gap vs true medial JSW: Spearman {result['gap_vs_true_jsw_spearman']}")
    print(f"{'feature':<26}{'progression when':>18}{'AUC':>8}{'AP':>8}")
    for row in rows:
        print(f"{row['feature']:<26}{row['direction']:>18}{row['auc']:>8}{row['ap']:>8}")
    if "model_test" in result:
        print(f"trained model, test set: {result['model_test']}")


if __name__ == "__main__":
    main()
