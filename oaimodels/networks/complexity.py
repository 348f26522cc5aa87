"""Efficiency figures of Table 1: parameter count, MACs of one sample, inference latency.

MACs are PyTorch's ``FlopCounterMode`` FLOPs / 2 (a multiply-accumulate is two FLOPs); the
counter sees convolutions, matrix products and attention, not element-wise ops, which is the
usual convention. Counting runs on the ``meta`` device: shapes propagate, nothing is allocated
or computed, so the 443-GMAC multi-view model is counted in well under a second.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from oaicohort.progress import ProgressCallback, no_progress

from .registry import PaperRow, ShapeMap, example_inputs, get_model, get_spec, list_models

Inputs = Mapping[str, torch.Tensor]


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _cpu_attention_flops(query: torch.Size, key: torch.Size, value: torch.Size, *args: object, **kwargs: object) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(
    grad_out: torch.Size,
    query: torch.Size,
    key: torch.Size,
    value: torch.Size,
    *args: object,
    **kwargs: object,
) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _rnn_flops(input_shape: torch.Size, weight_shapes: Sequence[torch.Size]) -> int:
    # Every step of every (layer, direction) multiplies its input and hidden state by its
    # weight matrices (the 2-d weights; 1-d entries are biases): 2 FLOPs per weight per step.
    steps = math.prod(input_shape) // input_shape[-1]
    return 2 * steps * sum(math.prod(w) for w in weight_shapes if len(w) == 2)


def _mkldnn_rnn_layer_flops(
    input: torch.Size, w_ih: torch.Size, w_hh: torch.Size, *args: object, **kwargs: object
) -> int:
    return _rnn_flops(input, [w_ih, w_hh])


def _cudnn_rnn_flops(input: torch.Size, weights: Sequence[torch.Size], *args: object, **kwargs: object) -> int:
    return _rnn_flops(input, weights)


# FlopCounterMode's table misses some fused kernels: the CPU attention kernel (on the meta device
# SDPA decomposes into counted matmuls, on CUDA the flash/efficient kernels are known) and the
# oneDNN / cuDNN LSTM kernels. Without these entries a count on real tensors would silently
# leave attention or the LSTM out.
_EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (_cpu_attention_backward_flops),
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
    torch.ops.aten._cudnn_rnn: _cudnn_rnn_flops,
}


def count_macs(model: nn.Module, inputs: Inputs) -> int:
    """Multiply-accumulates of one inference forward pass on ``inputs`` (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    try:
        with torch.no_grad(), counter:
            model(inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class Complexity:
    """Size and compute of one model built at given per-sample input shapes."""

    name: str
    view: str | None
    shapes: dict[str, tuple[int, ...]]
    params: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def _build_kwargs(view: str | None, shapes: ShapeMap | None) -> dict[str, object]:
    kwargs: dict[str, object] = {}
    if view is not None:
        kwargs["view"] = view
    if shapes is not None:
        kwargs["input_shapes"] = dict(shapes)
    return kwargs


def model_complexity(name: str, *, view: str | None = None, shapes: ShapeMap | None = None) -> Complexity:
    """Parameters and MACs of registered model ``name`` for one sample (paper shapes by default).

    ``view`` selects the view of a single-view model that accepts several (``2d_trf``).
    The model is built and run on the ``meta`` device, so this costs no memory or compute.
    """
    spec = get_spec(name)
    shapes = dict(shapes) if shapes is not None else spec.shapes_for(view)
    with torch.device("meta"):
        model = get_model(name, **_build_kwargs(view, shapes))
        inputs = example_inputs(shapes, batch=1, device="meta")
    return Complexity(name, view, shapes, count_params(model), count_macs(model, inputs))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, repeats: int = 10) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls.

    CUDA work is asynchronous: without a synchronisation on both sides of each call the timer
    measures the kernel launches, not the work (the reference's timings had this flaw).
    """
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measure_latency(
    model: nn.Module,
    inputs: Inputs,
    *,
    warmup: int = 3,
    repeats: int = 10,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Median milliseconds of one inference forward pass on ``inputs`` (timed in eval mode).

    The device is that of ``inputs``; ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the pass
    under autocast.
    """
    device = next(iter(inputs.values())).device
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def forward() -> None:
        with torch.inference_mode(), autocast:
            model(inputs)

    was_training = model.training
    model.eval()
    try:
        times = time_call(forward, device, warmup=warmup, repeats=repeats)
    finally:
        model.train(was_training)
    return 1e3 * statistics.median(times)


def model_latency(
    name: str,
    *,
    view: str | None = None,
    shapes: ShapeMap | None = None,
    batch: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Median inference milliseconds of model ``name`` (scratch init) for a batch of ``batch``."""
    device = torch.device(device)
    spec = get_spec(name)
    shapes = dict(shapes) if shapes is not None else spec.shapes_for(view)
    model = get_model(name, **_build_kwargs(view, shapes)).to(device)
    inputs = example_inputs(shapes, batch=batch, device=device)
    return measure_latency(model, inputs, warmup=warmup, repeats=repeats, amp_dtype=amp_dtype)


@dataclass(frozen=True)
class EfficiencyRow:
    """One row of ``oai models``: our counts (and optionally latency) next to Table 1's."""

    complexity: Complexity
    views: tuple[str, ...]
    paper: PaperRow
    latency_ms: float | None = None
    device: str | None = None
    batch: int | None = None

    def to_json(self) -> dict[str, object]:
        c = self.complexity
        out: dict[str, object] = {
            "name": c.name,
            "view": c.view,
            "views": list(self.views),
            "input_shapes": {v: list(s) for v, s in c.shapes.items()},
            "params": c.params,
            "gmacs": round(c.gmacs, 3),
            "paper_params_m": self.paper.params_m,
            "paper_gmacs": self.paper.gmacs,
            "paper_latency_ms": self.paper.latency_ms,
        }
        if self.latency_ms is not None:
            out.update(latency_ms=round(self.latency_ms, 3), device=self.device, batch=self.batch)
        return out


def efficiency_table(
    names: Sequence[str] | None = None,
    *,
    small: bool = False,
    latency: bool = False,
    device: str | torch.device = "cpu",
    batch: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    precision: str = "fp32",
    progress: ProgressCallback = no_progress,
) -> list[EfficiencyRow]:
    """Params and MACs (one sample) of the named models, every view of ``2d_trf`` separately.

    Shapes are the paper's, or the reduced ``small_shapes`` with ``small=True``. With
    ``latency=True`` each model is also built on ``device`` (scratch init) and timed: median of
    ``repeats`` inference passes on a batch of ``batch`` after ``warmup`` passes, under bf16
    autocast with ``precision="bf16"``.
    """
    amp_dtype = torch.bfloat16 if precision == "bf16" else None
    names = list(names) if names else list_models()
    configs = [(n, v) for n in names for v in (get_spec(n).view_choices or (None,))]
    rows = []
    for i, (name, view) in enumerate(configs):
        spec = get_spec(name)
        shapes = spec.shapes_for(view, small=small)
        row = EfficiencyRow(
            complexity=model_complexity(name, view=view, shapes=shapes),
            views=(view,) if view else spec.views,
            paper=spec.paper_row(view),
        )
        if latency:
            ms = model_latency(
                name,
                view=view,
                shapes=shapes,
                batch=batch,
                device=device,
                warmup=warmup,
                repeats=repeats,
                amp_dtype=amp_dtype,
            )
            row = replace(row, latency_ms=ms, device=str(device), batch=batch)
        rows.append(row)
        progress("models", i + 1, len(configs))
    return rows
