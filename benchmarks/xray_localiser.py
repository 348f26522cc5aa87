"""Accuracy of the classical X-ray joint localiser on synthetic bilateral PA radiographs.

    python benchmarks/xray_localiser.py [--n 200] [--size full] [--seed 0]

Renders ``n`` radiographs (``oaicohort.synth.radiographs``, KLG 0-4 and latents drawn as in the
cohort), localises both knees (``oaicohort.imaging.recipe.xray_localiser``) and compares the 140 mm ROI
around the found centre with the ROI around the true centre. Prints the IoU distribution, the
centre error in mm and the share of knees with IoU >= 0.8 (target: >= 95%), then the degenerate
cases (blank, one leg, rotated), which must be failures with a reason.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from oaicohort.imaging.recipe.xray import roi_iou
from oaicohort.imaging.recipe.xray_localiser import JointCentre, localise_knees
from oaicohort.synth.radiographs import draw_layout, radiograph_knee, render_radiograph

ROI_MM = 140.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", default="full", choices=("full", "small"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ious, errors, failures = [], [], []
    seconds = 0.0
    last = None
    for _ in range(args.n):
        layout = draw_layout(rng, args.size)
        knees = {
            s: radiograph_knee(s, int(rng.choice(5, p=[0.4, 0.2, 0.2, 0.15, 0.05])), float(rng.normal()), rng)
            for s in "RL"
        }
        image = render_radiograph(knees, layout, rng)
        last = (image, layout)
        start = time.perf_counter()
        found = localise_knees(image, layout.spacing_mm)
        seconds += time.perf_counter() - start
        for side, result in found.items():
            if not isinstance(result, JointCentre):
                failures.append(result.reason)
                ious.append(0.0)
                continue
            true_row, true_col = layout.centres[side]
            ious.append(roi_iou((result.row, result.col), (true_row, true_col), ROI_MM / layout.spacing_mm))
            errors.append(np.hypot(result.row - true_row, result.col - true_col) * layout.spacing_mm)
    iou = np.asarray(ious)
    err = np.asarray(errors) if errors else np.zeros(1)
    print(f"{args.n} radiographs ({args.size}), {iou.size} knees, localiser {seconds / args.n * 1000:.0f} ms/image")
    print(f"IoU >= 0.8: {np.mean(iou >= 0.8) * 100:.1f}% of knees (target >= 95%)")
    q = np.percentile(iou, [0, 1, 5, 25, 50, 75, 100])
    print("IoU min/p1/p5/p25/median/p75/max: " + " / ".join(f"{v:.3f}" for v in q))
    print(
        f"IoU mean {iou.mean():.3f}; centre error mm: median {np.median(err):.2f}, p95 {np.percentile(err, 95):.2f}, "
        f"max {err.max():.2f}"
    )
    print(f"failures: {len(failures)} {sorted(set(failures))}")
    assert last is not None
    image, layout = last
    blank = np.full_like(image, 300)
    one_leg = image.copy()
    one_leg[:, image.shape[1] // 2 :] = int(np.percentile(image, 1))
    rotated = np.ascontiguousarray(np.rot90(image))
    for name, degenerate in (("blank", blank), ("one leg", one_leg), ("rotated 90", rotated)):
        result = localise_knees(degenerate, layout.spacing_mm)
        shown = {s: (r.reason if not isinstance(r, JointCentre) else "found") for s, r in result.items()}
        print(f"degenerate {name}: {shown}")


if __name__ == "__main__":
    main()
