"""Why a run scored a knee as it did: ``oai explain RUN --knees ... --out DIR``.

The fold ensemble's progression score ``mean_k(p_fast + p_slow)`` is attributed to the input by
integrated gradients (a saliency map and a slice importance for every model) and, for models
that aggregate slice tokens with a ``SliceTransformer``, attention rollout; how both are
computed is :mod:`oaimodels.inference.attribution`. This module picks the knees, runs the attributions in
batches and writes what they found.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from oaicohort.db import Database
from oaicohort.errors import OAIError
from oaicohort.files import staged_folder
from oaicohort.imaging.store.selection import knee_name, select_slots, store_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.outputs import check_output
from oaicohort.progress import ProgressCallback, no_progress
from oaimodels import run_folder as rf
from oaimodels.data import centre_offsets
from oaimodels.inference.attribution import explain_volumes
from oaimodels.inference.trained_run import TrainedRun
from oaimodels.plotting import pyplot
from oaimodels.run_volumes import check_known_volumes, locate_run_volumes
from oaimodels.training.config import resolve_device

TOP_SLICES = 3


class ExplainError(OAIError):
    """A run cannot be explained on the given knees."""


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


# --------------------------------------------------------------------------- the run


def explain_run(
    run_dir: Path | str,
    out_dir: Path | str,
    *,
    knees: list[tuple[int, str]] | None = None,
    store: Path | str | None = None,
    db: Database | None = None,
    visit: int = 0,
    device: str = "auto",
    steps: int = 16,
    top: int = TOP_SLICES,
    batch_size: int = 2,
    plots: bool = True,
    allow_incomplete: bool = False,
    progress: ProgressCallback = no_progress,
) -> pd.DataFrame:
    """Explain the run's ensemble on ``knees`` (default: its test knees); write ``out_dir``.

    A run with a fold that stopped before its last epoch is refused unless ``allow_incomplete``."""
    run = TrainedRun.open(run_dir, allow_incomplete=allow_incomplete)
    out_dir = check_output(out_dir, option="out", inputs=[store or run.store_path], database=db)
    dev = resolve_device(device)
    vs = VolumeStore.open(store or run.store_path)
    run.check_store(vs)
    table = rf.read_table(run.path / rf.KNEES, ("subject_id", "side", "role", "position"))
    if knees is None and store is None:
        columns = [c for c in ("subject_id", "side", "position", rf.CHECKSUM) if c in table.columns]
        chosen = table[table["role"] == "test"][columns].reset_index(drop=True)
        if chosen.empty:
            raise ExplainError(f"{run.path}: the run has no test knees; name knees with --knees")
        # the volumes the run was tested on, wherever the store now keeps them (or refused)
        chosen, _ = locate_run_volumes(vs, run.view, chosen, visit=run.config.visit, run=run.path)
    else:
        slots = store_slots(vs, run.view, db=db, visit=visit)
        chosen = select_slots(slots, knees, where=f"{vs.path} ({run.view}, visit {visit})")
        check_known_volumes(vs, run.view, chosen, table, visit=run.config.visit, run=run.path)
    models = run.load_models(dev)
    for m in models:
        m.eval()
    offset = centre_offsets(run.layout.stored_shape, run.layout.crop_shape)[0]
    results: list[KneeExplanation] = []
    rows = []
    with staged_folder(Path(out_dir)) as out:  # a failure half-way leaves OUT as it was
        (out / "knees").mkdir()
        (out / "summary").mkdir()
        for start in range(0, len(chosen), batch_size):
            part = chosen.iloc[start : start + batch_size]
            volumes = torch.from_numpy(vs.read_many(run.view, [int(p) for p in part["position"]])).to(dev)
            for row, (score, saliency, gradient, rollout, crop) in zip(
                part.itertuples(index=False), explain_volumes(models, run.layout, volumes, steps=steps)
            ):
                e = KneeExplanation(knee_name(row.subject_id, row.side), int(row.subject_id), row.side, score,
                                    crop, saliency, gradient, rollout)  # fmt: skip
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


def _overlay_png(path: Path, image: np.ndarray, saliency: np.ndarray, title: str) -> None:
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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
