"""The end-to-end demo: every step of the toolkit on a small synthetic OAI release.

synth (small images) -> ingest -> preprocess -> label -> split -> train -> eval, in one folder:

    OUT/release/      the synthetic OAI release (clinical tables, 00m/ image package)
    OUT/oai.sqlite    the cohort database
    OUT/store.zarr    the preprocessed volumes
    OUT/run/          the training run folder (see ``oaimodels.run_folder``)
    OUT/run/eval/     predictions, metrics.json, plots and report.md

It is sized to finish within minutes on two CPU cores while still learning the synthetic
progression signal (the held-out site's AP clearly above prevalence).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oaicohort import __version__
from oaicohort.cohort.labels import cohort_summary, derive_labels
from oaicohort.cohort.splits import make_split
from oaicohort.db import open_database
from oaicohort.errors import OAIError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.ingest.run import ingest_release
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.synth.clinical import write_release
from oaicohort.synth.images import write_images
from oaicohort.synth.radiograph_release import write_radiographs
from oaicohort.vocabulary import DEFAULT_DEFINITION, MRI_VIEWS, XRAY_VIEW
from oaimodels import run_folder as rf
from oaimodels.data import AugmentParams
from oaimodels.networks import get_spec

log = logging.getLogger(__name__)

DEMO_DEFINITION = DEFAULT_DEFINITION


@dataclass
class DemoConfig:
    """What the demo builds; the defaults fit a 2-core CPU in a few minutes."""

    out: Path = Path("oai-demo")
    model: str = "3d_shufflenet"
    subjects: int | None = None  # None: the model's demo size (DEMO_SIZE)
    epochs: int | None = None
    # a few hundred training knees give only a handful of steps per epoch at the paper's batch
    # size and learning rate; the demo takes smaller, faster steps to learn in minutes
    batch_size: int = 16
    lr: float | None = None  # None: DEMO_LR, or the X-ray model's demo recipe (XRAY_DEMO_RECIPE)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    folds: list[int] = field(default_factory=lambda: [0, 1])
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    bootstrap: int = 1000
    fresh: bool = False  # delete OUT first


@dataclass
class DemoResult:
    out: Path
    cohort: dict[str, Any]
    split: dict[str, Any]
    metrics: dict[str, Any]
    report: Path
    seconds: dict[str, float]
    disk_bytes: int = 0
    reused_release: bool = False
    subjects: int = 0  # the synthetic release's size and the epochs per fold actually run
    epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        data["report"] = str(self.report)
        return data


# Subjects and epochs per fold of the demo, by input. The MRI models learn the synthetic signal
# from a few hundred knees in 4 epochs (about 1.5 min on two cores). The X-ray model starts from
# random weights (the paper's ImageNet ones cannot be downloaded here) and needs more: at 500
# subjects and 4 epochs it stays at prevalence (held-out ROC AUC 0.46); at 1,500 and 12 it learns
# (seeds 0 and 1: AP 0.49 and 0.48 against 0.25, ROC AUC 0.70 and 0.72; README).
DEMO_SIZE: dict[str, tuple[int, int]] = {"mri": (500, 4), "radiographs": (1500, 12)}


def demo_size(config: DemoConfig) -> tuple[int, int]:
    """(subjects, epochs) the demo runs with: what ``config`` says, else the model's demo size."""
    subjects, epochs = DEMO_SIZE[_images(config.model)]
    return (config.subjects or subjects, config.epochs or epochs)


def _images(model: str) -> str:
    return "radiographs" if XRAY_VIEW in get_spec(model).views else "mri"


# The MRI models' demo learning rate: a few hundred training knees give only a handful of steps
# per epoch, so the demo takes larger steps than the paper's 1e-4.
DEMO_LR = 1e-3

# The X-ray model's demo recipe. On the demo's 70-pixel ROIs (2 mm per pixel) the joint-space
# signal is about a pixel wide: from random initialisation and ~800 training knees the paper's
# recipe (augmentations of +-15 deg rotation and gamma 0.5-2, focal loss, weighted sampler) washes
# it out. Same data, 12 epochs, lr 1e-4: paper recipe AP 0.27 against 0.25 (ROC AUC 0.53); this
# one (no augmentations, cross-entropy, each knee once per epoch) AP 0.49 (ROC AUC 0.70).
XRAY_DEMO_RECIPE: dict[str, Any] = {
    "augment": AugmentParams.none(),
    "focal_gamma": 0.0,
    "sampler": "shuffle",
    "lr": 1e-4,
}

_RELEASE_MARK = ".oai-demo-release.json"
"""Written last into OUT/release: which synthetic release is there, so a rerun can reuse it."""


def _release_identity(config: DemoConfig) -> dict[str, Any]:
    subjects = demo_size(config)[0]
    return {
        "subjects": subjects,
        "seed": config.seed,
        "images": f"small {_images(config.model)}",
        "toolkit": __version__,
    }


def _release_matches(release: Path, config: DemoConfig) -> bool:
    """True when ``release`` holds a complete synthetic release written for the same config."""
    try:
        return bool(json.loads((release / _RELEASE_MARK).read_text()) == _release_identity(config))
    except (OSError, ValueError):
        return False


def disk_usage(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (what the demo leaves on disk)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _step(name: str, progress: ProgressCallback, index: int, total: int) -> float:
    progress("demo", index, total)
    log.info("demo: %s", name)
    return time.perf_counter()


def run_demo(config: DemoConfig, progress: ProgressCallback | None = None) -> DemoResult:
    """Run every step on a fresh synthetic release and return the cohort table and metrics."""
    from oaimodels.evaluation.held_out import evaluate_runs
    from oaimodels.training.config import TrainConfig
    from oaimodels.training.run import train_run

    report = progress or no_progress
    out = Path(config.out).resolve()
    if config.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    release, store, run_dir = out / "release", out / "store.zarr", out / "run"
    if run_dir.exists() and not (run_dir / rf.CONFIG).exists():
        raise OAIError(f"{run_dir} exists but is not a run folder; remove it or pick another --out")
    seconds: dict[str, float] = {}
    steps = 7

    t = _step("synth", report, 0, steps)
    reused = _release_matches(release, config)
    xray = _images(config.model) == "radiographs"
    subjects, epochs = demo_size(config)
    if reused:
        log.info("demo: reusing the synthetic release in %s (same subjects and seed)", release)
    else:
        (release / _RELEASE_MARK).unlink(missing_ok=True)  # a half-rewritten release is never reused
        write_release(release, subjects=subjects, seed=config.seed, progress=report)
        if xray:  # the X-ray prior art reads the knee ROIs of the bilateral PA radiographs
            write_radiographs(release, size="small", seed=config.seed, workers=config.workers, progress=report)
        else:
            write_images(release, size="small", seed=config.seed, workers=config.workers, progress=report)
        (release / _RELEASE_MARK).write_text(json.dumps(_release_identity(config)) + "\n")
    seconds["synth"] = time.perf_counter() - t

    db = open_database(out / "oai.sqlite")
    try:
        t = _step("ingest", report, 1, steps)
        ingest_release(db, release, progress=report)
        seconds["ingest"] = time.perf_counter() - t

        t = _step("preprocess", report, 2, steps)
        if xray:
            failed = run_xray_preprocess(
                db, store, PreprocessParams.small(), workers=config.workers, progress=report
            ).failed
        else:
            failed = run_preprocess(
                db,
                store,
                PreprocessParams.small(),
                views=MRI_VIEWS,
                workers=config.workers,
                progress=report,
            ).failed
        seconds["preprocess"] = time.perf_counter() - t
        if failed:
            log.warning("demo: %d series failed to preprocess", failed)

        t = _step("label", report, 3, steps)
        derive_labels(db, DEMO_DEFINITION, store=None if xray else store, progress=report)
        cohort = cohort_summary(db, DEMO_DEFINITION).to_dict()
        seconds["label"] = time.perf_counter() - t

        t = _step("split", report, 4, steps)
        split = make_split(db, definition=DEMO_DEFINITION, test_sites=("D",), folds=5, seed=config.seed)
        seconds["split"] = time.perf_counter() - t

        t = _step("train", report, 5, steps)
        recipe = dict(XRAY_DEMO_RECIPE) if xray else {"lr": DEMO_LR}
        if config.lr is not None:
            recipe["lr"] = config.lr
        train_config = TrainConfig(
            **recipe,
            store=str(store),
            out=str(run_dir),
            model=config.model,
            folds=list(config.folds),
            epochs=epochs,
            init="scratch",
            batch_size=config.batch_size,
            warmup_epochs=0,
            threads=config.threads,
            device=config.device,
            seed=config.seed,
            definition=DEMO_DEFINITION,
            split=split.split_id,
            loader="resident",
        )
        resume = (run_dir / rf.CONFIG).exists()
        train_run(train_config, db, progress=report, resume=resume)
        seconds["train"] = time.perf_counter() - t

        t = _step("eval", report, 6, steps)
        metrics = evaluate_runs(
            [run_dir], db, n_resamples=config.bootstrap, seed=0, threads=config.threads, progress=report
        )
        seconds["eval"] = time.perf_counter() - t
    finally:
        db.dispose()
    report("demo", steps, steps)
    return DemoResult(
        out=out,
        cohort=cohort,
        split=split.to_dict(),
        metrics={
            k: metrics.get(k)
            for k in (
                "ap",
                "ap_sd",
                "ap_ci",
                "roc_auc",
                "roc_auc_sd",
                "roc_auc_ci",
                "balanced_accuracy",
                "n_knees",
                "prevalence",
                "brier",
            )
        },
        report=Path(metrics["report"]),
        seconds=seconds,
        disk_bytes=disk_usage(out),
        reused_release=reused,
        subjects=subjects,
        epochs=epochs,
    )
