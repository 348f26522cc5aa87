"""Apply a trained run's fold ensemble to new scans: ``oai predict RUN INPUT...``.

Inputs (any mix; read by ``oaimodels.inference.inputs``):

* a DICOM series folder: an MRI run's series (one file per slice; the knee side from the series
  description, e.g. ``SAG_3D_DESS_RIGHT``, or ``side=``), or an X-ray run's bilateral PA
  radiograph (one file; both knees, or the one of ``side=``), preprocessed here with the run's
  store parameters (radiograph knees localised and cropped as ``oai preprocess --view xray``);
* an OAI release (a folder with image packages, ``contents.csv``): the series of the run's
  sequence (or its radiographs) at ``visit`` for ``knees`` (all of them when no knee is named),
  read and preprocessed likewise;
* a volume store (``zarr.json``): its volumes as they are, provided the store was made with
  exactly the run's preprocessing parameters (refused otherwise, naming the parameter).

Every fold's best model scores every knee on the centre crop, exactly as ``oai eval`` does
(same batching, same precision rule, the same ensemble function: softmax once per fold model,
then the mean); the progression score is ``p(fast) + p(slow)``. Every row carries the run's
path and hash (``oaimodels.inference.trained_run.run_hash``: the config hash and every fold's weights) and the toolkit
version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from oaicohort import __version__
from oaicohort.db import Database
from oaicohort.errors import OAIError
from oaicohort.imaging.store.selection import SelectionError, knee_name
from oaicohort.outputs import check_output
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.vocabulary import CLASSES
from oaimodels import run_folder as rf
from oaimodels.data import BatchPreparer, ResidentSource, VolumeSource, make_source
from oaimodels.evaluation.held_out import ensemble_probabilities
from oaimodels.inference.inputs import KneeScan, read_inputs
from oaimodels.inference.trained_run import TrainedRun
from oaimodels.logits import predict_logits, softmax
from oaimodels.metrics import progression_score
from oaimodels.training.config import resolve_device

log = logging.getLogger(__name__)


class PredictError(OAIError):
    """Nothing to predict (no input given)."""


# --------------------------------------------------------------------------- prediction


def _fold_logits(
    run: TrainedRun, models: list[torch.nn.Module], source: VolumeSource, n: int, device: torch.device, batch_size: int
) -> list[np.ndarray]:
    preparer = BatchPreparer(run.layout, channels_last=bool(run.config.channels_last) and device.type == "cuda")
    return [
        predict_logits(model, source, np.arange(n), preparer, batch_size=batch_size, precision=run.precision(device))
        for model in models
    ]


def predict(
    run_dir: Path | str,
    inputs: Sequence[Path | str],
    *,
    knees: list[tuple[int, str]] | None = None,
    visit: int = 0,
    side: str | None = None,
    db: Database | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    loader: str = "auto",
    allow_incomplete: bool = False,
    progress: ProgressCallback = no_progress,
) -> pd.DataFrame:
    """Per-knee class probabilities and progression score of the run's fold ensemble.

    ``knees`` selects knees of stores and releases (a DICOM series folder is always used);
    ``visit`` the visit of stores and releases; ``side`` the side of series whose description
    does not say it. Columns: ``input, kind, subject_id, side, visit, knee_id, p_none, p_fast,
    p_slow, score, predicted, score_fold{k}..., notes, run, run_hash, model, toolkit_version``.
    A run with a fold that stopped before its last epoch is refused unless ``allow_incomplete``
    (then every row's notes say so).
    """
    if not inputs:
        raise PredictError("no input given (DICOM series folders, an OAI release or a volume store)")
    run = TrainedRun.open(run_dir, allow_incomplete=allow_incomplete)
    dev = resolve_device(device)
    batch = batch_size or run.batch_size()
    groups = read_inputs(run, inputs, knees=knees, visit=visit, side=side, db=db, progress=progress)
    if not any(scans for scans, _ in groups):
        raise SelectionError("nothing to predict: the inputs hold no selected knee")
    models = run.load_models(dev)
    frames = []
    for g, (scans, scans_store) in enumerate(groups, start=1):
        if scans_store is not None:
            source = make_source(loader, scans_store, run.view, [s.slot() for s in scans], dev, workers=0)
        else:
            source = ResidentSource.from_arrays([s.preprocessed() for s in scans], dev)
        try:
            logits = _fold_logits(run, models, source, len(scans), dev, batch)
        finally:
            source.close()
        frames.append(_rows(run, scans, logits))
        progress("predicting", g, len(groups))
    return pd.concat(frames, ignore_index=True)


def _rows(run: TrainedRun, scans: list[KneeScan], fold_logits: list[np.ndarray]) -> pd.DataFrame:
    probs = ensemble_probabilities(fold_logits)
    frame = pd.DataFrame(
        {
            "input": [s.input for s in scans],
            "kind": [s.kind for s in scans],
            "knee": [knee_name(s.subject_id, s.side) if str(s.subject_id).isdigit() else "" for s in scans],
            "subject_id": [s.subject_id for s in scans],
            "side": [s.side for s in scans],
            "visit": pd.array([s.visit for s in scans], dtype="Int64"),
            "knee_id": pd.array([s.knee_id for s in scans], dtype="Int64"),
        }
    )
    for i, c in enumerate(CLASSES):
        frame[f"p_{c}"] = probs[:, i]
    frame["score"] = progression_score(probs)
    frame["predicted"] = [CLASSES[i] for i in probs.argmax(axis=1)]
    for fold, logits in zip(run.folds, fold_logits):
        frame[f"score_fold{fold}"] = progression_score(softmax(logits))
    unfinished = f"unfinished fold(s) {run.incomplete}" if run.incomplete else ""
    frame["notes"] = [";".join(n for n in (s.notes, unfinished) if n) for s in scans]
    frame["run"] = str(run.path)
    frame["run_hash"] = run.hash
    frame["model"] = run.config.model
    frame["toolkit_version"] = __version__
    return frame


def write_predictions(frame: pd.DataFrame, out: Path | str) -> None:
    """``out`` (CSV, written atomically) or stdout for ``-``; floats at full precision."""
    if str(out) == "-":
        import sys

        frame.to_csv(sys.stdout, index=False)
        return
    inputs = [str(i) for i in frame["input"].unique()] if "input" in frame.columns else []
    path = check_output(out, option="out", inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    rf.write_csv(path, frame)
