"""Why a run scored a knee as it did: ``oai explain RUN --knees ... --out DIR``.

Two attributions, both of the fold ensemble's progression score ``mean_k(p_fast + p_slow)``:

* **Integrated gradients** (Sundararajan et al. 2017) on the model input (the centre crop after
  scaling and normalisation): ``(x - x0) * mean_t grad f(x0 + t (x - x0))`` over ``steps``
  midpoints ``t``, with ``x0`` the normalised black volume. Their sum approaches
  ``f(x) - f(x0)`` (completeness, tested). The saliency map of a knee is ``|attribution|``
  normalised to sum 1; a slice's gradient importance is the saliency mass of that slice.
  Multi-view models that slice the cropped sagittal volume into views are differentiated with
  respect to that volume, so every model gets a map in the same frame.
* **Attention rollout** (Abnar & Zuidema 2020) for models that aggregate slice tokens with a
  ``SliceTransformer`` (``2d_trf``): per block the head-averaged attention ``A`` (recomputed from
  the block's own query/key weights, as the fused kernel does not return it), ``0.5 A + 0.5 I``
  with rows renormalised, multiplied over blocks; the class token's row over the slice tokens,
  normalised to sum 1, is the slice importance. Averaged over fold models. Multi-view models
  (``2dsh_trf``, ``2dind_trf``) attend over the tokens of every view; their slice importance is
  the rollout over the sagittal tokens, renormalised.

Files (``DIR``)::

    explanations.csv                  one row per knee: score, top slices by either method
    knees/<knee>/slice_importance.csv crop slice, stored slice, gradient, rollout
    knees/<knee>/saliency.npy         (D, H, W) float32 saliency of the crop, sums to 1
    knees/<knee>/slice_<s>.png        the top slices with their saliency overlaid
    knees/<knee>/profile.png          slice-importance profile
    summary/slice_importance.csv      mean and SD of every slice's importance over the knees
    summary/mean_saliency.npy         mean saliency map (D, H, W); .png: its slices' max
                                      projection and the mean image's mid-slice under it
    summary/profile.png

Knees: ``knees`` from the run's store (or another store made with the same parameters), by
default the run's test knees (the held-out site), so ``summary/`` describes the held-out site.

(About 400 lines: the attributions, the per-knee loop and the files they fill are one concept.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from oaicohort.errors import OAIError
from oaicohort.imaging.selection import knee_name, select_slots, store_slots
from oaicohort.imaging.store import VolumeStore
from oaicohort.progress import ProgressCallback, no_progress

from . import run_folder as rf
from .data import NORM_MEAN, NORM_STD, InputLayout, centre_offsets, crop_volumes, normalise, scale_to_unit
from .networks.multiview import views_from_volume
from .networks.slice_transformer import SelfAttention, SliceTransformer
from .trained_run import TrainedRun

# Names of the training layer, imported in this one place (their module may move).
from .training import resolve_device

log = logging.getLogger(__name__)

TOP_SLICES = 3


class ExplainError(OAIError):
    """A run cannot be explained on the given knees."""


# --------------------------------------------------------------------------- model input


def model_inputs(x: torch.Tensor, layout: InputLayout) -> dict[str, torch.Tensor]:
    """The model's input dict from a normalised crop ``x`` (B, 1, d, h, w), as ``BatchPreparer``."""
    if layout.derived_views:
        views = views_from_volume(x)
        return {v: views[v] for v in layout.model_views}
    return {layout.source_view: x}


def normalised_crops(volumes: torch.Tensor, layout: InputLayout) -> torch.Tensor:
    """Centre crop, [0, 1] scaling and normalisation of uint8 stored volumes: (B, 1, d, h, w)."""
    offsets = torch.tensor(centre_offsets(layout.stored_shape, layout.crop_shape))
    x = crop_volumes(volumes, offsets.expand(volumes.shape[0], 3), layout.crop_shape)
    return normalise(scale_to_unit(x.float())).unsqueeze(1)


def progression_of(logits: torch.Tensor) -> torch.Tensor:
    """p(fast) + p(slow) per sample (classes in vocabulary order: none, fast, slow)."""
    return torch.softmax(logits.float(), dim=1)[:, 1:].sum(dim=1)


def ensemble_score(models: Sequence[nn.Module], layout: InputLayout) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> mean over fold models of their progression score (softmax once per model)."""

    def f(x: torch.Tensor) -> torch.Tensor:
        inputs = model_inputs(x, layout)
        return torch.stack([progression_of(m(inputs)) for m in models]).mean(dim=0)

    return f


# --------------------------------------------------------------------------- attributions


def integrated_gradients(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor, *, steps: int = 16
) -> torch.Tensor:
    """Integrated gradients of the per-sample scalar ``f`` at ``x`` from ``baseline`` (midpoint rule)."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    total = torch.zeros_like(x)
    delta = x - baseline
    for i in range(steps):
        t = (i + 0.5) / steps
        point = (baseline + t * delta).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(point).sum(), point)
        total += grad
    return delta * total / steps


def black_baseline(x: torch.Tensor) -> torch.Tensor:
    """The normalised all-zero volume (what [0, 1]-scaled black becomes)."""
    return torch.full_like(x, (0.0 - NORM_MEAN) / NORM_STD)


def _attention_probs(module: SelfAttention, tokens: torch.Tensor) -> torch.Tensor:
    """Head-averaged softmax(q k^T / sqrt(head_dim)) of a SelfAttention on its input tokens."""
    b, n, _ = tokens.shape
    q, k, _v = module.qkv(tokens).view(b, n, 3, module.heads, module.head_dim).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * module.head_dim**-0.5
    return torch.softmax(scores.float(), dim=-1).mean(dim=1)  # (B, N, N)


def slice_transformer(model: nn.Module) -> SliceTransformer | None:
    """The model's only SliceTransformer, or None (no rollout for other aggregators)."""
    found = [m for m in model.modules() if isinstance(m, SliceTransformer)]
    return found[0] if len(found) == 1 else None


@torch.no_grad()
def attention_rollout(model: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray | None:
    """(B, n_tokens) rollout of the class token over the slice tokens (rows sum to 1), or None."""
    trf = slice_transformer(model)
    if trf is None:
        return None
    layers: list[torch.Tensor] = []
    # each block holds one SelfAttention; modules() visits them in block order
    attentions = [m for m in trf.blocks.modules() if isinstance(m, SelfAttention)]
    hooks = [
        attn.register_forward_hook(lambda mod, args, _out: layers.append(_attention_probs(mod, args[0])))
        for attn in attentions
    ]
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rollout = None
    for a in layers:
        eye = torch.eye(a.shape[-1], device=a.device)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    assert rollout is not None
    cls = rollout[:, 0, 1:]
    return (cls / cls.sum(dim=1, keepdim=True)).cpu().numpy()


def source_view_tokens(rollout: np.ndarray, layout: InputLayout) -> np.ndarray | None:
    """The rollout over the crop's slices: all tokens for a single view; for a multi-view model
    (tokens of each view in ``model_views`` order) the source view's tokens, renormalised."""
    depth = layout.crop_shape[0]
    if not layout.derived_views:
        return rollout if rollout.shape[1] == depth else None
    sizes = [layout.input_shapes()[v][1] for v in layout.model_views]
    if sum(sizes) != rollout.shape[1]:
        return None
    start = sum(sizes[: layout.model_views.index(layout.source_view)])
    part = rollout[:, start : start + depth]
    return part / part.sum(axis=1, keepdims=True)


def mass_inside(saliency: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """(share of the saliency mass inside ``region``, share of the voxels in it)."""
    saliency = np.abs(np.asarray(saliency, dtype=np.float64))
    region = np.asarray(region, dtype=bool)
    return float(saliency[region].sum() / saliency.sum()), float(region.mean())


# --------------------------------------------------------------------------- per knee


@dataclass
class KneeExplanation:
    knee: str
    subject_id: int
    side: str
    score: float
    crop: np.ndarray  # (d, h, w) float32 in [0, 1], what the model saw (before normalisation)
    saliency: np.ndarray  # (d, h, w) float32, sums to 1
    gradient: np.ndarray  # (d,) slice importance from the saliency
    rollout: np.ndarray | None  # (d,) attention rollout, or None


def explain_volumes(
    models: Sequence[nn.Module], layout: InputLayout, volumes: torch.Tensor, *, steps: int = 16
) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]:
    """Per stored uint8 volume: (score, saliency, gradient slice importance, rollout, crop)."""
    x = normalised_crops(volumes, layout)
    f = ensemble_score(models, layout)
    with torch.no_grad():
        scores = f(x).cpu().numpy()
    attribution = integrated_gradients(f, x, black_baseline(x), steps=steps)
    saliency = attribution.abs().sum(dim=1).detach().cpu().numpy().astype(np.float64)  # (B, d, h, w)
    saliency /= np.maximum(saliency.sum(axis=(1, 2, 3), keepdims=True), 1e-30)
    rollouts = [r for m in models if (r := attention_rollout(m, model_inputs(x, layout))) is not None]
    rollout = source_view_tokens(np.mean(rollouts, axis=0), layout) if len(rollouts) == len(models) else None
    crops = (x[:, 0] * NORM_STD + NORM_MEAN).detach().cpu().numpy()
    out = []
    for i in range(x.shape[0]):
        gradient = saliency[i].sum(axis=(1, 2))
        out.append(
            (
                float(scores[i]),
                saliency[i].astype(np.float32),
                gradient,
                None if rollout is None else rollout[i],
                crops[i].astype(np.float32),
            )
        )
    return out


# --------------------------------------------------------------------------- the run


def explain_run(
    run_dir: Path | str,
    out_dir: Path | str,
    *,
    knees: list[tuple[int, str]] | None = None,
    store: Path | str | None = None,
    db: Any = None,
    visit: int = 0,
    device: str = "auto",
    steps: int = 16,
    top: int = TOP_SLICES,
    batch_size: int = 2,
    plots: bool = True,
    progress: ProgressCallback = no_progress,
) -> pd.DataFrame:
    """Explain the run's ensemble on ``knees`` (default: its test knees); write ``out_dir``."""
    run = TrainedRun.open(run_dir)
    dev = resolve_device(device)
    vs = VolumeStore.open(store or run.store_path)
    run.check_store(vs)
    if knees is None and store is None:
        table = pd.read_csv(run.path / rf.KNEES)
        chosen = table[table["role"] == "test"][["subject_id", "side", "position"]].reset_index(drop=True)
        if chosen.empty:
            raise ExplainError(f"{run.path}: the run has no test knees; name knees with --knees")
    else:
        slots = store_slots(vs, run.view, db=db, visit=visit)
        chosen = select_slots(slots, knees, where=f"{vs.path} ({run.view}, visit {visit})")
    models = run.load_models(dev)
    for m in models:
        m.eval()
    out = Path(out_dir)
    (out / "knees").mkdir(parents=True, exist_ok=True)
    (out / "summary").mkdir(parents=True, exist_ok=True)
    offset = centre_offsets(run.layout.stored_shape, run.layout.crop_shape)[0]
    results: list[KneeExplanation] = []
    rows = []
    for start in range(0, len(chosen), batch_size):
        part = chosen.iloc[start : start + batch_size]
        volumes = torch.from_numpy(vs.read_many(run.view, [int(p) for p in part["position"]])).to(dev)
        for row, (score, saliency, gradient, rollout, crop) in zip(
            part.itertuples(index=False), explain_volumes(models, run.layout, volumes, steps=steps)
        ):
            e = KneeExplanation(knee_name(row.subject_id, row.side), int(row.subject_id), row.side, score, crop,
                                saliency, gradient, rollout)  # fmt: skip
            results.append(e)
            rows.append(_write_knee(out / "knees" / e.knee, e, offset, top, plots))
        progress("explaining", min(start + batch_size, len(chosen)), len(chosen))
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "explanations.csv", index=False)
    _write_summary(out / "summary", results, offset, plots)
    return frame


def _top(values: np.ndarray | None, k: int) -> list[int]:
    return [] if values is None else [int(i) for i in np.argsort(-values, kind="stable")[:k]]


def _write_knee(folder: Path, e: KneeExplanation, offset: int, top: int, plots: bool) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    d = len(e.gradient)
    table = pd.DataFrame(
        {
            "slice": np.arange(d),
            "stored_slice": np.arange(d) + offset,
            "gradient": e.gradient,
            "rollout": e.rollout if e.rollout is not None else np.full(d, np.nan),
        }
    )
    table.to_csv(folder / "slice_importance.csv", index=False)
    np.save(folder / "saliency.npy", e.saliency)
    top_gradient, top_rollout = _top(e.gradient, top), _top(e.rollout, top)
    if plots:
        for s in top_gradient:
            _overlay_png(folder / f"slice_{s:02d}.png", e.crop[s], e.saliency[s], f"{e.knee} slice {s}")
        _profile_png(folder / "profile.png", e.gradient, e.rollout, f"{e.knee}: score {e.score:.3f}")
    return {
        "knee": e.knee,
        "subject_id": e.subject_id,
        "side": e.side,
        "score": e.score,
        "top_slices_gradient": " ".join(map(str, top_gradient)),
        "top_slices_rollout": " ".join(map(str, top_rollout)),
        "crop_slice_offset": offset,
    }


def _write_summary(folder: Path, results: list[KneeExplanation], offset: int, plots: bool) -> None:
    gradient = np.stack([e.gradient for e in results])
    table = pd.DataFrame(
        {
            "slice": np.arange(gradient.shape[1]),
            "stored_slice": np.arange(gradient.shape[1]) + offset,
            "gradient_mean": gradient.mean(axis=0),
            "gradient_sd": gradient.std(axis=0),
        }
    )
    rollout = None
    rollouts = [e.rollout for e in results if e.rollout is not None]
    if len(rollouts) == len(results):
        rollout = np.stack(rollouts)
        table["rollout_mean"] = rollout.mean(axis=0)
        table["rollout_sd"] = rollout.std(axis=0)
    table["knees"] = len(results)
    table.to_csv(folder / "slice_importance.csv", index=False)
    mean_saliency = np.mean([e.saliency for e in results], axis=0).astype(np.float32)
    np.save(folder / "mean_saliency.npy", mean_saliency)
    if plots:
        mean_crop = np.mean([e.crop for e in results], axis=0)
        _profile_png(
            folder / "profile.png",
            gradient.mean(axis=0),
            None if rollout is None else rollout.mean(axis=0),
            f"mean over {len(results)} knees",
        )
        _summary_png(folder / "mean_saliency.png", mean_crop, mean_saliency)


# --------------------------------------------------------------------------- pictures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlay_png(path: Path, image: np.ndarray, saliency: np.ndarray, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    heat = saliency / max(float(saliency.max()), 1e-30)
    ax.imshow(np.ma.masked_less(heat, 0.05), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    ax.set(title=title)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _profile_png(path: Path, gradient: np.ndarray, rollout: np.ndarray | None, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(gradient, "o-", label="integrated gradients")
    if rollout is not None:
        ax.plot(rollout, "s--", label="attention rollout")
    ax.set(xlabel="slice of the crop", ylabel="importance (sums to 1)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary_png(path: Path, mean_crop: np.ndarray, mean_saliency: np.ndarray) -> None:
    plt = _pyplot()
    mid = mean_crop.shape[0] // 2
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(mean_saliency.max(axis=0), cmap="inferno")
    axes[0].set(title="mean saliency, max over slices")
    axes[1].imshow(mean_crop[mid], cmap="gray", vmin=0, vmax=1)
    heat = mean_saliency[mid] / max(float(mean_saliency[mid].max()), 1e-30)
    axes[1].imshow(np.ma.masked_less(heat, 0.05), cmap="inferno", alpha=0.55)
    axes[1].set(title=f"mean image and saliency, slice {mid}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
