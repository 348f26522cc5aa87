"""``oai cohort``: list the knees (or their KLG trajectories) matching filters."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table

from oaicli.common import err_console, handles_errors, out_console, state
from oaicohort.vocabulary import DEFAULT_DEFINITION

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "csv", "tsv", "json", "parquet")


def _number_or_text(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def parse_var(spec: str) -> tuple[str, Any]:
    """``NAME=LO:HI`` (range, either end may be empty), ``NAME=VALUE``, or ``NAME`` (column only)."""
    name, sep, value = spec.partition("=")
    name = name.strip()
    if not name:
        raise typer.BadParameter(f"{spec!r}: expected NAME=LO:HI, NAME=VALUE or NAME", param_hint="--var")
    if not sep:
        return name, ...
    if ":" in value:
        lo, _, hi = value.partition(":")
        try:
            return name, (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
        except ValueError:
            raise typer.BadParameter(f"{spec!r}: range ends must be numbers", param_hint="--var") from None
    return name, _number_or_text(value)


def parse_sequence(spec: str) -> tuple[str, int]:
    """``SEQUENCE`` (baseline) or ``SEQUENCE:VISIT`` (OAI visit code)."""
    sequence, sep, visit = spec.partition(":")
    if not sep:
        return sequence, 0
    try:
        return sequence, int(visit)
    except ValueError:
        raise typer.BadParameter(
            f"{spec!r}: expected SEQUENCE or SEQUENCE:VISIT", param_hint="--has-sequence"
        ) from None


def _range(lo: float | None, hi: float | None) -> tuple[float | None, float | None] | None:
    return None if lo is None and hi is None else (lo, hi)


def _records_json(frame: pd.DataFrame) -> str:
    from oaicohort.cohort.export import records_json

    return records_json(frame)  # strict JSON: NaN as null


SHORT_HEADERS = {
    "knee_id": "knee",
    "subject_id": "subject",
    "kl_baseline": "KL0",
    "progression_month": "month",
    "kl_increase": "+KL",
    "exclusion": "excluded",
}


def render_table(frame: pd.DataFrame, max_rows: int, what: str) -> Table:
    import pandas as pd

    shown = frame.head(max_rows)
    # compact, unwrapped headers: a cohort listing should stay readable in an 80-column terminal
    table = Table(title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for col in frame.columns:
        header = SHORT_HEADERS.get(str(col), str(col))
        table.add_column(
            header,
            justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left",
            no_wrap=True,
            min_width=len(header),
        )
    for row in shown.itertuples(index=False):
        table.add_row(*("" if pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v) for v in row))
    more = f" (showing {len(shown)}; --max-rows or --format csv for all)" if len(frame) > len(shown) else ""
    attrs = frame.attrs
    split = f", split {attrs['split_id']}" if attrs.get("split_id") is not None else ""
    table.caption = f"{len(frame)} {what}{more} - definition {attrs.get('definition')}{split}"
    return table


@handles_errors
def cohort_command(
    ctx: typer.Context,
    site: list[str] = typer.Option([], "--site", help="Enrolment site (repeat: any of)."),
    sex: str | None = typer.Option(None, "--sex", help="F or M."),
    age_min: float | None = typer.Option(None, "--age-min"),
    age_max: float | None = typer.Option(None, "--age-max"),
    bmi_min: float | None = typer.Option(None, "--bmi-min"),
    bmi_max: float | None = typer.Option(None, "--bmi-max"),
    kl: list[int] = typer.Option([], "--kl", help="Baseline KLG (repeat: any of)."),
    label: list[str] = typer.Option([], "--label", help="none, fast or slow (repeat: any of)."),
    role: str | None = typer.Option(None, "--role", help="train or test (needs a split)."),
    fold: list[int] = typer.Option([], "--fold", help="Cross-validation fold (repeat: any of)."),
    var: list[str] = typer.Option(
        [], "--var", help="Clinical variable: NAME=LO:HI, NAME=VALUE or NAME (adds the column)."
    ),
    has_sequence: list[str] = typer.Option(
        [], "--has-sequence", help="Knee has this MRI series: SEQUENCE[:VISIT], e.g. SAG_3D_DESS:0."
    ),
    definition: str = typer.Option(DEFAULT_DEFINITION, "--definition", "-d", help="Label definition."),
    split: int | None = typer.Option(None, "--split", help="Split id (default: the newest one)."),
    include_excluded: bool = typer.Option(False, "--include-excluded", help="Also list excluded knees."),
    trajectories: bool = typer.Option(False, "--trajectories", help="KLG per knee per visit instead."),
    wide: bool = typer.Option(False, "--wide", help="Trajectories: one row per knee, a column per visit."),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="table, csv, tsv, json or parquet (default: from --out, else table)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Same as --format json."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file."),
    max_rows: int = typer.Option(40, "--max-rows", help="Rows shown by --format table."),
    raw_cells: bool = typer.Option(
        False,
        "--raw-cells",
        help="CSV/TSV: write text cells exactly as stored. By default a text cell starting with = + - or @ "
        "is written with a leading ' so that spreadsheets show it instead of running it as a formula.",
    ),
) -> None:
    """List the cohort's knees matching every filter (only included knees by default)."""
    fmt = "json" if json_out else fmt
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        fmt = suffix if suffix in FORMATS[1:] else "table"
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r}: expected one of {', '.join(FORMATS)}", param_hint="--format")
    if fmt == "parquet" and out is None:
        raise typer.BadParameter("parquet is binary: give --out FILE", param_hint="--format")
    if fmt == "table" and out is not None:
        raise typer.BadParameter(
            "table is for the terminal: use csv, json or parquet with --out", param_hint="--format"
        )

    filters: dict[str, Any] = {}
    if site:
        filters["site"] = site
    if sex is not None:
        filters["sex"] = sex
    for name, lo, hi in (("age", age_min, age_max), ("bmi", bmi_min, bmi_max)):
        if (rng := _range(lo, hi)) is not None:
            filters[name] = rng
    for name, values in (("kl_baseline", kl), ("label", label), ("fold", fold)):
        if values:
            filters[name] = list(values)
    if role is not None:
        filters["role"] = role
    if has_sequence:
        filters["has_sequence"] = [parse_sequence(s) for s in has_sequence]
    variables: dict[str, Any] = {}
    for spec in var:
        name, value = parse_var(spec)
        if name in variables:
            raise typer.BadParameter(f"variable {name} given twice", param_hint="--var")
        variables[name] = value

    from oaicohort.cohort.query import Cohort  # pandas: keep `oai --help` fast

    db = state(ctx).open_db(create=False)
    cohort = Cohort(db)
    options: dict[str, Any] = {
        "definition": definition,
        "include_excluded": include_excluded,
        "variables": variables or None,
        "split": "latest" if split is None else split,
        **filters,
    }
    if trajectories:
        frame = cohort.trajectories(wide=wide, **options)
        what = "knees" if wide else "readings"
    else:
        frame = cohort.knees(**options)
        what = "knees"
    if role is not None:  # a stale split may hold knees in the wrong role
        from oaicohort.cohort.staleness import check_frame_not_stale

        check_frame_not_stale(db, frame)

    if fmt == "table":
        out_console.print(render_table(frame, max_rows, what))
    elif fmt == "parquet":
        assert out is not None
        frame.to_parquet(out, index=False)
    elif fmt in ("csv", "tsv"):
        from oaicohort.cohort.export import to_delimited

        # text cells starting with = + - @ are written '= ... so spreadsheets do not run them
        _write_text(to_delimited(frame, sep="," if fmt == "csv" else "\t", neutralise=not raw_cells), out)
    else:
        _write_text(_records_json(frame) + "\n", out)
    if out is not None:
        err_console.print(f"{len(frame)} {what} written to {out}")


def _write_text(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        out.write_text(text, encoding="utf-8")


__all__ = ["cohort_command", "parse_sequence", "parse_var"]
