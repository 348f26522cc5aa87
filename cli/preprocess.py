"""``oai preprocess``: DESS series of the database -> preprocessed volumes in a Zarr store."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.table import Table

from oaicli.common import emit_json, err_console, guard_output, handles_errors, out_console, rich_progress, state
from oaicohort.vocabulary import MRI_VIEWS

if TYPE_CHECKING:  # annotations only: the imaging modules are imported when the command runs
    from oaicohort.db import Database
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.runs.mri import PreprocessSummary
    from oaicohort.imaging.runs.xray import XrayPreprocessSummary
    from oaicohort.progress import ProgressCallback

Summary = TypeVar("Summary")

VIEW_CHOICES = ("sag", "cor", "ax", "all", "xray")


@handles_errors
def preprocess_command(
    ctx: typer.Context,
    store: Path = typer.Option(..., "--store", help="Zarr store directory (created if missing)."),
    view: str = typer.Option(
        "sag", "--view", help="sag, cor, ax or all (DESS MRI), or xray (knee ROIs of the bilateral PA radiographs)."
    ),
    visit: int = typer.Option(0, "--visit", help="OAI visit code (0 = baseline)."),
    preset: str | None = typer.Option(
        None, "--preset", help="Preprocessing preset: full or small (default: the store's, else full)."
    ),
    workers: int = typer.Option(
        min(4, os.cpu_count() or 1), "--workers", min=1, help="Worker processes reading series."
    ),
    strict: bool = typer.Option(False, "--strict", help="Stop with an error at the first failed series."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Process at most N series."),
    replace_missing_store: bool = typer.Option(
        False,
        "--replace-missing-store",
        help="Start a new, empty store where the database indexes a store that is gone (by default "
        "a missing store path is an error: an unmounted disk must not replace the real store).",
    ),
    xray_stored_scale: int | None = typer.Option(
        None,
        "--xray-stored-scale",
        min=1,
        help="--view xray: store each knee ROI at K times the model's input; training augments it at that size "
        "and then downscales, as the reference (2: 700 pixels for a 350 input). Default 1 (the store's, if it exists).",
    ),
    roi_file: Path | None = typer.Option(
        None,
        "--roi-file",
        help="--view xray: joint centres from a landmark tool instead of the built-in localiser; CSV with "
        "subject_id, side (R/L), row, col (pixels of the bilateral image, 0-based) and optional visit.",
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="K/N: write only shard K of N (1..N) of the series, while the other shards run at the same time "
        "(PostgreSQL only; see the cluster page).",
    ),
    launcher: str | None = typer.Option(
        None, "--launcher", help="slurm or local: submit --shards N jobs, one per shard (the [cluster] extra)."
    ),
    shards: int | None = typer.Option(None, "--shards", min=1, help="With --launcher: how many shards (jobs)."),
    partition: str | None = typer.Option(None, "--partition", help="With --launcher slurm: the SLURM partition."),
    account: str | None = typer.Option(None, "--account", help="With --launcher slurm: the SLURM account."),
    time: str | None = typer.Option(None, "--time", help="With --launcher: each job's time limit (H:MM:SS)."),
    array_parallelism: int | None = typer.Option(
        None, "--array-parallelism", min=1, help="With --launcher slurm: at most N shard jobs run at once (default 64)."
    ),
    wait: bool = typer.Option(False, "--wait", help="With --launcher: wait for the jobs and report failures."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Preprocess the indexed SAG_3D_DESS series (or, with --view xray, the bilateral PA
    radiographs) of a visit into a volume store (resumable)."""
    from oaicli.preprocess_shards import check_shard_options, launch_shards

    the_shard = check_shard_options(ctx, view=view)
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.runs.mri import run_preprocess

    if view not in VIEW_CHOICES:
        raise typer.BadParameter(f"{view!r}; choose from {', '.join(VIEW_CHOICES)}", param_hint="--view")
    views = MRI_VIEWS if view == "all" else (view,)
    try:
        params = PreprocessParams.preset_named(preset) if preset else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--preset") from None
    if xray_stored_scale is not None:
        if view != "xray":
            raise typer.BadParameter("only applies to --view xray", param_hint="--xray-stored-scale")
        params = _with_stored_scale(store, params, xray_stored_scale)
    if view == "xray":
        _preprocess_xray(ctx, store, params, visit, workers, strict, limit, roi_file, replace_missing_store, json_out)
        return
    if roi_file is not None:
        raise typer.BadParameter("only applies to --view xray", param_hint="--roi-file")

    if launcher is not None:
        launch_shards(ctx, params, views, json_out=json_out)
        return

    def run(db: Database, progress: ProgressCallback) -> PreprocessSummary:
        return run_preprocess(
            db, store, params, views=views, visit=visit, workers=workers, strict=strict, limit=limit,
            progress=progress, replace_missing_store=replace_missing_store, shard=the_shard,
        )  # fmt: skip

    summary = _run_on_database(ctx, run)
    if json_out:
        emit_json(summary.to_dict())
        return
    _print_summary(summary, f"{', '.join(summary.views)}, visit {summary.visit}", "done", "Failed series")


def _with_stored_scale(store: Path, params: PreprocessParams | None, scale: int) -> PreprocessParams:
    """``params`` (else the existing store's, else the full preset) with the X-ray ROI stored at
    ``scale`` times the model's input; a store made at another scale then refuses it, naming both."""
    import dataclasses

    from oaicohort.imaging.store.identity import params_at

    return dataclasses.replace(params or params_at(store), xray_stored_scale=scale)


def _preprocess_xray(
    ctx: typer.Context,
    store: Path,
    params: PreprocessParams | None,
    visit: int,
    workers: int,
    strict: bool,
    limit: int | None,
    roi_file: Path | None,
    replace_missing_store: bool,
    json_out: bool,
) -> None:
    from oaicohort.imaging.runs.xray import run_xray_preprocess

    def run(db: Database, progress: ProgressCallback) -> XrayPreprocessSummary:
        return run_xray_preprocess(
            db, store, params, visit=visit, roi_file=roi_file, workers=workers, strict=strict,
            limit=limit, progress=progress, replace_missing_store=replace_missing_store,
        )  # fmt: skip

    summary = _run_on_database(ctx, run)
    if json_out:
        emit_json(summary.to_dict())
        return
    scope = f"xray, visit {summary.visit}, localiser {summary.localiser}"
    notes = [f"QC montage: {montage}" for montage in summary.qc_montages]
    _print_summary(summary, scope, "knees done", "Failed knees", notes)


def _run_on_database(ctx: typer.Context, run: Callable[[Database, ProgressCallback], Summary]) -> Summary:
    """``run`` on the command's database with a progress display; the database is closed after."""
    from oaicohort.outputs import STORE

    db = state(ctx).open_db()
    try:
        guard_output(ctx, ctx.params["store"], "--store", database=db, allow=STORE)
        with rich_progress(enabled=True) as progress:
            return run(db, progress)
    finally:
        db.dispose()


def _print_summary(
    summary: PreprocessSummary | XrayPreprocessSummary,
    scope: str,
    done: str,
    failures_title: str,
    notes: Sequence[str] = (),
) -> None:
    """A run's counts in one line, its notes, then its failures as a table on stderr."""
    out_console.print(
        f"{summary.store_path} ({scope}): "
        f"{summary.done} {done}, {summary.skipped} already done, {summary.failed} failed"
        + (f", {summary.remaining} left by --limit" if summary.remaining else "")
        + f" in {summary.seconds:.1f} s",
        highlight=False,
    )
    for note in notes:
        out_console.print(note, highlight=False)
    if summary.failures:
        table = Table("subject", "side", "reason", title=failures_title, title_justify="left")
        for failure in summary.failures:
            table.add_row(str(failure["subject_id"]), failure["side"], failure["reason"])
        err_console.print(table)
