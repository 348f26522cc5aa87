"""``oai train``: train a registered model (or every MRI model) with the paper's recipe."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from oaicli.common import emit_json, err_console, handles_errors, out_console, rich_progress, state
from oaicli.launch import LAUNCH_PARAMS, launch, launcher_options
from oaicohort.vocabulary import DEFAULT_DEFINITION, MRI_VIEWS


def parse_folds(text: str) -> list[int] | None:
    """``all`` -> None (every fold of the split); ``0,2`` -> [0, 2]; ``0-4`` -> [0, 1, 2, 3, 4]."""
    if text.strip().lower() == "all":
        return None
    try:
        folds = sorted({k for part in text.split(",") if part.strip() for k in _fold_range(part)})
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected 'all' or fold numbers like 0,2", param_hint="--folds") from None
    if not folds or folds[0] < 0:
        raise typer.BadParameter(f"{text!r}: fold numbers are 0 or more", param_hint="--folds")
    return folds


def _fold_range(part: str) -> range:
    first, dash, last = part.strip().partition("-")
    return range(int(first), int(last) + 1) if dash else range(int(first), int(first) + 1)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    return (
        f"fold {record['fold']} epoch {record['epoch'] + 1}/{epochs}  loss {_fmt(record['train_loss'], '.4f')}  "
        f"val loss {_fmt(record['val_loss'], '.4f')}  AP {_fmt(record['val_ap'], '.3f')}  "
        f"AUC {_fmt(record['val_roc_auc'], '.3f')}  lr {record['lr']:.2e}  "
        f"{_fmt(record['volumes_per_s'], '.1f')} vol/s  {record['seconds']:.1f} s"
        + ("  *best" if record.get("best_epoch") == record["epoch"] else "")
    )


# Recipe flags default to None ("not given"): the values then come from the --config file or
# TrainConfig/AugmentParams (the help repeats those defaults; a test checks they agree), and the
# CLI does not import torch to show its help.
# CLI parameter -> TrainConfig key (augment.<key> for augmentations); the rest map to themselves
_KEYS = {
    "compile_model": "compile", "random_crop": "augment.random_crop", "rotate_p": "augment.rotate_p",
    "max_rotation": "augment.max_rotation_deg", "gamma_p": "augment.gamma_p", "gamma_low": "augment.gamma_low",
    "gamma_high": "augment.gamma_high", "tag": "tags",
}  # fmt: skip
_NOT_CONFIG = {"ctx", "config_file", "resume", "json_out", "no_augment", "dry_run", *LAUNCH_PARAMS}


def parse_tags(values: list[str]) -> dict[str, str]:
    """``--tag key=value`` (or a bare ``--tag label``, value empty) into a dict."""
    tags = {}
    for text in values:
        key, _, value = text.partition("=")
        if not key.strip():
            raise typer.BadParameter(f"{text!r}: expected KEY=VALUE or a label", param_hint="--tag")
        tags[key.strip()] = value.strip()
    return tags


def config_layers(ctx: typer.Context, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CLI's defaults and the flags given on the command line, as TrainConfig layers."""
    defaults: dict[str, Any] = {}
    given: dict[str, Any] = {}
    for name, value in params.items():
        if name in _NOT_CONFIG:
            continue
        key = _KEYS.get(name, name)
        if name == "folds":
            value = parse_folds(value)
        elif name == "tag":
            value = parse_tags(value)
        elif name in ("store", "out") and value is not None:
            value = str(value)
        # by name: typer may bring its own copy of click's ParameterSource enum
        source = getattr(ctx.get_parameter_source(name), "name", None)
        layer = given if source in ("COMMANDLINE", "ENVIRONMENT") else defaults
        if value is None and layer is defaults:
            continue
        if key.startswith("augment."):
            layer.setdefault("augment", {})[key.removeprefix("augment.")] = value
        else:
            layer[key] = value
    if params.get("no_augment"):  # every augmentation off, before the single ones given
        from oaimodels.data import AugmentParams

        given["augment"] = {**dataclasses.asdict(AugmentParams.none()), **given.get("augment", {})}
    return defaults, given


def _has_launcher_table(path: Path) -> bool:
    from oaimodels.training.launcher import read_launcher_table

    return bool(read_launcher_table(path).get("launcher"))


@handles_errors
def train_command(
    ctx: typer.Context,
    config_file: Path | None = typer.Option(
        None, "--config", help="A TOML or JSON config file (a run's config.json works); flags override it."
    ),
    store: Path | None = typer.Option(None, "--store", help="Volume store made by `oai preprocess`."),
    model: str | None = typer.Option(None, "--model", help="Registered model name (see `oai models`), or 'all'."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (with --model all: a folder of run folders)."),
    view: str | None = typer.Option(
        None, "--view", help="sag, cor or ax, for 2d_trf (default sag; all three with --model all)."
    ),
    folds: str = typer.Option("all", "--folds", help="'all' or fold numbers, e.g. 0,2."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs per fold (default 100)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Global batch size (default: the model's, as in the paper)."
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Adam learning rate after warm-up (default 1e-4); xr_resnext50's recipe: 1e-3."
    ),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", min=0.0, help="Adam weight decay (default 1e-4)."
    ),
    warmup_epochs: int | None = typer.Option(
        None,
        "--warmup-epochs",
        min=0,
        help="Epochs of linear warm-up, 0 for none (default 5); xr_resnext50's recipe: 5 too.",
    ),
    warmup_start_lr: float | None = typer.Option(
        None,
        "--warmup-start-lr",
        help="Learning rate of the first warm-up epoch (default 1e-5); xr_resnext50's recipe: 1e-4.",
    ),
    focal_gamma: float | None = typer.Option(
        None, "--focal-gamma", min=0.0, help="Focal-loss gamma, 0 for cross-entropy (default 2.0)."
    ),
    sampler: str | None = typer.Option(
        None, "--sampler", help="weighted (1/class frequency, the paper's; default) or shuffle (each knee once)."
    ),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn every augmentation off."),
    random_crop: bool | None = typer.Option(
        None, "--random-crop/--no-random-crop", help="Random (not centre) training crops (default on)."
    ),
    rotate_p: float | None = typer.Option(
        None, "--rotate-p", help="Probability of an in-plane rotation (default 0.5)."
    ),
    max_rotation: float | None = typer.Option(
        None, "--max-rotation", help="Largest rotation angle in degrees (default 15)."
    ),
    gamma_p: float | None = typer.Option(
        None, "--gamma-p", help="Probability of a gamma (contrast) change (default 0.5)."
    ),
    gamma_low: float | None = typer.Option(None, "--gamma-low", help="Smallest gamma drawn (default 0.5)."),
    gamma_high: float | None = typer.Option(None, "--gamma-high", help="Largest gamma drawn (default 2.0)."),
    init: str = typer.Option(
        "auto", "--init", help="auto, imagenet, scratch or a state-dict FILE (auto: imagenet for 2D encoders)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="bf16 or fp32 (auto: bf16 on CUDA, fp32 on CPU)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of weight initialisation, sampling and augmentations (each fold derives its own)."
    ),
    split: int | None = typer.Option(None, "--split", help="Split id (default: the newest of the definition)."),
    definition: str = typer.Option(DEFAULT_DEFINITION, "--definition", help="Label definition name."),
    loader: str = typer.Option("auto", "--loader", help="resident (whole store in device memory), workers, or auto."),
    workers: int = typer.Option(
        min(4, os.cpu_count() or 1), "--workers", min=0, help="DataLoader processes (loader workers)."
    ),
    limit_train: int | None = typer.Option(
        None, "--limit-train", min=2, help="At most N training knees per fold (quick runs)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="torch CPU threads per process (default: torch's)."
    ),
    deterministic: bool = typer.Option(
        False, "--deterministic", help="Deterministic algorithms (bit-exact resume on CPU)."
    ),
    name: str | None = typer.Option(None, "--name", help="Title of the run in reports and trackers."),
    tag: list[str] = typer.Option([], "--tag", help="KEY=VALUE (repeatable), recorded in config.json and trackers."),
    tensorboard: bool = typer.Option(
        True, "--tensorboard/--no-tensorboard", help="TensorBoard event files per fold (needs tensorboard)."
    ),
    track: str | None = typer.Option(None, "--track", help="mlflow: also log to MLflow (needs mlflow)."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow tracking URI or folder (default: a file store ./mlruns)."
    ),
    experiment: str | None = typer.Option(None, "--experiment", help="MLflow experiment name (default oai)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run(s) in --out from their last checkpoints."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (one per GPU) for DistributedDataParallel."),
    launcher: str | None = typer.Option(
        None, "--launcher", help="slurm or local: one job per (model, fold) through submitit (the [cluster] extra)."
    ),
    partition: str | None = typer.Option(None, "--partition", help="SLURM partition of the jobs."),
    account: str | None = typer.Option(None, "--account", help="SLURM account of the jobs."),
    gpus_per_job: int | None = typer.Option(None, "--gpus-per-job", min=0, help="GPUs per job (default 0)."),
    cpus_per_job: int | None = typer.Option(None, "--cpus-per-job", min=1, help="CPUs per job."),
    time: str | None = typer.Option(None, "--time", help="Time limit per job: minutes or H:MM:SS (default 24:00:00)."),
    array_parallelism: int | None = typer.Option(
        None, "--array-parallelism", min=1, help="At most N jobs of the array run at once (default 64)."
    ),
    wait: bool = typer.Option(False, "--wait", help="With --launcher: wait for every job to end."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved recipe, each value with its source, and train nothing."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary (only JSON on stdout)."),
) -> None:
    """Train with the paper's recipe (focal loss, weighted sampling, Adam + warm-up, best-AP snapshot per fold).

    Every recipe value has a flag; --config reads them from a TOML or JSON file, and flags override it.
    --dry-run shows where each value comes from (the reference's file and line, or ours and why).
    """
    from oaimodels.run_folder import SUMMARY, fold_dirs, read_json
    from oaimodels.training.config_file import merge_config, read_config_file
    from oaimodels.training.run import train_run
    from oaimodels.training.study import train_all

    if view is not None and view not in MRI_VIEWS:
        raise typer.BadParameter(f"{view!r}; choose from sag, cor, ax", param_hint="--view")
    defaults, given = config_layers(ctx, dict(ctx.params))
    file_values = read_config_file(config_file) if config_file is not None else {}
    if file_values.get("view") not in (None, *MRI_VIEWS):
        raise typer.BadParameter(
            f"{file_values['view']!r} in {config_file}; choose from sag, cor, ax", param_hint="view"
        )
    config = merge_config(defaults, file_values, given)
    if dry_run:
        _dry_run(config, json_out)
        return
    train_everything = config.model == "all"
    if train_everything:
        config.model = "2d_trf"
    db = state(ctx).open_db(create=False)
    if launcher is not None or (config_file is not None and _has_launcher_table(config_file)):
        options = launcher_options(dict(ctx.params), config_file)
        try:
            launch(config, db, options, study=train_everything, resume=resume, wait=wait, json_out=json_out)
        finally:
            db.dispose()
        return

    def on_epoch(record: dict[str, Any]) -> None:
        if not json_out:
            err_console.print(_epoch_line(record, config.epochs), highlight=False)

    try:
        with rich_progress(enabled=not json_out, step_tasks=("fold *",)) as progress:  # a line per epoch
            if train_everything:
                run_dirs = train_all(config, db, progress, resume=resume, on_epoch=on_epoch)
            else:
                run_dirs = [train_run(config, db, progress, resume=resume, on_epoch=on_epoch)]
    finally:
        db.dispose()
    summary: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        folds_done = [read_json(path / SUMMARY) for path in fold_dirs(run_dir).values() if (path / SUMMARY).is_file()]
        summary.append({"run_dir": str(run_dir), "folds": folds_done})
    if json_out:
        emit_json({"runs": summary})
        return
    for run in summary:
        best = ", ".join(
            f"fold {f['fold']}: AP {_fmt(f['best_val_ap'], '.3f')} (epoch {f['best_epoch'] + 1})"
            for f in run["folds"]
            if f.get("best_epoch") is not None
        )
        err_console.print(f"[bold]{run['run_dir']}[/]: {best}", highlight=False)
    err_console.print(f"evaluate with: oai eval {' '.join(r['run_dir'] for r in summary)}", highlight=False)


def _dry_run(config: Any, json_out: bool) -> None:
    from oaimodels.training.recipe_sources import describe_recipe

    if config.model == "all":
        raise typer.BadParameter("--dry-run shows one model's recipe: give --model NAME", param_hint="--dry-run")
    described = describe_recipe(config)
    if json_out:
        emit_json(described)
        return
    table = Table("option", "value", "source", title=f"Recipe of {config.model} (resolved)", title_justify="left")
    for line in described["recipe_sources"]:
        table.add_row(line["name"], str(line["value"]), line["source"])
    out_console.print(table)
