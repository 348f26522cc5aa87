"""``oai store info|verify``: describe a volume store, check it against the database index."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from oaicli.common import emit_json, handles_errors, out_console, rich_progress, state

store_app = typer.Typer(help="Inspect and verify preprocessed volume stores.", no_args_is_help=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@store_app.command("info")
@handles_errors
def info_command(
    path: Path = typer.Argument(..., help="The store directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Parameters, hash, views, shapes, counts, size on disk and compression ratio."""
    from oaicohort.imaging.store import VolumeStore

    info = VolumeStore.open(path).info()
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
    from oaicohort.imaging.store import verify_store

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
