"""``oai eval``: fold-ensemble evaluation of run folders on the held-out site, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from oaicli.common import (
    emit_json,
    err_console,
    guard_output,
    handles_errors,
    out_console,
    rich_progress,
    state,
)


def _pm(m: dict[str, Any], key: str) -> str:
    value, sd = m.get(key), m.get(f"{key}_sd")
    if value is None or value != value:
        return "n/a"
    return f"{value:.3f} ± {sd:.3f}" if sd is not None and sd == sd else f"{value:.3f}"


@handles_errors
def eval_command(
    ctx: typer.Context,
    run_dirs: list[Path] = typer.Argument(..., help="Run folder(s) made by `oai train`; several are compared."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default RUN_DIR/eval; comparison/ beside the first run)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    resamples: int = typer.Option(1000, "--resamples", min=10, help="Bootstrap resamples (of subjects)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Time single-sample inference."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
    allow_different_test_knees: bool = typer.Option(
        False,
        "--allow-different-test-knees",
        help="Compare runs tested on different knees anyway; the report flags it (default: refused).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON (only JSON on stdout)."),
) -> None:
    """Apply every fold model to the test site, average probabilities once, score with bootstrap CIs."""
    from oaimodels.evaluation.held_out import evaluate_runs

    db = state(ctx).open_db_if_configured()
    try:
        if out is not None:
            guard_output(ctx, out, "--out", database=db)
        with rich_progress(enabled=not json_out) as progress:
            result = evaluate_runs(
                run_dirs, db, out, device=device, n_resamples=resamples, seed=seed, latency=latency,
                threads=threads, progress=progress, allow_different_test_knees=allow_different_test_knees,
            )  # fmt: skip
    finally:
        if db is not None:
            db.dispose()
    if json_out:
        emit_json(result)
        return
    groups = result.get("groups") or [{"runs": [m["name"] for m in result["runs"]], "described": ""}]
    for group in groups:
        runs = [m for m in result["runs"] if m["name"] in group["runs"]]
        title = "Test site (± bootstrap SD over subjects)"
        if len(groups) > 1:  # runs tested on other knees are never ranked in one table
            title = f"{group['described']} (± bootstrap SD over subjects)"
        out_console.print(_table(runs, title))
    if len(groups) > 1:
        err_console.print(
            f"[yellow]warning:[/] the runs were not tested on the same knees: {len(groups)} separate tables",
            highlight=False,
        )
    for test_set in result.get("test_sets") or []:
        if not test_set["same"]:  # --allow-different-test-knees
            err_console.print(
                f"[bold red]WARNING:[/] runs {', '.join(r['name'] for r in test_set['runs'])} were tested on different "
                f"knees ({test_set['shared_knees']} common to all); their rows are not comparable: see the report",
                highlight=False,
            )
    for m in result["runs"]:
        if m.get("incomplete_folds"):
            err_console.print(
                f"[yellow]warning:[/] {m['name']}: fold(s) {m['incomplete_folds']} unfinished (best snapshot so far)",
                highlight=False,
            )
    err_console.print(f"report: {result['report']}", highlight=False)


def _table(runs: list[dict[str, Any]], title: str) -> Table:
    table = Table(
        "run", "AP", "ROC AUC", "bal. acc.", "GMACs", "params M", "ms", "knees", title=title, title_justify="left"
    )
    for m in runs:
        eff = m.get("efficiency") or {}
        table.add_row(
            f"{m['name']}\n[dim]{m['model']} {','.join(m['views'])} {m['init']}[/]",
            _pm(m, "ap"), _pm(m, "roc_auc"), _pm(m, "balanced_accuracy"),
            "n/a" if eff.get("gmacs") is None else f"{eff['gmacs']:.2f}",
            "n/a" if eff.get("params_m") is None else f"{eff['params_m']:.2f}",
            "n/a" if eff.get("latency_ms") is None else f"{eff['latency_ms']:.1f}",
            f"{m['n_knees']} ({m['prevalence']:.0%} prog.)",
        )  # fmt: skip
    return table
