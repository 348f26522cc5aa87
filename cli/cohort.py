"""``oai cohort``: list the knees (or their KLG trajectories) matching filters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table

from oaicli.cohort_saved import saved_command, write_text
from oaicli.common import emit_json, err_console, guard_output, handles_errors, out_console, output_path, state
from oaicohort.vocabulary import DEFAULT_DEFINITION

if TYPE_CHECKING:
    import pandas as pd

    from oaicohort.db import Database

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
    age_min: float | None = typer.Option(None, "--age-min", help="Lowest baseline age in years (inclusive)."),
    age_max: float | None = typer.Option(None, "--age-max", help="Highest baseline age in years (inclusive)."),
    bmi_min: float | None = typer.Option(None, "--bmi-min", help="Lowest baseline BMI in kg/m² (inclusive)."),
    bmi_max: float | None = typer.Option(None, "--bmi-max", help="Highest baseline BMI in kg/m² (inclusive)."),
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
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this file ('-': standard output, csv)."),
    max_rows: int = typer.Option(40, "--max-rows", help="Rows shown by --format table."),
    value_mode: str | None = typer.Option(
        None, "--values", help="Coded variables as codes, labels or both (default: codes; trajectories: both)."
    ),
    dictionary: bool = typer.Option(
        False, "--dictionary", help="Also write the data dictionary of the exported variables (OUT.dictionary.*)."
    ),
    save: str | None = typer.Option(None, "--save", help="Save this query and its result under NAME."),
    replace: bool = typer.Option(False, "--replace", help="With --save: replace a saved cohort of that name."),
    saved: str | None = typer.Option(
        None, "--saved", help="Re-run the saved cohort NAME and report whether its knees are the same."
    ),
    export: bool = typer.Option(
        False, "--export", help="With --saved: write the frozen knee list with a provenance header."
    ),
    raw_cells: bool = typer.Option(
        False,
        "--raw-cells",
        help="CSV/TSV: write text cells exactly as stored. By default a text cell starting with = + - or @ "
        "is written with a leading ' so that spreadsheets show it instead of running it as a formula.",
    ),
    flow: Path | None = typer.Option(
        None, "--flow", help="Write the participant flow diagram: .svg, .png, .pdf (Graphviz) or .dot."
    ),
    table1: Path | None = typer.Option(
        None, "--table1", help="Write the baseline characteristics table (tableone): .md, .csv or .html."
    ),
    by: str | None = typer.Option(None, "--by", help="Group --table1 (default: label) or --km by this column."),
    pval: bool = typer.Option(False, "--pval", help="--table1: add p-values."),
    km: Path | None = typer.Option(
        None,
        "--km",
        help="Write Kaplan-Meier curves with numbers at risk (a time-to-event definition): .png/.svg/.pdf.",
    ),
    match: str | None = typer.Option(
        None, "--match", help="Match cases to controls: COLUMN=VALUE[|VALUE], e.g. label=fast|slow."
    ),
    on: str | None = typer.Option(
        None,
        "--on",
        help="--match on these: NAME exactly, NAME:WIDTH within a caliper (kl_baseline,sex,bmi:2.5,age:5).",
    ),
    ratio: int = typer.Option(1, "--ratio", help="--match: controls per case."),
    seed: int = typer.Option(0, "--seed", help="--match: seed of the matching order."),
) -> None:
    """List the cohort's knees matching every filter (only included knees by default).

    With --flow, --table1, --km or --match the knees are listed only where --out or --format
    asks for them; --json then prints those outputs' numbers."""
    from oaicli.cohort_study import StudyOptions, check_options

    study = StudyOptions(flow, table1, by, pval, km, match, on, ratio, seed)
    match_spec = check_options(study, saved=saved is not None, trajectories=trajectories)
    listing = not study.outputs or out is not None or fmt is not None
    if saved is not None:
        query_options = (site, sex, age_min, age_max, bmi_min, bmi_max, kl, label, role, fold, var, has_sequence)
        if any(o not in (None, []) for o in query_options) or save or trajectories or include_excluded:
            raise typer.BadParameter(
                "--saved re-runs the saved query as it was: give no filters, --save or --trajectories with it",
                param_hint="--saved",
            )
        saved_command(ctx, saved, export=export, out=out, json_out=json_out or fmt == "json")
        return
    if export:
        raise typer.BadParameter("--export needs --saved NAME", param_hint="--export")
    study_json = json_out and study.outputs  # --json prints the outputs' numbers, not the knees
    fmt = "json" if json_out and not study_json else fmt
    to_stdout, out = out is not None and output_path(out) is None, output_path(out)  # --out -: standard output
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        fmt = suffix if suffix in FORMATS[1:] else ("csv" if to_stdout else "table")
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
    trajectory_variable = "XRKL"
    if trajectories:
        bare = [name for name, value in variables.items() if value is ...]
        if len(bare) > 1:
            raise typer.BadParameter(f"--trajectories follows one variable; got {', '.join(bare)}", param_hint="--var")
        if bare:
            trajectory_variable = bare[0]
            del variables[bare[0]]
    if dictionary and out is None:
        raise typer.BadParameter("the data dictionary is a second file: give --out FILE", param_hint="--dictionary")
    if save is not None and trajectories:
        raise typer.BadParameter("--save stores a knee query, not trajectories", param_hint="--save")

    from oaicohort.cohort.query import Cohort  # pandas: keep `oai --help` fast

    db = state(ctx).open_db(create=False)
    for option, path in (("--out", out), ("--flow", study.flow), ("--table1", study.table1), ("--km", study.km)):
        if path is not None:
            guard_output(ctx, path, option, database=db)
    if dictionary and out is not None:
        guard_output(ctx, _dictionary_path(out), "--dictionary", database=db)
    cohort = Cohort(db)
    options: dict[str, Any] = {
        "definition": definition,
        "include_excluded": include_excluded,
        "variables": variables or None,
        "split": "latest" if split is None else split,
        **filters,
    }
    if trajectories:
        frame = cohort.trajectories(variable=trajectory_variable, wide=wide, **options)
        what = "knees" if wide else "readings"
        frame = _trajectory_values(frame, value_mode or "both")
    elif save is not None:
        from oaicohort.cohort.saved import save_cohort

        frame = save_cohort(cohort.db, save, replace=replace, match=match_spec, **options)
        what = "knees"
        err_console.print(
            f"saved cohort {save!r}: {len(frame)} knees, content sha256 {frame.attrs['saved']['content_hash'][:12]}"
        )
    elif match_spec is not None:
        frame = cohort.match(match_spec, **options).cohort
        what = "knees"
    else:
        frame = cohort.knees(**options)
        what = "knees"
    if frame.attrs.get("empty_reason"):  # which filter removed the last knees
        err_console.print(f"note: {frame.attrs['empty_reason']}", highlight=False, markup=False, soft_wrap=True)
    if not trajectories:  # a time-to-event definition's columns
        from oaicohort.cohort.time_to_event import with_event_times

        frame = with_event_times(db, frame)
    if study.outputs:
        results = _study_outputs(db, cohort, study, frame, options, filters, variables, show=not study_json)
        if study_json:
            emit_json(results)
        if not listing:
            return
    dictionary_frame = _dictionary(cohort, frame) if (dictionary or (value_mode or "codes") != "codes") else None
    if not trajectories and value_mode not in (None, "codes"):
        from oaicohort.cohort.variables import apply_value_mode

        assert dictionary_frame is not None
        frame = apply_value_mode(frame, value_mode, dictionary_frame)

    if fmt == "table":
        out_console.print(render_table(frame, max_rows, what))
    elif fmt == "parquet":
        assert out is not None
        _write_frame(frame, "parquet", out)
    elif fmt in ("csv", "tsv"):
        from oaicohort.cohort.export import to_delimited

        # text cells starting with = + - @ are written '= ... so spreadsheets do not run them
        write_text(to_delimited(frame, sep="," if fmt == "csv" else "\t", neutralise=not raw_cells), out)
    else:
        write_text(_records_json(frame) + "\n", out)
    if out is not None:
        err_console.print(f"{len(frame)} {what} written to {out}")
    if dictionary:
        assert out is not None and dictionary_frame is not None
        path = _dictionary_path(out)
        _write_frame(dictionary_frame, fmt if fmt != "table" else "csv", path)
        err_console.print(f"data dictionary ({len(dictionary_frame)} codes) written to {path}")


def _study_outputs(
    db: Database,
    cohort: Any,
    study: Any,
    frame: pd.DataFrame,
    options: dict[str, Any],
    filters: dict[str, Any],
    variables: dict[str, Any],
    *,
    show: bool,
) -> dict[str, Any]:
    from oaicli.cohort_study import write_outputs

    # a matched cohort's flow starts from the query's knees before matching
    query = cohort.knees(**options) if "matching" in frame.attrs and study.flow is not None else frame
    described = {**filters, **{k: v for k, v in variables.items() if v is not ...}}
    return write_outputs(db, study, frame, query=query, filters=described, show=show)


def _trajectory_values(frame: pd.DataFrame, values: str) -> pd.DataFrame:
    if values not in ("codes", "labels", "both"):
        raise typer.BadParameter(f"{values!r}: expected codes, labels or both", param_hint="--values")
    if "value_label" not in frame.columns or values == "both":
        return frame
    return frame.drop(columns=["value_label" if values == "codes" else "value"])


def _dictionary(cohort: Any, frame: pd.DataFrame) -> pd.DataFrame:
    from oaicohort.cohort.variables import dictionary_of

    with cohort.db.read() as session:
        return dictionary_of(frame, session)


def _dictionary_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.dictionary{out.suffix or '.csv'}")


def _write_frame(frame: pd.DataFrame, fmt: str, path: Path) -> None:
    from oaicohort.files import atomic_path, atomic_write_text

    if fmt == "parquet":
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
    elif fmt == "json":
        atomic_write_text(path, _records_json(frame) + "\n")
    else:
        atomic_write_text(path, frame.to_csv(index=False))


__all__ = ["cohort_command", "parse_sequence", "parse_var"]
