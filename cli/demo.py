"""``oai demo``: the whole toolkit end to end on a small synthetic release."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from oaicli.common import emit_json, err_console, guard_output, handles_errors, out_console, rich_progress
from oaicohort.vocabulary import DEFAULT_DEFINITION


def _parse_folds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected fold numbers like 0,1 - got {text!r}") from None


@handles_errors
def demo_command(
    ctx: typer.Context,
    out: Path = typer.Option(Path("oai-demo"), "--out", help="Folder for the release, database, store and run."),
    model: str = typer.Option("3d_shufflenet", "--model", help="Registered model to train (see `oai models`)."),
    subjects: int | None = typer.Option(
        None,
        "--subjects",
        min=20,
        help="Synthetic subjects (the OAI has 4,796). Default: 500 for the MRI models, 1,500 for xr_resnext50.",
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, help="Training epochs per fold. Default: 4 for the MRI models, 12 for xr_resnext50."
    ),
    folds: str = typer.Option("0,1", "--folds", help="Cross-validation folds to train (of 5)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data, split and training."),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes for image synthesis and preprocessing."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    threads: int = typer.Option(0, "--threads", min=0, help="Torch CPU threads (0: torch's default)."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete OUT first instead of resuming in it."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
) -> None:
    """Synthesise -> ingest -> preprocess -> label -> split -> train -> evaluate, then report."""
    guard_output(ctx, out, "--out")  # --fresh deletes OUT: never a store, a run, a release or a database
    from oaicli.label import cohort_table
    from oaicohort.cohort.labels import cohort_summary
    from oaicohort.db import open_database
    from oaimodels.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=out,
        model=model,
        subjects=subjects,
        epochs=epochs,
        folds=_parse_folds(folds),
        seed=seed,
        workers=workers,
        device=device,
        threads=threads or None,
        fresh=fresh,
    )
    with rich_progress(not json_out, step_tasks=("demo", "fold *")) as progress:
        result = run_demo(config, progress=progress)
    if json_out:
        emit_json(result.to_dict())
        return
    db = open_database(result.out / "oai.sqlite")
    try:
        out_console.print(cohort_table(cohort_summary(db, DEFAULT_DEFINITION)))
    finally:
        db.dispose()
    m = result.metrics
    table = Table(title=f"Held-out site D: {model}, {result.subjects} subjects, folds {folds}, {result.epochs} epochs")
    for column in ("AP", "ROC AUC", "balanced acc.", "prevalence (chance AP)", "knees"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{m['ap']:.2f} ± {m['ap_sd']:.2f}",
        f"{m['roc_auc']:.2f} ± {m['roc_auc_sd']:.2f}",
        f"{m['balanced_accuracy']:.2f}",
        f"{m['prevalence']:.2f}",
        str(m["n_knees"]),
    )
    out_console.print(table)
    total = sum(result.seconds.values())
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    reused = "; reused the synthetic release" if result.reused_release else ""
    err_console.print(
        f"done in {total:.0f} s ({steps}{reused}); {result.out} holds {result.disk_bytes / 1e6:,.0f} MB", soft_wrap=True
    )
    out_console.print(f"report: {result.report}")
