"""``oai label``: derive progression labels and print the paper's cohort table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from oaicli.common import emit_json, err_console, handles_errors, out_console, rich_progress, state
from oaicohort.cohort.definitions import PRESET_DESCRIPTIONS
from oaicohort.vocabulary import DEFAULT_DEFINITION, STORE_VIEWS

if TYPE_CHECKING:
    from oaicohort.cohort.summary import CohortSummary
    from oaicohort.db import Database


def _mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f} ± {sd:.1f}" if sd is not None else f"{mean:.1f}"


def cohort_table(summary: CohortSummary, labelled: dict[str, int] | None = None) -> Table:
    """The cohort table of the paper (section 3.1) as a Rich table."""
    table = Table(
        title=f"Cohort: {summary.definition} (labels {summary.params_hash[:12]})",
        show_header=False,
        title_justify="left",
    )
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("Knees / subjects", f"{summary.knees} / {summary.subjects}")
    table.add_row("Non-progressors / fast / slow", f"{summary.none} / {summary.fast} / {summary.slow}")
    grades = "/".join(str(k) for k in summary.kl)
    table.add_row(f"KLG {grades} (knees)", " / ".join(str(v) for v in summary.kl.values()))
    table.add_row("Age (years)", _mean_sd(summary.age_mean, summary.age_sd))
    table.add_row("BMI (kg/m²)", _mean_sd(summary.bmi_mean, summary.bmi_sd))
    table.add_row("Female / male subjects", f"{summary.female} / {summary.male}")
    if labelled is not None:
        table.add_row(
            "Labelled, before exclusions",
            f"{labelled['knees']} / {labelled['subjects']} "
            f"({labelled['none']} / {labelled['fast']} / {labelled['slow']})",
        )
    table.add_section()
    table.add_row("Excluded knees", str(sum(summary.excluded.values())))
    for reason, count in summary.excluded.items():
        table.add_row(f"  {reason.replace('_', ' ')}", str(count))
    return table


@handles_errors
def label_command(
    ctx: typer.Context,
    definition: str = typer.Option(
        DEFAULT_DEFINITION,
        "--definition",
        "-d",
        help="Label definition: " + "; ".join(f"{k} ({v})" for k, v in PRESET_DESCRIPTIONS.items()),
    ),
    store: Path | None = typer.Option(
        None, "--store", help="Also exclude knees without a good baseline volume in this volume store."
    ),
    require: str | None = typer.Option(
        None,
        "--require",
        help="With --store: views every knee needs a good volume of, e.g. sag,xray (one test set for "
        "MRI and X-ray runs); the exclusion names the missing one. Default: any MRI view.",
    ),
    definition_file: Path | None = typer.Option(
        None,
        "--definition-file",
        help="A study's own definition: a TOML file with the fields of LabelDefinitionParams (see docs/tutorial.md).",
    ),
    list_all: bool = typer.Option(False, "--list", help="List every definition with its hash and knee counts."),
    json_out: bool = typer.Option(False, "--json", help="Print the cohort table as JSON."),
) -> None:
    """Derive knee progression labels (none / fast / slow) and print the cohort table."""
    from oaicohort.cohort.labels import derive_labels  # pandas: keep `oai --help` fast
    from oaicohort.cohort.summary import cohort_summary

    required = _required_views(require, store)
    db = state(ctx).open_db()
    if list_all:
        _list_definitions(db, json_out)
        return
    chosen: Any = definition
    if definition_file is not None:
        from oaicohort.cohort.definition_files import load_definition_file

        if definition != DEFAULT_DEFINITION:
            raise typer.BadParameter("give --definition or --definition-file, not both", param_hint="--definition")
        chosen = load_definition_file(definition_file)
    with rich_progress(not json_out) as progress:
        result = derive_labels(db, chosen, store=store, require=required, progress=progress)
    summary = cohort_summary(db, result.definition_id)
    from oaicohort.ingest.provenance import image_index_note

    note = image_index_note(db) if summary.excluded.get("no_baseline_dess") else None
    if json_out:
        out: dict[str, Any] = summary.to_dict()
        out["labelled"] = result.labelled
        out["disagreeing_knees"] = result.disagreeing_knees
        out["reading_order"] = result.definition.reading_order
        out["seconds"] = round(result.seconds, 3)
        out["notes"] = [note] if note else []
        emit_json(out)
        return
    out_console.print(cohort_table(summary, result.labelled))
    if result.disagreeing_knees:
        order = (
            "project 15, then 37/42, then file order" if result.definition.reading_order == "project" else "file order"
        )
        out_console.print(
            f"{result.disagreeing_knees} knee(s) have readings by different reading projects that disagree; "
            f"the first by {order} counts (reading_order = {result.definition.reading_order})",
            highlight=False,
        )
    if note:
        err_console.print(note, style="yellow", highlight=False)


def _required_views(text: str | None, store: Path | None) -> tuple[str, ...]:
    """``--require sag,xray`` -> ("sag", "xray"), checked against the store views."""
    if text is None:
        return ()
    views = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    unknown = [v for v in views if v not in STORE_VIEWS]
    if not views or unknown:
        raise typer.BadParameter(
            f"{text!r}: expected views of a volume store, comma-separated ({', '.join(STORE_VIEWS)})",
            param_hint="--require",
        )
    if store is None:
        raise typer.BadParameter("needs --store (the store whose volumes are required)", param_hint="--require")
    return views


def _list_definitions(db: Database, json_out: bool) -> None:
    from oaicohort.cohort.stored import list_definitions

    frame = list_definitions(db)
    if json_out:
        emit_json(
            [
                {
                    "id": None if r.id is None or r.id != r.id else int(r.id),
                    "name": r.name,
                    "params_hash": r.params_hash,
                    "derived": bool(r.derived),
                    "preset": bool(r.preset),
                    "created_at": None if not r.derived else str(r.created_at),
                    "knees": None if not r.derived else int(r.knees),
                    "labelled": None if not r.derived else int(r.labelled),
                }
                for r in frame.itertuples(index=False)
            ]
        )
        return
    table = Table(title="Label definitions", title_justify="left")
    for col in ("name", "hash", "knees", "labelled", "derived at", ""):
        table.add_column(col, justify="right" if col in ("knees", "labelled") else "left")
    for r in frame.itertuples(index=False):
        table.add_row(
            r.name,
            r.params_hash[:12],
            str(r.knees) if r.derived else "-",
            str(r.labelled) if r.derived else "-",
            str(r.created_at)[:19] if r.derived else "not derived",
            "preset" if r.preset else "",
        )
    out_console.print(table)
