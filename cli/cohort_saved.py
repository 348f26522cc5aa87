"""``oai cohort --saved NAME``: a saved cohort checked against the database as it is now (the
knees that entered or left, and why), or exported with its provenance header."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from oaicli.common import err_console, guard_output, out_console, state


def saved_command(ctx: typer.Context, name: str, *, export: bool, out: Path | None, json_out: bool) -> None:
    """``oai cohort --saved NAME``: check a saved cohort against the database now, or ``--export`` it."""
    from oaicohort.cohort.saved import export_saved
    from oaicohort.cohort.saved_check import check_saved

    db = state(ctx).open_db()
    if export:
        if out is not None:
            guard_output(ctx, out, "--out", database=db)
        header, frame = export_saved(db, name)
        text = "".join(f"# {line}\n" for line in header) + frame.to_csv(index=False)
        write_text(text, out)
        if out is not None:
            err_console.print(f"saved cohort {name!r}: {len(frame)} knees written to {out}")
        return
    check = check_saved(db, name)
    if json_out:
        sys.stdout.write(json.dumps(check.to_dict(), indent=2, default=str) + "\n")
        return
    verdict = "[green]the same[/]" if check.same else "[red]changed[/]"
    out_console.print(
        f"saved cohort {name!r}: {verdict} ({check.saved_knees} knees saved, {check.current_knees} now; "
        f"content {check.saved_hash[:12]} -> {check.current_hash[:12]})"
    )
    for what, frame in (("entered", check.entered), ("left", check.left)):
        if len(frame):
            table = Table(title=f"{len(frame)} knee(s) {what}", title_justify="left", box=box.SIMPLE_HEAD)
            for col in ("subject", "side", "label", "why"):
                table.add_column(col)
            for r in frame.itertuples(index=False):
                table.add_row(str(r.subject_id), r.side, str(r.label), r.why)
            out_console.print(table)
    if check.matching:  # a matched cohort: its balance and unmatched cases as saved
        from oaicli.cohort_study import render_matching

        render_matching(check.matching)
    if check.changed_files:
        out_console.print(f"files changed since the save: {', '.join(check.changed_files)}")
    for note in check.notes:
        err_console.print(f"note: {note}")


def write_text(text: str, out: Path | None) -> None:
    """``text`` to ``out`` (atomically), or to stdout without one."""
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from oaicohort.files import atomic_write_text

        atomic_write_text(out, text)
