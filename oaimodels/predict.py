"""Apply a trained run's fold ensemble to new scans: ``oai predict RUN INPUT...``.

Inputs (any mix):

* a DICOM series folder (one file per slice): read and preprocessed here with the run's store
  parameters; the knee side comes from the series description (``SAG_3D_DESS_RIGHT``) or
  ``side=``;
* an OAI release (a folder with image packages, ``contents.csv``): the series of the run's
  sequence at ``visit`` for ``knees`` (all of them when no knee is named), read and
  preprocessed likewise;
* a volume store (``zarr.json``): its volumes as they are, provided the store was made with
  exactly the run's preprocessing parameters (refused otherwise, naming the parameter).

Every fold's best model scores every knee on the centre crop, exactly as ``oai eval`` does
(same batching, same precision rule, the same ensemble function: softmax once per fold model,
then the mean); the progression score is ``p(fast) + p(slow)``. Every row carries the run's
path and hash (``oaimodels.trained_run.run_hash``: the config hash and every fold's weights) and the toolkit
version.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from oaicohort import __version__
from oaicohort.errors import InputFileError, OAIError
from oaicohort.imaging.preprocessing import PreprocessParams
from oaicohort.imaging.selection import SelectionError, knee_name, select_slots, store_slots
from oaicohort.imaging.store import VolumeStore
from oaicohort.imaging.volume_transforms import preprocess_series
from oaicohort.progress import ProgressCallback, no_progress
from oaicohort.vocabulary import CLASSES

from . import run_folder as rf
from .data import BatchPreparer, make_source, resident_fits, to_device

# Names of the training/evaluation layer, imported in this one place (their modules may move).
from .evaluation import ensemble_probabilities
from .metrics import progression_score
from .trained_run import TrainedRun
from .training import predict_logits, resolve_device, softmax

log = logging.getLogger(__name__)


class PredictError(OAIError):
    """Nothing to predict (no input given)."""


# --------------------------------------------------------------------------- inputs


@dataclass
class KneeScan:
    """One knee to score: where it came from and, for series, its preprocessed volume."""

    input: str
    kind: str  # series | release | store
    subject_id: Any
    side: str
    visit: int | None = None
    knee_id: int | None = None
    position: int | None = None
    volume: np.ndarray | None = None
    notes: str = ""

    def slot(self) -> int:
        """The store position of a scan read from a store."""
        if self.position is None:
            raise ValueError(f"{self.input}: knee {self.subject_id}{self.side} has no store position")
        return self.position

    def preprocessed(self) -> np.ndarray:
        """The preprocessed volume of a scan read from a series or a release."""
        if self.volume is None:
            raise ValueError(f"{self.input}: knee {self.subject_id}{self.side} has no preprocessed volume")
        return self.volume


class ArraySource:
    """Preprocessed volumes held in memory as one uint8 tensor (a ``VolumeSource``)."""

    def __init__(self, volumes: Sequence[np.ndarray], device: torch.device) -> None:
        self.device = device
        self.data = torch.from_numpy(np.stack(volumes)).to(device)

    def iterate(self, batches: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        for batch in batches:
            yield self.data.index_select(0, to_device(torch.as_tensor(batch), self.device))

    def close(self) -> None:
        self.data = torch.empty(0, dtype=torch.uint8)


def input_kind(path: Path) -> str:
    """``store`` (has zarr.json), ``series`` (slice files, no sub-folders) or ``release``."""
    if not path.exists():
        raise InputFileError(path, "no such file or folder")
    if not path.is_dir():
        raise InputFileError(path, "not a folder; give a DICOM series folder, an OAI release or a volume store")
    if (path / "zarr.json").is_file():
        return "store"
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if entries and not any(p.is_dir() for p in entries):
        return "series"
    return "release"


@dataclass(frozen=True)
class _Sided:
    """A read series with the side preprocessing should assume (``SeriesLike``)."""

    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    side: str


def _series_scan(
    folder: Path, params: PreprocessParams, view: str, side: str | None, kind: str, **extra: Any
) -> KneeScan:
    from oaicohort.imaging.dicom_series import read_series

    series = read_series(folder)
    knee_side = series.side or side
    if series.side and side and extra.get("expected_side") and series.side != side:
        raise InputFileError(folder, f"series says knee side {series.side} but the release index says {side}")
    if knee_side not in ("R", "L"):
        raise InputFileError(
            folder, f"cannot tell the knee side (series description {series.series_description!r}); pass --side R or L"
        )
    result = preprocess_series(_Sided(series.pixels, series.spacing_mm, knee_side), params, (view,))
    subject = extra.get("subject_id", getattr(series, "patient_id", ""))
    notes = ";".join(sorted(k for k in result.notes if k not in ("intensity_range", "source_shape")))
    return KneeScan(
        input=str(folder),
        kind=kind,
        subject_id=int(subject) if str(subject).isdigit() else subject,
        side=knee_side,
        visit=extra.get("visit"),
        volume=result.volumes[view],
        notes=notes,
    )


def _release_scans(
    root: Path,
    params: PreprocessParams,
    view: str,
    knees: list[tuple[int, str]] | None,
    visit: int,
    progress: ProgressCallback,
) -> list[KneeScan]:
    from oaicohort.imaging.series_source import check_within
    from oaicohort.release.discovery import CONTENTS, discover_release
    from oaicohort.release.image_index import read_contents
    from oaicohort.release.text import load_source

    frames = [read_contents(load_source(s)) for s in discover_release(root) if s.kind == CONTENTS]
    if not frames:
        raise InputFileError(root, "no image package index (contents.csv) below this folder")
    series = pd.concat(frames, ignore_index=True)
    series = series[(series["sequence"] == params.sequence) & (series["visit"] == visit) & (series["side"] != "")]
    series = series.drop_duplicates(["subject_id", "side"], keep="last")
    slots = series.rename(columns={"folder": "series_folder"}).assign(position=range(len(series)))
    chosen = select_slots(slots, knees, where=f"{root} ({params.sequence}, visit {visit})")
    scans = []
    for n, row in enumerate(chosen.itertuples(index=False), start=1):
        folder = Path(row.visit_dir) / row.series_folder
        check_within(folder, Path(row.visit_dir))
        scans.append(
            _series_scan(
                folder,
                params,
                view,
                row.side,
                "release",
                subject_id=int(row.subject_id),
                visit=int(row.visit),
                expected_side=True,
            )
        )
        progress("reading series", n, len(chosen))
    return scans


def _store_scans(
    run: TrainedRun, path: Path, knees: list[tuple[int, str]] | None, visit: int, db: Any
) -> tuple[VolumeStore, list[KneeScan]]:
    store = VolumeStore.open(path)
    run.check_store(store)
    slots = store_slots(store, run.view, db=db, visit=visit)
    chosen = select_slots(slots, knees, where=f"{store.path} ({run.view}, visit {visit})")
    knee_ids: dict[int, int] = {}
    if str(store.path) == str(Path(run.store_path).resolve()) and (run.path / rf.KNEES).is_file():
        # the run's own store: its knees.csv names the knees of these slots
        table = pd.read_csv(run.path / rf.KNEES)
        knee_ids = dict(zip(table["position"].astype(int), table["knee_id"].astype(int)))
    scans = []
    for row in chosen.itertuples(index=False):
        knee_id = getattr(row, "knee_id", None)
        if knee_id is None or pd.isna(knee_id):
            knee_id = knee_ids.get(int(row.position))
        scans.append(
            KneeScan(
                input=str(store.path),
                kind="store",
                subject_id=int(row.subject_id),
                side=row.side,
                visit=int(row.visit),
                knee_id=None if knee_id is None else int(knee_id),
                position=int(row.position),
            )
        )
    return store, scans


# --------------------------------------------------------------------------- prediction


def _fold_logits(
    run: TrainedRun, models: list[torch.nn.Module], source: Any, n: int, device: torch.device, batch_size: int
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
    db: Any = None,
    device: str = "auto",
    batch_size: int | None = None,
    loader: str = "auto",
    progress: ProgressCallback = no_progress,
) -> pd.DataFrame:
    """Per-knee class probabilities and progression score of the run's fold ensemble.

    ``knees`` selects knees of stores and releases (a DICOM series folder is always used);
    ``visit`` the visit of stores and releases; ``side`` the side of series whose description
    does not say it. Columns: ``input, kind, subject_id, side, visit, knee_id, p_none, p_fast,
    p_slow, score, predicted, score_fold{k}..., notes, run, run_hash, model, toolkit_version``.
    """
    if not inputs:
        raise PredictError("no input given (DICOM series folders, an OAI release or a volume store)")
    run = TrainedRun.open(run_dir)
    dev = resolve_device(device)
    batch = batch_size or run.batch_size()
    groups: list[tuple[list[KneeScan], VolumeStore | None]] = []  # scans, and their store (None: in memory)
    series_scans: list[KneeScan] = []
    for item in inputs:
        path = Path(item).expanduser().resolve()
        kind = input_kind(path)
        if kind == "store":
            store, scans = _store_scans(run, path, knees, visit, db)
            groups.append((scans, store))
        elif kind == "release":
            series_scans.extend(_release_scans(path, run.params(), run.view, knees, visit, progress))
        else:
            series_scans.append(_series_scan(path, run.params(), run.view, side, "series"))
    if series_scans:
        groups.append((series_scans, None))
    if not any(scans for scans, _ in groups):
        raise SelectionError("nothing to predict: the inputs hold no selected knee")
    models = run.load_models(dev)
    frames = []
    for g, (scans, scans_store) in enumerate(groups, start=1):
        if scans_store is not None:
            positions = [s.slot() for s in scans]
            mode = loader if loader != "auto" else (
                "resident" if resident_fits(len(scans), run.layout.stored_shape, dev) else "workers"
            )  # fmt: skip
            source = make_source(mode, str(scans_store.path), run.view, positions, dev, workers=0)
        else:
            source = ArraySource([s.preprocessed() for s in scans], dev)
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
    frame["notes"] = [s.notes for s in scans]
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
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    rf.write_csv(path, frame)
