"""Benchmark: training throughput per model and volume delivery per loading mode.

    python benchmarks/train.py [--size small|paper] [--models 3d_shufflenet,2d_trf] [--device auto]
                               [--batch N] [--steps 4] [--store-volumes 48] [--workers 0,2]

1. Training (forward + backward + Adam step), volumes/s, per MRI model of the registry:
   ``pipeline`` = the whole training step as ``oai train`` runs it from uint8 volumes already in
   device memory (random crop, [0, 1] scaling, rotation, gamma, normalisation on the device, then
   the model step); ``model`` = the model step alone on ready inputs. ``pipeline/model`` is the
   share of step time the accelerator spends on the model (resident mode: no I/O at all).
2. Loading modes: volumes/s delivered to the device (read), and delivered AND augmented, with
   no model, from a real
   Zarr store (synthetic knees preprocessed by the toolkit): ``resident`` (the store held as one
   uint8 tensor) and ``workers`` (DataLoader over the store with N processes). Training is
   input-bound when a mode delivers fewer volumes/s than the model consumes.

On CPU the default is the reduced size (store preset ``small``: sag 20x44x44 -> crop 16x40x40)
with bf16 off; with a CUDA device and ``--size paper`` it runs the paper's shapes (sag 64x160x160
crop of 80x176x176) in bf16 with channels-last (``--compile`` adds torch.compile), i.e. the
configuration for the issue's H100 target (2D+TRF >= 150 volumes/s in bf16, GPU busy > 90%).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oaicohort.imaging.recipe.mri import preprocess_mri
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaicohort.synth.mri_anatomy import render_knee_volume
from oaicohort.synth.raster import IMAGE_SIZES
from oaimodels.data import BatchPreparer, batches_of, make_source, resolve_layout
from oaimodels.logits import amp_context
from oaimodels.networks import get_spec, to_channels_last
from oaimodels.training.losses import focal_loss
from oaimodels.training.recipe import build_model
from oaimodels.training.study import mri_models

PRESET = {"small": "small", "paper": "full"}


class _Series:
    def __init__(self, pixels: np.ndarray, spacing: tuple[float, float, float], side: str) -> None:
        self.pixels, self.spacing_mm, self.side = pixels, spacing, side


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_store(root: Path, params: PreprocessParams, n: int, distinct: int = 4) -> Path:
    """A store of ``n`` sagittal volumes made from ``distinct`` synthetic knees (realistic compression)."""
    geometry = IMAGE_SIZES[params.preset]
    volumes = []
    for i in range(distinct):
        side = "LR"[i % 2]
        pixels = render_knee_volume(float(i) - 1.5, side, np.random.default_rng(i), params.preset)
        volumes.append(preprocess_mri(_Series(pixels, geometry.spacing_mm, side), params, ("sag",)).volumes["sag"])
    path = root / "bench.zarr"
    store = VolumeStore.create(path, params, views=("sag",))
    for i in range(n):
        store.write("sag", i, volumes[i % distinct], key=knee_key(9000000 + i, "R"), visit=0)
    return path


def bench_model(name: str, store_shapes: object, device: torch.device, args: argparse.Namespace) -> dict:
    spec = get_spec(name)
    layout = resolve_layout(name, None, store_shapes)  # type: ignore[arg-type]
    model = build_model(layout, "scratch").to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        to_channels_last(model)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = args.batch or (spec.batch_size if device.type == "cuda" else 4)
    precision = "bf16" if device.type == "cuda" else "fp32"
    preparer = BatchPreparer(layout, channels_last=channels_last)
    volumes = torch.randint(0, 256, (batch, *layout.stored_shape), dtype=torch.uint8, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    gen = torch.Generator().manual_seed(0)
    ready = preparer.train_inputs(volumes, gen)

    def step(inputs: dict) -> None:
        with amp_context(device, precision):
            logits = step_model(inputs)
        loss = focal_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn) -> float:
        for _ in range(args.warmup):
            fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / args.steps

    t_model = timed(lambda: step(ready))
    t_pipe = timed(lambda: step(preparer.train_inputs(volumes, gen)))
    return {
        "model": name, "views": list(layout.model_views), "crop": list(layout.crop_shape), "batch": batch,
        "precision": precision, "model_vol_s": batch / t_model, "pipeline_vol_s": batch / t_pipe,
        "model_share": t_model / t_pipe,
    }  # fmt: skip


def bench_loading(store: Path, device: torch.device, mode: str, workers: int, args: argparse.Namespace) -> dict:
    vs = VolumeStore.open(store)
    layout = resolve_layout("3d_shufflenet", None, vs)
    n = vs.capacity("sag")
    t0 = time.perf_counter()
    source = make_source(mode, VolumeStore.open(store), "sag", np.arange(n), device, workers=workers)
    setup = time.perf_counter() - t0
    preparer = BatchPreparer(layout)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    batches = batches_of(rng.permutation(np.repeat(np.arange(n), args.epochs_loading)), args.loading_batch)

    def run(augment: bool) -> float:
        delivered = 0
        sync(device)
        start = time.perf_counter()
        for volumes in source.iterate(batches):
            if augment:
                preparer.train_inputs(volumes, gen)
            delivered += volumes.shape[0]
        sync(device)
        return delivered / (time.perf_counter() - start)

    try:
        # a first pass warms the page cache and starts the workers
        for _ in source.iterate(batches[: max(1, len(batches) // args.epochs_loading)]):
            pass
        read_only = run(False)
        with_augment = run(True)
    finally:
        source.close()
    return {
        "mode": mode,
        "workers": workers,
        "read_vol_s": read_only,
        "vol_s": with_augment,
        "setup_s": setup,
        "volume_mb": float(np.prod(layout.stored_shape)) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "paper"), default=None)
    parser.add_argument("--models", default=None, help="comma-separated (default: every MRI model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--store-volumes", type=int, default=48)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--loading-batch", type=int, default=8)
    parser.add_argument("--epochs-loading", type=int, default=3)
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-loading", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    size = args.size or ("paper" if device.type == "cuda" else "small")
    params = PreprocessParams.preset_named(PRESET[size])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(
        f"device {device}{' (' + gpu + ')' if gpu else ''}, torch threads {torch.get_num_threads()}, "
        f"size {size}: sag stored {params.stored_shape('sag')} -> crop {params.crop_shape('sag')}",
        flush=True,
    )
    results: dict = {"device": str(device), "gpu": gpu, "size": size, "models": [], "loading": []}

    if not args.skip_models:

        class Shapes:  # the store geometry without a store
            def volume_shape(self, view: str) -> tuple[int, int, int]:
                return params.stored_shape(view)

            def crop_shape(self, view: str) -> tuple[int, int, int]:
                return params.crop_shape(view)

        names = args.models.split(",") if args.models else mri_models()
        print(f"{'model':<14}{'views':<12}{'batch':>6}{'model vol/s':>13}{'pipeline vol/s':>16}{'model share':>13}")
        for name in names:
            r = bench_model(name, Shapes(), device, args)
            results["models"].append(r)
            print(
                f"{name:<14}{','.join(r['views']):<12}{r['batch']:>6}{r['model_vol_s']:>13.1f}"
                f"{r['pipeline_vol_s']:>16.1f}{r['model_share']:>12.0%}",
                flush=True,
            )

    if not args.skip_loading:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            store = make_store(Path(tmp), params, args.store_volumes)
            print(f"\nstore of {args.store_volumes} volumes written in {time.perf_counter() - t0:.1f} s")
            print(f"{'loading':<10}{'workers':>8}{'vol/s read':>12}{'vol/s read+augment':>20}{'setup s':>9}")
            modes = [("resident", 0)] + [("workers", int(w)) for w in args.workers.split(",") if w != ""]
            for mode, workers in modes:
                r = bench_loading(store, device, mode, workers, args)
                results["loading"].append(r)
                print(
                    f"{mode:<10}{workers:>8}{r['read_vol_s']:>12.1f}{r['vol_s']:>20.1f}{r['setup_s']:>9.2f}", flush=True
                )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
