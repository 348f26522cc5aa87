"""Experiment tracking of training runs: TensorBoard event files and MLflow, and run titles.

- **TensorBoard** (on by default, ``TrainConfig.tensorboard``): every fold writes event files
  into its own folder, next to ``log.jsonl`` (``tensorboard --logdir RUN_DIR`` shows one curve
  per fold): ``loss/train``, ``loss/val``, ``val/ap``, ``val/roc_auc``, ``lr`` and
  ``throughput/volumes_per_s``, at step = epoch (0-based, as in ``log.jsonl``). A resumed fold
  purges events from the epoch it resumes at, so a kill never leaves doubled points. Needs the
  ``tensorboard`` package (extra ``tracking``); without it training runs as before and says
  once that the event files are off and how to turn them on.
- **MLflow** (``TrainConfig.track = "mlflow"``, extra ``mlflow``): one MLflow run per training
  run, in experiment ``TrainConfig.experiment`` at ``tracking_uri`` (default: a file store
  ``./mlruns``). Params are the config's recipe values, tags the run's ``tags`` plus model,
  view and init; metrics are ``fold{k}/<name>`` per epoch and ``fold{k}/best_val_ap`` at the
  end of a fold. The MLflow run's id is kept in ``RUN_DIR/mlflow.json``, so a resumed run
  continues the same MLflow run; it is marked FINISHED when every fold is done.

Only rank 0 tracks. :func:`describe_run` gives the title plots and reports use.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from oaicohort.errors import OAIError
from oaimodels import run_folder as rf

log = logging.getLogger(__name__)

MLFLOW_RUN = rf.MLFLOW_RUN
# log.jsonl record key -> TensorBoard scalar tag
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_ap": "val/ap",
    "val_roc_auc": "val/roc_auc",
    "lr": "lr",
    "volumes_per_s": "throughput/volumes_per_s",
}
_said_tensorboard_off = False


def describe_run(
    model: str,
    view: str | None,
    init: str,
    *,
    test_site: str | None = None,
    n: int | None = None,
    name: str | None = None,
) -> str:
    """``name`` if given, else e.g. ``3d_shufflenet sag, scratch; test site D, n=120``."""
    if name:
        head = name
    else:
        head = f"{model}{' ' + view if view else ''}, {init}"
    tail: list[str] = []
    if test_site:
        tail.append(f"test site {test_site}")
    if n is not None:
        tail.append(f"n={n}")
    return head + (f"; {', '.join(tail)}" if tail else "")


def evaluation_titles(config: Any, test: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation's plots and reports call the run: model, view, init, test site and n
    (or the run's ``--name``), plus its tags; ``test`` is the test knees (a ``site`` column if
    the run recorded one, else the split's ``test_sites``)."""
    sites = sorted(test["site"].dropna().astype(str).unique()) if "site" in test.columns else []
    if not sites:
        split = (metrics.get("labels") or {}).get("split") or {}
        sites = [str(s) for s in (split.get("params") or {}).get("test_sites", [])]
    site = ",".join(sites) or None
    title = describe_run(
        config.model, config.view, config.init, test_site=site, n=metrics.get("n_knees"), name=config.name
    )
    return {"title": title, "test_site": site, "run_name": config.name, "tags": dict(config.tags or {})}


def tags_text(tags: dict[str, str] | None) -> str:
    """`` (tags: a=b, c)`` for a report line, or nothing."""
    if not tags:
        return ""
    return " (tags: " + ", ".join(f"{k}={v}" if v else k for k, v in tags.items()) + ")"


@dataclass(frozen=True)
class TrackingOptions:
    """What the trackers of a run need, taken from its config once (:func:`tracking_options`)."""

    run_dir: Path
    tensorboard: bool
    mlflow: bool
    tracking_uri: str | None
    experiment: str
    title: str
    tags: dict[str, str]  # the run's tags, with its model, view, init and folder
    params: dict[str, str]  # the recipe values (MLflow params)
    config_text: str  # the config as JSON (TensorBoard's text)


def tracking_options(config: Any, run_dir: Path) -> TrackingOptions:
    """The tracking options of a resolved :class:`~oaimodels.training.config.TrainConfig`."""
    c = config
    tags = {
        **{str(k): str(v) for k, v in (c.tags or {}).items()},
        "model": c.model,
        "view": str(c.view),
        "init": c.init,
        "oai.run_dir": str(run_dir),
    }
    return TrackingOptions(
        run_dir=Path(run_dir),
        tensorboard=bool(c.tensorboard),
        mlflow=c.track == "mlflow",
        tracking_uri=c.tracking_uri,
        experiment=c.experiment,
        title=c.name or describe_run(c.model, c.view, c.init),
        tags=tags,
        params=mlflow_params(c.essential()),
        config_text="```\n" + json.dumps(c.to_dict(), indent=2) + "\n```",
    )


class _Sink(Protocol):
    def epoch(self, record: dict[str, Any]) -> None: ...
    def finish(self, summary: dict[str, Any], run_complete: bool) -> None: ...


@dataclass
class FoldTracker:
    """The trackers of one fold (none on ranks other than 0, or with tracking off)."""

    sinks: list[_Sink] = field(default_factory=list)

    def epoch(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.epoch(record)

    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        if not self.sinks:
            return
        complete = rf.is_run_complete(run_dir)
        for sink in self.sinks:
            sink.finish(summary, complete)


def open_fold_tracker(options: TrackingOptions, fold: int, start_epoch: int, *, main: bool) -> FoldTracker:
    """The trackers ``options`` asks for, for ``fold`` of its run."""
    if not main:
        return FoldTracker()
    sinks: list[_Sink] = []
    if options.tensorboard:
        writer_class = tensorboard_writer_class()
        if writer_class is not None:
            sinks.append(
                _TensorBoard(writer_class, rf.fold_dir(options.run_dir, fold), start_epoch, options.config_text)
            )
    if options.mlflow:
        sinks.append(_MLflow(options, fold))
    return FoldTracker(sinks)


# --------------------------------------------------------------------------- TensorBoard


def tensorboard_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or None (said once) when tensorboard is missing."""
    global _said_tensorboard_off
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _said_tensorboard_off:
            log.warning(
                "TensorBoard logs are off: the tensorboard package is not installed "
                "(pip install 'oai-toolkit[tracking]' or pip install tensorboard turns them on; "
                "--no-tensorboard silences this)"
            )
            _said_tensorboard_off = True
        return None
    return SummaryWriter


class _TensorBoard:
    def __init__(self, writer_class: Any, fold_path: Path, start_epoch: int, config_text: str) -> None:
        self.writer = writer_class(log_dir=str(fold_path), purge_step=start_epoch if start_epoch > 0 else None)
        if start_epoch == 0:
            self.writer.add_text("config", config_text, 0)

    def epoch(self, record: dict[str, Any]) -> None:
        for key, tag in SCALARS.items():
            value = _finite(record.get(key))
            if value is not None:
                self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def finish(self, summary: dict[str, Any], run_complete: bool) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- MLflow


def resolve_tracking_uri(uri: str | None) -> str:
    """A tracking URI, with plain paths (and the default ``./mlruns``) made absolute ``file:`` URIs."""
    if uri is None:
        return (Path.cwd() / "mlruns").resolve().as_uri()
    parsed = urlparse(uri)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def _mlflow_client(uri: str) -> Any:
    if uri.startswith("file:"):
        # MLflow 3 refuses new file stores unless asked; a local file store is what --track
        # mlflow offers by default (no server, no database), so ask for it in this process.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise OAIError(
            "--track mlflow needs the mlflow package: pip install 'oai-toolkit[mlflow]' (or mlflow-skinny)"
        ) from None
    return MlflowClient(tracking_uri=uri)


def mlflow_params(essential: dict[str, Any]) -> dict[str, str]:
    """A config's recipe values (``TrainConfig.essential()``) as MLflow params (augmentations as ``augment.<key>``)."""
    out: dict[str, str] = {}
    for key, value in essential.items():
        if key == "augment":
            out.update({f"augment.{k}": str(v) for k, v in value.items()})
        elif key not in ("store", "out"):
            out[key] = str(value)
    return out


class _MLflow:
    def __init__(self, options: TrackingOptions, fold: int) -> None:
        self.fold = fold
        uri = resolve_tracking_uri(options.tracking_uri)
        self.client = _mlflow_client(uri)
        record_path = options.run_dir / MLFLOW_RUN
        saved = rf.read_json(record_path) if record_path.is_file() else {}
        if saved.get("tracking_uri") == uri and saved.get("run_id"):
            self.run_id = saved["run_id"]
            return
        experiment = self.client.get_experiment_by_name(options.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(options.experiment)
        run = self.client.create_run(experiment_id, run_name=options.title, tags=dict(options.tags))
        self.run_id = run.info.run_id
        for key, value in options.params.items():
            self.client.log_param(self.run_id, key, value)
        rf.write_json(record_path, {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id})

    def epoch(self, record: dict[str, Any]) -> None:
        for key in SCALARS:
            value = _finite(record.get(key))
            if value is not None:
                self.client.log_metric(self.run_id, f"fold{self.fold}/{key}", value, step=int(record["epoch"]))

    def finish(self, summary: dict[str, Any], run_complete: bool) -> None:
        for key in ("best_val_ap", "best_val_roc_auc", "best_epoch"):
            value = _finite(summary.get(key))
            if value is not None:
                self.client.log_metric(self.run_id, f"fold{self.fold}/{key}", value)
        if run_complete:
            self.client.set_terminated(self.run_id, "FINISHED")


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
