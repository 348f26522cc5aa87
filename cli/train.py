"""``oai train``: train a registered model (or every MRI model) with the paper's recipe."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import typer

from oaicli.common import emit_json, err_console, handles_errors, rich_progress, state
from oaicohort.vocabulary import DEFAULT_DEFINITION, MRI_VIEWS


def parse_folds(text: str) -> list[int] | None:
    """``all`` -> None (every fold of the split); ``0,2`` -> [0, 2]."""
    if text.strip().lower() == "all":
        return None
    try:
        folds = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected 'all' or fold numbers like 0,2", param_hint="--folds") from None
    if not folds or folds[0] < 0:
        raise typer.BadParameter(f"{text!r}: fold numbers are 0 or more", param_hint="--folds")
    return folds


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


@handles_errors
def train_command(
    ctx: typer.Context,
    store: Path = typer.Option(..., "--store", help="Volume store made by `oai preprocess`."),
    model: str = typer.Option(..., "--model", help="Registered model name (see `oai models`), or 'all'."),
    out: Path = typer.Option(..., "--out", help="Run folder (with --model all: a folder of run folders)."),
    view: str | None = typer.Option(
        None, "--view", help="sag, cor or ax, for 2d_trf (default sag; all three with --model all)."
    ),
    folds: str = typer.Option("all", "--folds", help="'all' or fold numbers, e.g. 0,2."),
    epochs: int = typer.Option(100, "--epochs", min=1),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Global batch size (default: the model's, as in the paper)."
    ),
    init: str = typer.Option(
        "auto", "--init", help="auto, imagenet, scratch or a state-dict FILE (auto: imagenet for 2D encoders)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="bf16 or fp32 (auto: bf16 on CUDA, fp32 on CPU)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    seed: int = typer.Option(0, "--seed"),
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
    resume: bool = typer.Option(False, "--resume", help="Continue the run(s) in --out from their last checkpoints."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (one per GPU) for DistributedDataParallel."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary (only JSON on stdout)."),
) -> None:
    """Train with the paper's recipe (focal loss, weighted sampling, Adam + warm-up, best-AP snapshot per fold)."""
    from oaimodels.run_folder import SUMMARY, fold_dirs, read_json
    from oaimodels.training import TrainConfig, train_all, train_run

    if view is not None and view not in MRI_VIEWS:
        raise typer.BadParameter(f"{view!r}; choose from sag, cor, ax", param_hint="--view")
    config = TrainConfig(
        store=str(store), out=str(out), model="2d_trf" if model == "all" else model, view=view,
        folds=parse_folds(folds), epochs=epochs, batch_size=batch_size, init=init, device=device,
        precision=precision, compile=compile_model, seed=seed, definition=definition, split=split,
        loader=loader, workers=workers, limit_train=limit_train, deterministic=deterministic, nproc=nproc,
        threads=threads,
    )  # fmt: skip
    db = state(ctx).open_db(create=False)

    def on_epoch(record: dict[str, Any]) -> None:
        if not json_out:
            err_console.print(_epoch_line(record, epochs), highlight=False)

    try:
        with rich_progress(enabled=not json_out) as progress:
            if model == "all":
                run_dirs = train_all(config, db, progress, resume=resume, on_epoch=on_epoch)
            else:
                run_dirs = [train_run(config, db, progress, resume=resume, on_epoch=on_epoch)]
    finally:
        db.dispose()
    summary = []
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
