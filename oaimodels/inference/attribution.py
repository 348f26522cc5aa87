"""Attributions of a fold ensemble's progression score ``mean_k(p_fast + p_slow)`` to its input.

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

Pure computation on tensors of stored volumes: which knees, and the files and pictures made of
the result, are :mod:`oaimodels.inference.explain`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from oaimodels.data import InputLayout, ModelInputs, inference_transforms
from oaimodels.networks.slice_transformer import SelfAttention, SliceTransformer

# --------------------------------------------------------------------------- model input


def model_inputs(x: torch.Tensor, layout: InputLayout) -> dict[str, torch.Tensor]:
    """The model's input dict from a normalised crop ``x`` (B, 1, d, h, w), as training builds it."""
    return ModelInputs(layout)(x[:, 0])


def normalised_crops(volumes: torch.Tensor, layout: InputLayout) -> torch.Tensor:
    """Uint8 stored volumes through the recipe's inference pipeline (centre crop, [0, 1]
    scaling, normalisation): (B, 1, d, h, w)."""
    return inference_transforms(layout)(volumes).unsqueeze(1)


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


def black_baseline(x: torch.Tensor, layout: InputLayout) -> torch.Tensor:
    """The normalised all-zero volume (what [0, 1]-scaled black becomes)."""
    mean, std = layout.normalisation
    return torch.full_like(x, (0.0 - mean) / std)


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


# --------------------------------------------------------------------------- per volume


def explain_volumes(
    models: Sequence[nn.Module], layout: InputLayout, volumes: torch.Tensor, *, steps: int = 16
) -> list[tuple[float, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]]:
    """Per stored uint8 volume: (score, saliency, gradient slice importance, rollout, crop)."""
    x = normalised_crops(volumes, layout)
    f = ensemble_score(models, layout)
    with torch.no_grad():
        scores = f(x).cpu().numpy()
    attribution = integrated_gradients(f, x, black_baseline(x, layout), steps=steps)
    saliency = attribution.abs().sum(dim=1).detach().cpu().numpy().astype(np.float64)  # (B, d, h, w)
    saliency /= np.maximum(saliency.sum(axis=(1, 2, 3), keepdims=True), 1e-30)
    rollouts = [r for m in models if (r := attention_rollout(m, model_inputs(x, layout))) is not None]
    rollout = source_view_tokens(np.mean(rollouts, axis=0), layout) if len(rollouts) == len(models) else None
    mean, std = layout.normalisation
    crops = (x[:, 0] * std + mean).detach().cpu().numpy()
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
