"""``oai cohort``'s methods-section outputs: ``--flow``, ``--table1``, ``--km`` and ``--match``.

The command (``oaicli.cohort``) parses the query; this module checks these options, calls the
API (``oaicohort.cohort.flow``, ``baseline``, ``kaplan_meier``, ``matching``) on the query's
knees, writes the files and renders the matching's balance and unmatched cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table

from oaicli.common import err_console, out_console

if TYPE_CHECKING:
    import pandas as pd

    from oaicohort.cohort.matching import MatchSpec
    from oaicohort.db import Database

FLOW_SUFFIXES = (".svg", ".png", ".pdf", ".dot")
TABLE1_SUFFIXES = (".md", ".csv", ".html")
KM_SUFFIXES = (".png", ".svg", ".pdf")


@dataclass
class StudyOptions:
    """The methods-section options of one ``oai cohort`` call."""

    flow: Path | None = None
    table1: Path | None = None
    by: str | None = None
    pval: bool = False
    km: Path | None = None
    match: str | None = None
    on: str | None = None
    ratio: int = 1
    seed: int = 0

    @property
    def outputs(self) -> bool:
        """Whether any file of this module is asked for (or a matching)."""
        return any(o is not None for o in (self.flow, self.table1, self.km, self.match))


def _suffix(path: Path | None, allowed: tuple[str, ...], option: str) -> None:
    if path is not None and path.suffix.lower() not in allowed:
        raise typer.BadParameter(f"{path}: expected a file ending in {', '.join(allowed)}", param_hint=option)


def check_options(study: StudyOptions, *, saved: bool, trajectories: bool) -> MatchSpec | None:
    """Usage errors (exit 2) before anything runs; the matching's spec when one is asked for."""
    _suffix(study.flow, FLOW_SUFFIXES, "--flow")
    _suffix(study.table1, TABLE1_SUFFIXES, "--table1")
    _suffix(study.km, KM_SUFFIXES, "--km")
    if study.outputs and (saved or trajectories):
        what = "--saved" if saved else "--trajectories"
        raise typer.BadParameter(
            f"--flow, --table1, --km and --match work on a knee query, not {what}", param_hint=what
        )
    if study.by is not None and study.table1 is None and study.km is None:
        raise typer.BadParameter("--by groups --table1 or --km: give one of them", param_hint="--by")
    if study.pval and study.table1 is None:
        raise typer.BadParameter("--pval adds p-values to --table1", param_hint="--pval")
    if study.match is None:
        if study.on is not None or study.ratio != 1 or study.seed != 0:
            raise typer.BadParameter("--on, --ratio and --seed describe a matching: give --match", param_hint="--match")
        return None
    if study.on is None:
        raise typer.BadParameter(
            "--match needs --on VARIABLES, e.g. --on kl_baseline,sex,bmi:2.5,age:5", param_hint="--on"
        )
    from oaicohort.cohort.matching import MatchSpec
    from oaicohort.cohort.variables import QueryError

    try:
        return MatchSpec.parse(study.match, study.on, ratio=study.ratio, seed=study.seed)
    except QueryError as exc:
        raise typer.BadParameter(str(exc), param_hint="--match/--on") from None


def write_outputs(
    db: Database,
    study: StudyOptions,
    frame: pd.DataFrame,
    *,
    query: pd.DataFrame,
    filters: dict[str, Any],
    show: bool,
) -> dict[str, Any]:
    """Write the files asked for; returns their numbers (what ``--json`` prints). ``frame`` is the
    cohort (matched: ``attrs["matching"]``; with times where the definition has them), ``query``
    the query's knees before matching."""
    out: dict[str, Any] = {}
    matching = frame.attrs.get("matching")
    if matching is not None:
        out["match"] = matching
        if show:
            render_matching(matching)
    if study.flow is not None:
        from oaicohort.cohort.flow import flow_counts, write_flow
        from oaicohort.cohort.matching import MatchSpec

        counts = flow_counts(
            db,
            int(query.attrs["definition_id"]),
            query=query,
            filters=filters,
            matched=None if matching is None else frame,
            matching=None if matching is None else MatchSpec.from_dict(matching["spec"]).describe(),
        )
        out["flow"] = counts.to_dict()
        path = write_flow(counts, study.flow)
        err_console.print(
            f"flow diagram written to {path} ({counts.enrolled.subjects} subjects enrolled, "
            f"{counts.included.knees} knees / {counts.included.subjects} subjects included)",
            highlight=False,
        )
    if study.table1 is not None:
        from oaicohort.cohort.baseline import baseline_table
        from oaicohort.cohort.variables import dictionary_of

        with db.read() as session:
            dictionary = dictionary_of(frame, session)
        variables = list(frame.attrs.get("variables", {}))
        table = baseline_table(
            frame, by=study.by or "label", variables=variables, dictionary=dictionary, pval=study.pval
        )
        table.write(study.table1)
        out["table1"] = table.table.to_dict("records")
        err_console.print(
            f"baseline table by {table.by} ({', '.join(table.groups)}) written to {study.table1}", highlight=False
        )
    if study.km is not None:
        from oaicohort.cohort.kaplan_meier import kaplan_meier

        if "time_months" not in frame.columns:
            from oaicohort.cohort.variables import QueryError

            raise QueryError(
                f"--km: definition {frame.attrs.get('definition')!r} has no times to event; derive one with "
                'outcome = "time_to_event" (oai label --definition-file) and give it with -d'
            )
        km = kaplan_meier(frame, by=study.by)
        km.write(study.km)
        out["km"] = km.to_dict()
        err_console.print(f"Kaplan-Meier curves written to {study.km}", highlight=False)
    return out


def render_matching(matching: dict[str, Any]) -> None:
    """The balance table and the unmatched cases of a matching (saved or just made)."""
    counts = matching.get("counts", {})
    out_console.print(
        f"matched {counts.get('cases_matched', 0)} of {counts.get('cases', 0)} cases with "
        f"{counts.get('controls_matched', 0)} controls ({counts.get('cases_fully_matched', 0)} with all "
        f"{matching['spec']['ratio']}); {counts.get('cases_unmatched', 0)} cases unmatched",
        highlight=False,
    )
    table = Table(title="Balance (standardised mean differences)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("variable", "rule", "before", "after"):
        table.add_column(col, justify="right" if col in ("before", "after") else "left")
    for row in matching.get("balance", []):
        table.add_row(row["variable"], row["rule"], _smd(row["smd_before"]), _smd(row["smd_after"]))
    out_console.print(table)
    unmatched = [r for r in matching.get("unmatched", []) if r["controls"] == 0]
    short = len(matching.get("unmatched", [])) - len(unmatched)
    if unmatched:
        table = Table(title=f"{len(unmatched)} case(s) unmatched", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("subject", "side", "reason"):
            table.add_column(col)
        for row in unmatched:
            table.add_row(str(row["subject_id"]), row["side"], row["reason"])
        out_console.print(table)
    if short:
        out_console.print(
            f"{short} case(s) kept with fewer than {matching['spec']['ratio']} controls (--json lists each with why)",
            highlight=False,
        )


def _smd(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


__all__ = ["StudyOptions", "check_options", "render_matching", "write_outputs"]
