"""``oai ingest ROOT``: read an OAI release (clinical tables, X-ray readings, image indexes, image folders)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from oaicli.common import emit_json, err_console, handles_errors, out_console, rich_progress, state

if TYPE_CHECKING:
    from oaicohort.ingest.run import IngestResult


@handles_errors
def ingest_command(
    ctx: typer.Context,
    root: Path = typer.Argument(
        ...,
        help="Folder (or .zip) holding the OAI release: classic ASCII in either layout, SAS, an NDA data "
        "package, zip archives of them; searched recursively.",
        show_default=False,
    ),
    variables: str | None = typer.Option(
        None,
        "--variables",
        help="Further OAI variables to store, comma-separated (e.g. V00WOMKPR,P01INJR); in an NDA package "
        "also structure.column@visit (e.g. oai_koos_womac01.womkpr@V00).",
    ),
    variables_file: Path | None = typer.Option(
        None,
        "--variables-file",
        help="Text file of further OAI variable names (comma/space separated, # comments).",
    ),
    allow_shrink: bool = typer.Option(
        False,
        "--allow-shrink",
        help="Accept a file that gives none or far fewer rows than the last ingest read from it, or "
        "a column with far fewer values than the database holds (otherwise the ingest stops, naming "
        "them: a truncated or damaged file would delete data).",
    ),
    scan_images: bool = typer.Option(
        False,
        "--scan-images",
        help="Read one DICOM header of every image series below ROOT, also of those an index (contents.csv, "
        "image03.txt) lists, and stop if an index and its images disagree (naming both). Without it, only "
        "series no index lists are indexed from their headers (image downloads without contents.csv).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Ingest the OAI release below ROOT into the cohort database, in one transaction.

    Re-ingesting the same files changes nothing; a newer release updates rows. Bad input stops
    with the file, line and column, and leaves the database as it was.
    """
    # imported here: pandas would slow down `oai --help`
    from oaicohort.ingest.run import ingest_release
    from oaicohort.ingest.variables import parse_variables, read_variables_file

    names = parse_variables(variables or "")
    if variables_file is not None:
        names += [n for n in read_variables_file(variables_file) if n not in names]
    db = state(ctx).open_db()
    try:
        with rich_progress() as progress:
            result = ingest_release(
                db, root, variables=names, progress=progress, allow_shrink=allow_shrink, scan_images=scan_images
            )
    finally:
        db.dispose()
    if json_out:
        emit_json(result.to_dict())
    else:
        render_summary(result)


def render_summary(result: IngestResult) -> None:
    title = f"ingest run {result.run_id}: {result.status}"
    table = Table(title=title, title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("new", justify="right")
    table.add_column("removed", justify="right")
    for name, rows in result.rows.items():
        table.add_row(name, f"{rows:,}", f"{result.inserted[name]:,}", f"{result.removed[name]:,}")
    out_console.print(table)
    note = " (same files as the last successful ingest: nothing changed)" if result.status == "unchanged" else ""
    out_console.print(f"{len(result.files)} files from {result.root} in {result.seconds:.1f} s{note}", highlight=False)
    out_console.print(
        f"form: {', '.join(result.forms) or '-'}; image indexes read: {result.image_indexes}; "
        f"series read from their DICOM headers: {result.series_scanned:,}",
        highlight=False,
    )
    if result.warnings:
        err_console.print(f"{len(result.warnings)} warning(s):", style="yellow")
        for warning in result.warnings:
            err_console.print(f"  {warning}", style="yellow", highlight=False, markup=False)
