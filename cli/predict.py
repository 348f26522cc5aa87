"""``oai predict``: apply a trained run's fold ensemble to DICOM series, a release or a store."""

from __future__ import annotations

from pathlib import Path

import typer

from oaicli.common import chosen_knees, emit_json, err_console, guard_output, handles_errors, rich_progress, state


@handles_errors
def predict_command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="Run folder made by `oai train`."),
    inputs: list[Path] = typer.Argument(
        ..., help="DICOM series folders, an OAI release (with contents.csv) or a volume store (any mix)."
    ),
    out: str = typer.Option("predictions.csv", "--out", help="CSV to write; '-' writes it to stdout."),
    knees: list[str] | None = typer.Option(
        None, "--knees", help="Knees of a release or store: 9000001R,9000002L or a file of them (default all)."
    ),
    cohort: str | None = typer.Option(
        None, "--cohort", help="Knees of a saved cohort (`oai cohort ... --save NAME`) of --db, instead of --knees."
    ),
    visit: int = typer.Option(0, "--visit", help="Visit code of the release's / store's series to use."),
    side: str | None = typer.Option(
        None, "--side", help="R or L: an MRI series whose description does not name it; a radiograph's one knee."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    allow_incomplete: bool = typer.Option(
        False, "--allow-incomplete", help="Use a run whose training stopped early (each fold's best snapshot so far)."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Knees per forward pass (default: the run's evaluation batch)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary (only JSON on stdout)."),
) -> None:
    """Per-knee class probabilities and progression score, preprocessed exactly as the run's store."""
    from oaimodels.inference.predict import predict, write_predictions

    if side is not None and side.upper() not in ("R", "L"):
        raise typer.BadParameter(f"{side!r}: expected R or L", param_hint="--side")
    if json_out and out == "-":
        raise typer.BadParameter("--json and --out - both write to stdout; choose one", param_hint="--out")
    db = state(ctx).open_db(create=False) if cohort else state(ctx).open_db_if_configured()
    try:
        if out != "-":
            guard_output(ctx, out, "--out", inputs=inputs, database=db)
        chosen = chosen_knees(knees, cohort, db)
        with rich_progress(enabled=not json_out) as progress:
            frame = predict(
                run_dir, inputs, knees=chosen, visit=visit, side=side.upper() if side else None,
                db=db, device=device, batch_size=batch_size, allow_incomplete=allow_incomplete,
                progress=progress,
            )  # fmt: skip
    finally:
        if db is not None:
            db.dispose()
    write_predictions(frame, out)
    summary = {
        "out": out if out == "-" else str(Path(out).resolve()),
        "knees": int(len(frame)),
        "predicted": {str(k): int(v) for k, v in frame["predicted"].value_counts().items()},
        "mean_score": float(frame["score"].mean()),
        "run_hash": str(frame["run_hash"].iloc[0]),
    }
    if json_out:
        emit_json(summary)
    elif out != "-":
        err_console.print(
            f"{summary['knees']} knees scored (run {summary['run_hash']}): {summary['out']}", highlight=False
        )
