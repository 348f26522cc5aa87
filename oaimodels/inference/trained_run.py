"""A finished run folder as something to apply: config, layout, folds, preprocessing parameters,
fold models and a hash that names the exact weights (``oai predict``, ``oai explain``).

The parameters the run was trained on come from ``config.json`` when it records them, else from
the run's store (when it is still there and its hash is the recorded one), else from a preset
with that hash. A store made with other parameters is refused with the differing ones named.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from oaicohort.errors import OAIError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.volume_store import VolumeStore
from oaimodels import run_folder as rf
from oaimodels.data import InputLayout
from oaimodels.training.checkpoint import check_matches_run, checkpoint_meta_of, load_fold_model
from oaimodels.training.config import TrainConfig

log = logging.getLogger(__name__)


class RunError(OAIError):
    """A run folder cannot be used (not a run, unfinished folds, other preprocessing parameters)."""


def run_hash(run_dir: Path, saved: dict[str, Any], folds: Sequence[int]) -> str:
    """sha256 over the bytes of the run's ``config.json`` and of every fold's ``best.pt`` (16 hex
    digits): any change to what the run applies changes it."""
    h = hashlib.sha256((Path(run_dir) / rf.CONFIG).read_bytes())
    for fold in folds:
        with open(rf.fold_dir(run_dir, fold) / rf.BEST, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _known_params(params_hash: str) -> PreprocessParams | None:
    for name in ("full", "small"):
        params = PreprocessParams.preset_named(name)
        if params.hash() == params_hash:
            return params
    return None


@dataclass
class TrainedRun:
    """A finished run folder: config, layout, folds, store parameters, and its fold models."""

    path: Path
    saved: dict[str, Any]
    config: TrainConfig
    layout: InputLayout
    folds: list[int]
    store_path: str
    store_params_hash: str
    hash: str
    _params: PreprocessParams | None = field(default=None, repr=False)

    incomplete: list[int] = field(default_factory=list)  # folds used before their last epoch

    @classmethod
    def open(cls, run_dir: Path | str, *, allow_incomplete: bool = False) -> TrainedRun:
        """The run in ``run_dir``; a fold that stopped before its last epoch (``best.pt``, no
        ``summary.json``) is refused unless ``allow_incomplete`` (then listed in ``incomplete``)."""
        path = Path(run_dir).expanduser().resolve()
        config_path = path / rf.CONFIG
        if not config_path.is_file():
            raise RunError(f"{path}: not a run folder (no {rf.CONFIG}); train one with `oai train --out {path}`")
        saved = rf.read_json(config_path)
        if not isinstance(saved, dict) or any(k not in saved for k in ("config", "layout", "folds")):
            raise RunError(f"{config_path}: damaged run config (no config, layout or folds); train the run again")
        folds = [int(k) for k in saved["folds"]]
        missing = [k for k in folds if not (rf.fold_dir(path, k) / rf.BEST).is_file()]
        if missing:
            raise RunError(
                f"{path}: fold(s) {missing} have no best.pt (training not finished); "
                f"continue with `oai train ... --out {path} --resume`"
            )
        unfinished = [k for k in folds if not rf.is_fold_complete(path, k)]
        if unfinished and not allow_incomplete:
            raise RunError(
                f"{path}: fold(s) {unfinished} stopped before their last epoch (best.pt but no {rf.SUMMARY}); "
                f"continue with `oai train ... --out {path} --resume`, or pass --allow-incomplete to use "
                "their best snapshot so far"
            )
        if unfinished:
            log.warning("%s: fold(s) %s unfinished; using their best snapshot so far", path.name, unfinished)
        for fold in folds:  # an edited config.json or another run's weights: refused before any work
            checkpoint = rf.fold_dir(path, fold) / rf.BEST
            check_matches_run(checkpoint_meta_of(checkpoint), saved, checkpoint, config_path)
        config = TrainConfig.from_dict(saved["config"])
        store = saved.get("store") or {}
        return cls(
            path=path,
            saved=saved,
            config=config,
            layout=InputLayout.from_dict(saved["layout"]),
            folds=folds,
            store_path=str(store.get("path", saved["config"]["store"])),
            store_params_hash=str(store.get("params_hash", "")),
            hash=run_hash(path, saved, folds),
            incomplete=unfinished,
        )

    @property
    def view(self) -> str:
        return self.layout.source_view

    def params(self) -> PreprocessParams:
        """The preprocessing parameters the run was trained on.

        From config.json when it records them, else from the run's store (when it is still
        there and its hash is the recorded one), else from a preset with that hash.
        """
        if self._params is not None:
            return self._params
        recorded = (self.saved.get("store") or {}).get("params")
        params: PreprocessParams | None = PreprocessParams.from_dict(recorded) if recorded else None
        if params is None and Path(self.store_path, "zarr.json").is_file():
            try:
                store_params = VolumeStore.open(self.store_path).params
            except OAIError:
                store_params = None
            if store_params is not None and store_params.hash() == self.store_params_hash:
                params = store_params
        if params is None:
            params = _known_params(self.store_params_hash)
        if params is None:
            raise RunError(
                f"{self.path}: the run's store {self.store_path} is gone and its preprocessing "
                f"parameters (hash {self.store_params_hash[:12]}) are no preset; predict from a store "
                "made with those parameters instead of DICOM series"
            )
        self._params = params
        return params

    def check_store(self, store: VolumeStore) -> None:
        """Refuse a store whose parameters are not the run's, naming what differs."""
        if store.params_hash == self.store_params_hash:
            return
        try:
            mine = self.params().to_dict()
        except RunError:
            raise RunError(
                f"{store.path}: made with preprocessing parameters {store.params_hash[:12]}, the run "
                f"{self.path.name} with {self.store_params_hash[:12]}; preprocess the scans again with "
                "the run's parameters"
            ) from None
        theirs = store.params.to_dict()
        differ = [k for k in mine if mine[k] != theirs.get(k)]
        detail = ", ".join(f"{k}: store {theirs.get(k)!r}, run {mine[k]!r}" for k in differ)
        raise RunError(
            f"{store.path}: made with other preprocessing parameters than the run {self.path.name} "
            f"({detail}); preprocess the scans with the run's parameters (or give the DICOM series)"
        )

    def load_models(self, device: torch.device) -> list[torch.nn.Module]:
        models = []
        for fold in self.folds:
            checkpoint = rf.fold_dir(self.path, fold) / rf.BEST
            model, meta = load_fold_model(checkpoint, device)
            check_matches_run(meta, self.saved, checkpoint, self.path / rf.CONFIG)
            models.append(model)
        return models

    def batch_size(self) -> int:
        return int(self.config.eval_batch_size or 2 * (self.config.batch_size or 8))

    def precision(self, device: torch.device) -> str:
        return self.config.precision if device.type == "cuda" else "fp32"  # as oai eval
