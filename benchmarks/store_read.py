"""Benchmark: random-access whole-volume reads from the store vs the same arrays from memory.

    python benchmarks/store_read.py [--volumes 64] [--distinct 6] [--reads 600] [--preset full]

Target (issue 4): at least 300 volumes/s per core at the stored training shape (sag 80x176x176
uint8 = 2.5 MB). Volumes are synthetic knees (``oaicohort.synth.images``) preprocessed with the
toolkit's own steps, so compression ratios resemble real data more than noise would; ``distinct``
knees are rendered and written to ``volumes`` slots. Everything runs in one thread (numcodecs'
Zstd and the direct chunk read are single-threaded; zarr's own path may use its I/O threads,
which this benchmark does not stop), with the store files in the page cache as they are after
the first epoch. Several codecs are compared with plain zarr reads; the chosen layout (Zstd level 1,
one volume per chunk) is also read through ``VolumeStore.read`` (its direct chunk path).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from oaicohort.imaging.recipe.mri import preprocess_mri
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.info import store_info
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.synth.mri_anatomy import render_knee_volume
from oaicohort.synth.raster import IMAGE_SIZES


class _Series:
    def __init__(self, pixels: np.ndarray, spacing: tuple[float, float, float], side: str) -> None:
        self.pixels, self.spacing_mm, self.side = pixels, spacing, side


def make_volumes(params: PreprocessParams, distinct: int, seed: int) -> list[np.ndarray]:
    geometry = IMAGE_SIZES[params.preset]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(distinct):
        side = "LR"[i % 2]
        pixels = render_knee_volume(float(rng.normal()), side, np.random.default_rng([seed, i]), params.preset)
        out.append(preprocess_mri(_Series(pixels, geometry.spacing_mm, side), params, ("sag",)).volumes["sag"])
    return out


def rate(fn, positions: np.ndarray) -> tuple[float, float]:
    """Volumes per wall second and per CPU second of this process (= per core, whatever the
    machine's load from other processes; zarr's I/O threads count in the CPU time too)."""
    fn(int(positions[0]))  # warm
    start, cpu = time.perf_counter(), time.process_time()
    for p in positions:
        fn(int(p))
    return len(positions) / (time.perf_counter() - start), len(positions) / (time.process_time() - cpu)


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=6)
    parser.add_argument("--reads", type=int, default=600)
    parser.add_argument("--preset", default="full", choices=("full", "small"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    params = PreprocessParams.preset_named(args.preset)
    shape = params.stored_shape("sag")
    t0 = time.perf_counter()
    sources = make_volumes(params, args.distinct, args.seed)
    print(
        f"rendered + preprocessed {args.distinct} knees in {time.perf_counter() - t0:.1f} s; "
        f"volume {shape} uint8 = {np.prod(shape) / 1e6:.2f} MB"
    )
    rng = np.random.default_rng(args.seed)
    positions = rng.integers(0, args.volumes, args.reads)
    resident = np.stack([sources[i % len(sources)] for i in range(args.volumes)])
    raw_mb = resident.nbytes / 1e6

    print(f"\n{args.reads} random whole-volume reads of {args.volumes} slots, one thread")
    mem, mem_cpu = rate(lambda p: resident[p].copy(), positions)
    print(f"{'':38s} {'wall':>8s} {'per core':>8s}")
    print(f"{'from memory (copy)':38s} {mem:8.0f} {mem_cpu:8.0f} vol/s")

    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "zstd-1 (default)": dict(compressors=ZstdCodec(level=1)),
            "zstd-3": dict(compressors=ZstdCodec(level=3)),
            "zstd-9": dict(compressors=ZstdCodec(level=9)),
            "blosc-zstd-5 bitshuffle": dict(
                compressors=BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle, typesize=1)
            ),
            "blosc-lz4-5 noshuffle": dict(
                compressors=BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.noshuffle, typesize=1)
            ),
            "uncompressed": dict(compressors=None),
            "zstd-1 sharded x16": dict(compressors=ZstdCodec(level=1), shards=(16, *shape)),
        }
        print(f"{'zarr.open(...)[i], codec':38s} {'vol/s':>8s} {'per core':>8s} {'ratio':>6s} {'write s':>8s}")
        for name, kwargs in variants.items():
            path = Path(tmp) / name.replace(" ", "_")
            arr = zarr.create_array(
                path, shape=resident.shape, chunks=(1, *shape), dtype="uint8", zarr_format=3, **kwargs
            )
            start = time.perf_counter()
            for i in range(args.volumes):
                arr[i] = resident[i]
            written = time.perf_counter() - start
            arr = zarr.open_array(path, mode="r")
            r, r_cpu = rate(lambda p, arr=arr: arr[p], positions)
            print(f"{name:38s} {r:8.0f} {r_cpu:8.0f} {raw_mb * 1e6 / disk_bytes(path):6.2f} {written:8.2f}")

        store = VolumeStore.create(Path(tmp) / "store.zarr", params, views=("sag",))
        for i in range(args.volumes):
            store.write("sag", i, resident[i], key=i, visit=0)
        reader = VolumeStore.open(store.path)
        assert reader._fast_path("sag")
        fast, fast_cpu = rate(lambda p: reader.read("sag", p), positions)
        out = np.empty(shape, dtype=np.uint8)
        into, into_cpu = rate(lambda p: reader.read_into("sag", p, out), positions)
        info = store_info(reader)["views"]["sag"]
        print(
            f"\nVolumeStore (zstd level {reader._array('sag').metadata.codecs[1].level}, ratio {info['compression_ratio']})"
        )
        print(f"{'VolumeStore.read (direct chunk)':38s} {fast:8.0f} {fast_cpu:8.0f} vol/s")
        print(f"{'VolumeStore.read_into (preallocated)':38s} {into:8.0f} {into_cpu:8.0f} vol/s")
        print(
            f"target >= 300 vol/s per core: {'met' if fast_cpu >= 300 else 'NOT met'} "
            f"({fast_cpu:.0f} per CPU second; memory copies {mem_cpu:.0f})"
        )


if __name__ == "__main__":
    main()
