"""``oai db``: manage the cohort database's schema by hand."""

from __future__ import annotations

import typer
from sqlalchemy.engine import make_url

from oaicli.common import emit_json, handles_errors, out_console, state
from oaicohort.db import open_database, resolve_url, table_names
from oaicohort.db.guards import sqlite_file
from oaicohort.db.migrate import current_revision, head_revision, is_newer_schema, upgrade

db_app = typer.Typer(help="Manage the cohort database schema (migrations run automatically on open).")


@db_app.command("upgrade")
@handles_errors
def upgrade_command(ctx: typer.Context, revision: str = typer.Argument("head")) -> None:
    """Apply pending migrations up to REVISION (default: head)."""
    db = open_database(state(ctx).db, migrate=False)
    try:
        upgrade(db.engine, revision)
        out_console.print(f"{resolve_url(state(ctx).db)}: at revision {current_revision(db.engine)}")
    finally:
        db.dispose()


@db_app.command("current")
@handles_errors
def current_command(ctx: typer.Context, json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the database's schema revision and the newest one this toolkit knows."""
    url = resolve_url(state(ctx).db)
    missing = sqlite_file(url) is not None and not sqlite_file(url).exists()  # type: ignore[union-attr]
    db = None if missing else open_database(url, migrate=False)
    info = {
        "url": make_url(url).render_as_string(hide_password=True),
        "exists": not missing,
        "current": current_revision(db.engine) if db else None,
        "head": head_revision(),
        "tables": [t for t in table_names(db.engine) if t != "alembic_version"] if db else [],
    }
    if db is not None:
        db.dispose()
    if json_out:
        emit_json(info)
        return
    if missing:
        up = "no database file yet: nothing was created; any command that writes creates it"
    elif is_newer_schema(str(info["current"]) if info["current"] is not None else None):
        up = "newer than this toolkit: upgrade the toolkit to use it"
    else:
        up = "up to date" if info["current"] == info["head"] else "migrations pending"
    out_console.print(f"{info['url']}: revision {info['current']} (head {info['head']}, {up})")


@db_app.command("runs")
@handles_errors
def runs_command(
    ctx: typer.Context,
    limit: int = typer.Option(20, "--limit", min=1, help="Show the latest N runs."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the latest ingest runs; one left running by a killed process shows as interrupted."""
    from rich.table import Table

    from oaicohort.ingest.provenance import list_runs

    db = state(ctx).open_db(create=False)
    try:
        runs = list_runs(db, limit)
    finally:
        db.dispose()
    if json_out:
        emit_json(runs)
        return
    table = Table("run", "status", "started", "finished", "root", "error", title_justify="left")
    for run in runs:
        finished = run["finished_at"]
        table.add_row(
            str(run["run_id"]),
            run["status"],
            f"{run['started_at']:%Y-%m-%d %H:%M:%S}",
            f"{finished:%Y-%m-%d %H:%M:%S}" if finished else "-",
            run["source_root"],
            run["error"] or "",
        )
    out_console.print(table)
