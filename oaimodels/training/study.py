"""A study: every MRI model of Table 1 (every view of 2D+TRF), one run folder each, named
``{model}[_{view}]_{init}`` under the study's folder; each run is :func:`~oaimodels.training.run.train_run`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from oaicohort.db import Database
from oaicohort.progress import ProgressCallback
from oaimodels import run_folder as rf
from oaimodels.data.store_models import table1_models
from oaimodels.networks import get_spec, list_models
from oaimodels.training.config import TrainConfig
from oaimodels.training.loop import EpochHook
from oaimodels.training.run import train_run

log = logging.getLogger(__name__)


def mri_models() -> list[str]:
    """Registered models that read MRI volumes (every row of Table 1 but the X-ray prior art)."""
    return [m for m in list_models() if set(get_spec(m).views) <= {"sag", "cor", "ax"}]


def run_name(model: str, view: str | None, init: str) -> str:
    return "_".join(x for x in (model, view, init) if x)


def train_all(
    config: TrainConfig,
    db: Database | None = None,
    progress: ProgressCallback | None = None,
    *,
    models: Sequence[str] | None = None,
    resume: bool = False,
    on_epoch: EpochHook | None = None,
) -> list[Path]:
    """Train every MRI model of Table 1 (every view of 2D+TRF), one run folder each under
    ``config.out`` named ``{model}[_{view}]_{init}``.

    Finished runs are skipped, so the same command continues a study, and a second study with
    another ``init`` into the same folder adds only the runs it lacks (Table 2: volumetric models
    have no ImageNet encoder and are shared). An unfinished run needs ``resume=True``.
    """
    done = []
    for sub in study_configs(config, models):
        run_dir = Path(sub.out)
        if rf.is_run_complete(run_dir):
            log.info("%s: complete, skipped", run_dir.name)
            done.append(run_dir)
            continue
        done.append(train_run(sub, db, progress, resume=resume, on_epoch=on_epoch))
    return done


def study_configs(config: TrainConfig, models: Sequence[str] | None = None) -> list[TrainConfig]:
    """The config of each run of a study (:func:`train_all`; cluster jobs take the same list)."""
    root = Path(config.out)
    out = []
    for model in models or table1_models(config.store):
        spec = get_spec(model)
        views: Sequence[str | None] = (
            ([config.view] if config.view else list(spec.view_choices) or [None]) if spec.view_choices else [None]
        )
        for view in views:
            init = config.init
            if init == "auto":
                init = "imagenet" if spec.imagenet_encoder else "scratch"
            elif init == "imagenet" and not spec.imagenet_encoder:
                init = "scratch"  # volumetric models have no ImageNet encoder
            run_dir = root / run_name(model, view, init)
            out.append(dataclasses.replace(config, model=model, view=view, init=init, out=str(run_dir)))
    return out
