"""``oai store info|verify|export|qc|relocate``: describe a volume store, check it against the database
index, export its volumes as NIfTI, draw QC montages, record that a store moved."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from oaicli.common import emit_json, guard_output, handles_errors, out_console, parse_knees_option, rich_progress, state
from oaicohort.visits import VISIT_MONTHS
from oaicohort.vocabulary import STORE_VIEWS

store_app = typer.Typer(help="Inspect and verify preprocessed volume stores.", no_args_is_help=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _checked(views: list[str] | None, visit: int) -> list[str] | None:
    """``--view`` and ``--visit`` values that name something a store can hold (usage errors, exit 2)."""
    for view in views or []:
        if view not in STORE_VIEWS:
            raise typer.BadParameter(f"{view!r}: expected one of {', '.join(STORE_VIEWS)}", param_hint="--view")
    if visit not in VISIT_MONTHS:
        raise typer.BadParameter(f"{visit}: not an OAI visit code {sorted(VISIT_MONTHS)}", param_hint="--visit")
    return views


@store_app.command("info")
@handles_errors
def info_command(
    path: Path = typer.Argument(..., help="The store directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Parameters, hash, views, shapes, counts, size on disk and compression ratio."""
    from oaicohort.imaging.store.info import store_info
    from oaicohort.imaging.store.volume_store import VolumeStore

    info = store_info(VolumeStore.open(path))
    if json_out:
        emit_json(info)
        return
    out_console.print(
        f"[bold]{info['path']}[/]  format {info['format_version']}, preset "
        f"{info['params']['preset']!r}, params {info['params_hash'][:12]}, created "
        f"{info['created_at']} by oai {info['toolkit_version']}, {_mb(info['disk_bytes'])} on disk"
    )
    table = Table("view", "volume (D,H,W)", "crop", "volumes", "slots", "on disk", "ratio")
    for view, v in info["views"].items():
        ratio = v["compression_ratio"]
        table.add_row(
            view, "x".join(map(str, v["volume_shape"])), "x".join(map(str, v["crop_shape"])),
            str(v["used"]), str(v["slots"]), _mb(v["disk_bytes"]),
            f"{ratio:.2f}" if ratio else "-",
        )  # fmt: skip
    out_console.print(table)


@store_app.command("verify")
@handles_errors
def verify_command(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="The store directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recompute every indexed volume's checksum against the database (--db); exit 1 on mismatch."""
    from oaicohort.imaging.store.index import verify_store

    db = state(ctx).open_db(create=False)
    try:
        with rich_progress(enabled=not json_out) as progress:
            report = verify_store(db, path, progress=progress)
    finally:
        db.dispose()
    if json_out:
        emit_json(report)
    else:
        orphans = sum(len(v) for v in report["orphans"].values())
        out_console.print(
            f"{report['store_path']}: {report['checked']} indexed volumes checked, {report['ok']} ok, "
            f"{len(report['mismatches'])} mismatched; {orphans} orphan slots (data without an index "
            f"row, reused by the next run); {report['failed_rows']} failed series rows",
            highlight=False,
        )
        for warning in report["warnings"]:
            out_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        for m in report["mismatches"]:
            out_console.print(
                f"[red]mismatch[/] {m['view']}[{m['position']}] subject {m['subject_id']} "
                f"{m['side']} visit {m['visit']}: {m['problem']}",
                highlight=False,
            )
    if report["mismatches"]:
        raise typer.Exit(code=1)


@store_app.command("export")
@handles_errors
def export_command(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="The store directory."),
    nifti: Path = typer.Option(..., "--nifti", help="Folder for the NIfTI files (.nii.gz) and index.csv."),
    views: list[str] | None = typer.Option(None, "--view", help="sag, cor or ax (repeatable; default all stored)."),
    knees: list[str] | None = typer.Option(
        None, "--knees", help="Knees to export: 9000001R,9000002L or a file of them (default all)."
    ),
    visit: int = typer.Option(0, "--visit", help="Visit code of the volumes."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N knees per view."),
    json_out: bool = typer.Option(False, "--json", help="Print the index as JSON."),
) -> None:
    """Write stored volumes as NIfTI with their scanner affine (needs the database the store was made with)."""
    from oaicohort.imaging.store.export import export_nifti

    views, chosen = _checked(views, visit), parse_knees_option(knees)
    guard_output(ctx, nifti, "--nifti", inputs=[path])  # a usage error before the database is needed
    db = state(ctx).open_db(create=False)  # the database the store was made with: never a new one
    try:
        with rich_progress(enabled=not json_out) as progress:
            index = export_nifti(
                db, path, nifti, views=views, knees=chosen, visit=visit, limit=limit, progress=progress
            )
    finally:
        db.dispose()
    if json_out:
        emit_json(index.to_dict(orient="records"))
    else:
        out_console.print(f"{len(index)} volumes written to {nifti.resolve()} (index.csv lists them)", highlight=False)


@store_app.command("qc")
@handles_errors
def qc_command(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="The store directory."),
    out: Path = typer.Option(..., "--out", help="Folder for knees/*.png, sheets/*.png and index.csv."),
    views: list[str] | None = typer.Option(None, "--view", help="sag, cor or ax (repeatable; default all stored)."),
    knees: list[str] | None = typer.Option(
        None, "--knees", help="Knees to draw: 9000001R,9000002L or a file of them (default all)."
    ),
    visit: int = typer.Option(0, "--visit", help="Visit code of the volumes."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N knees."),
    columns: int = typer.Option(4, "--columns", min=1, help="Knees per contact-sheet row."),
    rows: int = typer.Option(8, "--rows", min=1, help="Rows per contact sheet."),
    json_out: bool = typer.Option(False, "--json", help="Print the index as JSON."),
) -> None:
    """PNG montages of the mid-slice of each view per knee, and contact sheets of many knees."""
    from oaicohort.imaging.store.qc import write_qc

    views, chosen = _checked(views, visit), parse_knees_option(knees)
    db = state(ctx).open_db_if_configured()  # the index when there is one, else the store's own keys
    try:
        guard_output(ctx, out, "--out", inputs=[path], database=db)
        with rich_progress(enabled=not json_out) as progress:
            index = write_qc(
                path, out, db=db, views=views, knees=chosen, visit=visit, limit=limit,
                columns=columns, rows=rows, progress=progress,
            )  # fmt: skip
    finally:
        if db is not None:
            db.dispose()
    if json_out:
        emit_json(index.to_dict(orient="records"))
    else:
        out_console.print(
            f"{len(index)} knees drawn in {out.resolve()}: knees/*.png, {index['sheet'].nunique()} contact sheet(s)",
            highlight=False,
        )


@store_app.command("relocate")
@handles_errors
def relocate_command(
    ctx: typer.Context,
    old: Path = typer.Argument(..., help="Where the database indexes the store (the path it moved from)."),
    new: Path = typer.Argument(..., help="Where the store is now."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Record that a store moved (a renamed folder, another mount point); its volumes stay indexed."""
    from oaicohort.imaging.store.identity import relocate_store

    db = state(ctx).open_db(create=False)
    try:
        report = relocate_store(db, old, new)
    finally:
        db.dispose()
    if json_out:
        emit_json(report)
    else:
        out_console.print(
            f"{report['old']} -> {report['new']}: store {report['store_id']} relocated; "
            f"its {report['volumes']} indexed volume(s) follow it",
            highlight=False,
        )
