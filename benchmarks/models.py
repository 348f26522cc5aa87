"""Latency and throughput of every network of Table 1, in fp32 and bf16.

    python -m benchmarks.models                          # CPU, reduced shapes, batch 4
    python -m benchmarks.models --device cuda            # GPU, paper shapes, recipe batch sizes
    python -m benchmarks.models -m 2d_trf --device cuda --compile reduce-overhead

Per model and precision it reports
- latency: median milliseconds of one inference pass on a single sample (batch 1);
- inference throughput: samples/s of batched forward passes (no autograd);
- training throughput: samples/s of batched forward + backward passes (cross-entropy loss,
  gradients cleared each step, no optimiser step).
bf16 means autocast to bfloat16 with fp32 weights, as mixed-precision training would run.
Timings are medians after warm-up, synchronised on CUDA. Models start from scratch init.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from oaimodels.networks import example_inputs, get_model, get_spec, list_models, to_channels_last
from oaimodels.networks.common import inputs_channels_last
from oaimodels.networks.complexity import time_call

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class BenchResult:
    name: str
    precision: str
    shapes: dict[str, tuple[int, ...]]
    batch: int
    latency_ms: float | None
    infer_per_s: float | None
    train_per_s: float | None
    note: str = ""


@dataclass(frozen=True)
class BenchConfig:
    device: torch.device
    paper_shapes: bool
    batch: int | None  # None: the recipe's batch size of each model
    warmup: int
    repeats: int
    channels_last: bool
    compile: str | None  # None: eager; else a torch.compile mode ("default", "reduce-overhead")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _prepare(model: nn.Module, cfg: BenchConfig) -> Callable[..., torch.Tensor]:
    model.to(cfg.device)
    if cfg.channels_last:
        to_channels_last(model)
    return torch.compile(model, mode=cfg.compile) if cfg.compile else model


def _inputs(shapes: Mapping[str, tuple[int, ...]], batch: int, cfg: BenchConfig):
    x = example_inputs(shapes, batch=batch, device=cfg.device)
    return inputs_channels_last(x) if cfg.channels_last else x


def _per_second(seconds: list[float], batch: int) -> float:
    return batch / sorted(seconds)[len(seconds) // 2]


def bench_model(name: str, precision: str, cfg: BenchConfig) -> BenchResult:
    """Latency (batch 1), inference and training throughput of one model at one precision."""
    spec = get_spec(name)
    shapes = spec.shapes_for(small=not cfg.paper_shapes)
    batch = cfg.batch or spec.batch_size
    model = get_model(name, input_shapes=shapes)
    run = _prepare(model, cfg)
    amp = DTYPES[precision]
    result = BenchResult(name, precision, shapes, batch, None, None, None)

    def infer(x: Mapping[str, torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode(), _autocast(cfg.device, amp):
                run(x)

        return step

    def train(x: Mapping[str, torch.Tensor], y: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            with _autocast(cfg.device, amp):
                loss = F.cross_entropy(run(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)

        return step

    try:
        model.eval()
        one = _inputs(shapes, 1, cfg)
        times = time_call(infer(one), cfg.device, warmup=cfg.warmup, repeats=cfg.repeats)
        result.latency_ms = 1e3 * sorted(times)[len(times) // 2]
        many = _inputs(shapes, batch, cfg)
        times = time_call(infer(many), cfg.device, warmup=cfg.warmup, repeats=cfg.repeats)
        result.infer_per_s = _per_second(times, batch)
        model.train()
        labels = torch.randint(0, 3, (batch,), device=cfg.device)
        times = time_call(train(many, labels), cfg.device, warmup=cfg.warmup, repeats=cfg.repeats)
        result.train_per_s = _per_second(times, batch)
    except torch.OutOfMemoryError:
        result.note = "out of memory"
    finally:
        # drop the closures' references so the allocator can free the weights before the next model
        infer = train = None  # type: ignore[assignment]
        model.cpu()
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(results: list[BenchResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    notes = any(r.note for r in results)
    columns = ["model", "prec", "input", "batch", "latency ms", "infer /s", "train /s"]
    for col in columns + (["note"] if notes else []):
        left = col in ("model", "prec", "input", "note")
        table.add_column(col, justify="left" if left else "right")
    for r in results:
        shape = ",".join(f"{v}{'x'.join(map(str, s[1:]))}" for v, s in r.shapes.items())
        cells = [
            r.name,
            r.precision,
            shape,
            str(r.batch),
            _fmt(r.latency_ms, 2),
            _fmt(r.infer_per_s),
            _fmt(r.train_per_s),
        ]
        table.add_row(*cells, *([r.note] if notes else []))
    return table


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-m", "--model", action="append", choices=list_models(), help="repeatable")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", action="append", choices=list(DTYPES), help="default: both")
    p.add_argument(
        "--paper-shapes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on CUDA, off on CPU (reduced shapes)",
    )
    p.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, the recipe's batch size on CUDA")
    p.add_argument("--warmup", type=int, default=None, help="default: 2 on CPU, 10 on CUDA")
    p.add_argument("--repeats", type=int, default=None, help="default: 5 on CPU, 30 on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile the model (inductor) in this mode; reduce-overhead adds CUDA graphs",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        # TF32 for fp32 matmuls/convs is what anyone training on an H100 would enable.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cfg = BenchConfig(
        device=device,
        paper_shapes=cuda if args.paper_shapes is None else args.paper_shapes,
        batch=args.batch if args.batch is not None else (None if cuda else 4),
        warmup=args.warmup if args.warmup is not None else (10 if cuda else 2),
        repeats=args.repeats if args.repeats is not None else (30 if cuda else 5),
        channels_last=cuda if args.channels_last is None else args.channels_last,
        compile=args.compile,
    )
    # Wide enough for the whole table when the output is piped to a file or a log.
    console = Console(width=None if sys.stdout.isatty() else 140)
    results = []
    for name in args.model or list_models():
        for precision in args.precision or list(DTYPES):
            results.append(bench_model(name, precision, cfg))
            print(f"done {name} {precision}", file=sys.stderr, flush=True)
    shapes = "paper shapes" if cfg.paper_shapes else "reduced shapes"
    title = (
        f"{device_name(device)}; torch {torch.__version__}; {shapes}; "
        f"channels_last={cfg.channels_last}; compile={cfg.compile}"
    )
    console.print(render(results, title))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": device_name(device), "config": str(cfg), "results": [asdict(r) for r in results]},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
