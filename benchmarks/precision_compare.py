"""bf16 vs fp32 training on full-size synthetic volumes: does bf16 change what is learned?

    python benchmarks/precision_compare.py [--model 3d_shufflenet] [--steps 40] [--knees 16] [--device cuda]

Renders ``knees`` full-size synthetic DESS knees (384x384x160, ``oaicohort.synth.mri_anatomy``),
preprocesses them with the full preset (sagittal 80x176x176, crop 64x160x160) and trains the
model twice from the same initialisation on the same batches and augmentations: once in fp32,
once under bf16 autocast (the CUDA default of ``oai train``). Prints per precision the mean
training loss of the first and last quarter of the steps, seconds per step, and at the end the
largest difference of the two models' evaluation probabilities. ``--json`` adds the numbers as
JSON. On a CPU it runs at the reduced ``small`` size (``--size small``) to check the script.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oaicohort.imaging.recipe.mri import preprocess_mri
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.synth.mri_anatomy import render_knee_volume
from oaicohort.synth.raster import IMAGE_SIZES
from oaimodels.data import BatchPreparer, resolve_layout
from oaimodels.logits import amp_context
from oaimodels.networks import to_channels_last
from oaimodels.training.losses import focal_loss
from oaimodels.training.recipe import build_model


@dataclass(frozen=True)
class _Series:
    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    side: str


def _knee(args: tuple[int, str]) -> np.ndarray:
    index, size = args
    latent = -1.5 + 3.0 * (index % 2)  # alternating clear non-progressor / progressor phenotypes
    side = "LR"[index % 2 == 0]
    pixels = render_knee_volume(latent, side, np.random.default_rng(index), size)
    params = PreprocessParams.preset_named(size)
    series = _Series(pixels, IMAGE_SIZES[size].spacing_mm, side)
    return preprocess_mri(series, params, ("sag",)).volumes["sag"]


def train(model: torch.nn.Module, precision: str, data: dict, args: argparse.Namespace) -> dict:
    device = data["device"]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    order = np.random.default_rng(0)
    losses, start = [], None
    for step in range(args.steps):
        if step == 1:  # the first step pays for kernel selection
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        idx = torch.as_tensor(order.choice(len(data["y"]), size=args.batch, replace=True), device=device)
        inputs = data["preparer"].train_inputs(data["volumes"].index_select(0, idx), generator)
        with amp_context(device, precision):
            logits = model(inputs)
        loss = focal_loss(logits.float(), data["y"].index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(1, args.steps - 1) if start else float("nan")
    model.eval()
    with torch.no_grad(), amp_context(device, precision):
        probs = torch.softmax(model(data["preparer"].eval_inputs(data["volumes"])).float(), dim=1)
    quarter = max(1, args.steps // 4)
    return {
        "precision": precision,
        "loss_first": float(np.mean(losses[:quarter])),
        "loss_last": float(np.mean(losses[-quarter:])),
        "s_per_step": seconds,
        "probs": probs.cpu().numpy(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="3d_shufflenet")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--knees", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--size", choices=("full", "small"), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    size = args.size or ("full" if device.type == "cuda" else "small")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        volumes = list(pool.map(_knee, [(i, size) for i in range(args.knees)]))
    params = PreprocessParams.preset_named(size)

    class Shapes:
        def volume_shape(self, view: str) -> tuple[int, int, int]:
            return params.stored_shape(view)

        def crop_shape(self, view: str) -> tuple[int, int, int]:
            return params.crop_shape(view)

    layout = resolve_layout(args.model, None, Shapes())  # type: ignore[arg-type]
    channels_last = device.type == "cuda"
    data = {
        "device": device,
        "volumes": torch.from_numpy(np.stack(volumes)).to(device),
        "y": torch.as_tensor([2 * (i % 2) for i in range(args.knees)], device=device),  # none / slow
        "preparer": BatchPreparer(layout, channels_last=channels_last),
    }
    print(f"{args.knees} {size} knees rendered and preprocessed in {time.perf_counter() - t0:.1f} s; "
          f"{args.model} crop {layout.crop_shape} on {device}", flush=True)  # fmt: skip
    torch.manual_seed(0)
    base = build_model(layout, "scratch").to(device)
    if channels_last:
        to_channels_last(base)
    results = [train(copy.deepcopy(base), precision, data, args) for precision in ("fp32", "bf16")]
    print(f"{'precision':<10}{'loss first':>12}{'loss last':>12}{'s/step':>9}")
    for r in results:
        print(f"{r['precision']:<10}{r['loss_first']:>12.4f}{r['loss_last']:>12.4f}{r['s_per_step']:>9.3f}")
    diff = float(np.abs(results[0]["probs"] - results[1]["probs"]).max())
    speedup = results[0]["s_per_step"] / results[1]["s_per_step"]
    print(f"max |p_fp32 - p_bf16| after {args.steps} steps: {diff:.4f}; bf16 speed-up x{speedup:.2f}")
    if args.json:
        print(json.dumps({"model": args.model, "size": size, "steps": args.steps, "max_prob_diff": diff,
                          "speedup": speedup, "runs": [{k: v for k, v in r.items() if k != "probs"} for r in results]}))  # fmt: skip


if __name__ == "__main__":
    main()
