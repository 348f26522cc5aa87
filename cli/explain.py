"""``oai explain``: where in the knee a run's fold ensemble finds progression (slice importance, saliency)."""

from __future__ import annotations

from pathlib import Path

import typer

from oaicli.common import chosen_knees, emit_json, err_console, guard_output, handles_errors, rich_progress, state


@handles_errors
def explain_command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="Run folder made by `oai train`."),
    out: Path = typer.Option(..., "--out", help="Folder for the explanations (CSV, NumPy maps, PNG)."),
    knees: list[str] | None = typer.Option(
        None, "--knees", help="Knees to explain: 9000001R,9000002L or a file of them (default: the run's test knees)."
    ),
    cohort: str | None = typer.Option(
        None, "--cohort", help="Knees of a saved cohort (`oai cohort ... --save NAME`) of --db, instead of --knees."
    ),
    store: Path | None = typer.Option(
        None, "--store", help="Store holding the knees (default: the run's; must have the run's parameters)."
    ),
    visit: int = typer.Option(0, "--visit", help="Visit code of the volumes (with --knees)."),
    steps: int = typer.Option(16, "--steps", min=1, help="Integrated-gradients steps (more: more exact, slower)."),
    top: int = typer.Option(3, "--top", min=0, help="Slices per knee drawn with their saliency overlay."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Knees per attribution pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    allow_incomplete: bool = typer.Option(
        False, "--allow-incomplete", help="Use a run whose training stopped early (each fold's best snapshot so far)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the per-knee table as JSON."),
) -> None:
    """Integrated gradients (every model) and attention rollout (slice transformers), per knee and on average."""
    from oaimodels.inference.explain import explain_run

    db = state(ctx).open_db(create=False) if cohort else state(ctx).open_db_if_configured() if knees else None
    try:
        guard_output(ctx, out, "--out", inputs=[store] if store is not None else [], database=db)
        chosen = chosen_knees(knees, cohort, db)
        with rich_progress(enabled=not json_out) as progress:
            table = explain_run(
                run_dir, out, knees=chosen, store=store, db=db, visit=visit, device=device,
                steps=steps, top=top, batch_size=batch_size, allow_incomplete=allow_incomplete,
                progress=progress,
            )  # fmt: skip
    finally:
        if db is not None:
            db.dispose()
    if json_out:
        emit_json(table.to_dict(orient="records"))
    else:
        err_console.print(
            f"{len(table)} knees explained: {out.resolve()} (explanations.csv, knees/, summary/)", highlight=False
        )
