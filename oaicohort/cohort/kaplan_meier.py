"""Kaplan-Meier curves with numbers at risk, from a cohort's time-to-event columns.

``kaplan_meier(frame, by="sex")`` takes knees with ``time_months`` and ``event_type``
(:func:`oaicohort.cohort.time_to_event.time_to_event`) and estimates, per group of ``by``, the
proportion of knees still event-free over time, with pointwise 95% confidence intervals
(log-log), by ``scikit-survival``'s ``kaplan_meier_estimator`` (the ``[study]`` extra); with
several groups, a log-rank test (``compare_survival``). The figure (matplotlib) draws the curves
and, under them, the numbers at risk: knees whose time is at least the month shown.

By default every event counts (progression and knee replacement: a composite, like the
fixed-window labels); ``event_types=("progression",)`` counts progression only and censors a
replaced knee at its replacement (a cause-specific curve, which overstates the progression a
cohort would see when replacements compete: say so when reporting it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oaicohort.cohort import study_extra
from oaicohort.cohort.baseline import SEX_LABELS
from oaicohort.cohort.variables import QueryError, QueryStateError
from oaicohort.errors import OAIError
from oaicohort.vocabulary import CLASSES, EVENT_TYPES

ALL = "all knees"
FORMATS = ("png", "svg", "pdf")


@dataclass
class KaplanMeier:
    """Estimates per group: ``curves`` (group, time_months, survival, lower, upper), ``at_risk``
    (one row per group, one column per month shown), ``events`` (group, knees, events), the
    log-rank p-value with several groups, and the matplotlib ``figure``."""

    by: str | None
    event_types: tuple[str, ...]
    curves: pd.DataFrame
    at_risk: pd.DataFrame
    events: pd.DataFrame
    logrank_p: float | None
    figure: Any

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        fmt = out.suffix.lower().lstrip(".")
        if fmt not in FORMATS:
            raise OAIError(f"{out}: Kaplan-Meier curves are written as {', '.join('.' + f for f in FORMATS)}")
        self.figure.savefig(out, format=fmt, dpi=150, bbox_inches="tight")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "event_types": list(self.event_types),
            "logrank_p": self.logrank_p,
            "groups": {
                str(r.group): {"knees": int(r.knees), "events": int(r.events), "at_risk": self._at_risk(r.group)}
                for r in self.events.itertuples(index=False)
            },
        }

    def _at_risk(self, group: Any) -> dict[str, int]:
        row = self.at_risk.loc[group]
        return {str(int(m)): int(v) for m, v in row.items()}


def _groups(frame: pd.DataFrame, by: str | None) -> pd.Series:
    if by is None:
        return pd.Series(ALL, index=frame.index)
    if by not in frame.columns:
        raise QueryError(f"--by {by}: not a column of the cohort; columns: {', '.join(map(str, frame.columns))}")
    values = frame[by].map(SEX_LABELS) if by == "sex" else frame[by]
    return values.astype(object).where(values.notna(), "missing").map(str)


def _order(groups: pd.Series, by: str | None) -> list[str]:
    present = list(dict.fromkeys(groups))
    preferred = [*CLASSES, *SEX_LABELS.values()] if by in ("label", "sex") else []
    return [g for g in preferred if g in present] + sorted(g for g in present if g not in preferred)


def kaplan_meier(
    frame: pd.DataFrame,
    *,
    by: str | None = None,
    event_types: Sequence[str] = EVENT_TYPES,
    at: Sequence[float] | None = None,
    title: str | None = None,
) -> KaplanMeier:
    """Kaplan-Meier estimates and figure of ``frame``'s knees (see the module docstring)."""
    nonparametric, compare = study_extra.sksurv("Kaplan-Meier curves")
    bad = [e for e in event_types if e not in EVENT_TYPES]
    if bad or not event_types:
        raise QueryError(f"event types {bad or '[]'}: expected some of {list(EVENT_TYPES)}")
    if "time_months" not in frame.columns:
        raise QueryError("Kaplan-Meier curves need time_months: query a time-to-event definition")
    data = frame[frame["time_months"].notna()]
    if data.empty:
        raise QueryStateError("Kaplan-Meier curves: no knee has a time to event")
    time = data["time_months"].to_numpy(dtype=float)
    event = data["event_type"].isin(list(event_types)).to_numpy()
    groups = _groups(data, by)
    order = _order(groups, by)
    months = np.asarray(at if at is not None else np.arange(0, np.nanmax(time) + 1, 12), dtype=float)
    curves, risk, counts = [], {}, []
    for g in order:
        mask = (groups == g).to_numpy()
        t, s, ci = _estimate(nonparametric, event[mask], time[mask])
        curves.append(pd.DataFrame({"group": g, "time_months": t, "survival": s, "lower": ci[0], "upper": ci[1]}))
        risk[g] = [int((time[mask] >= m).sum()) for m in months]
        counts.append({"group": g, "knees": int(mask.sum()), "events": int(event[mask].sum())})
    p_value = None
    if len(order) > 1 and event.any():
        y = np.array(list(zip(event, time)), dtype=[("event", bool), ("time", float)])
        p_value = float(compare.compare_survival(y, groups.to_numpy())[1])
    at_risk = pd.DataFrame.from_dict(risk, orient="index", columns=[int(m) for m in months])
    result = KaplanMeier(
        by, tuple(event_types), pd.concat(curves, ignore_index=True), at_risk, pd.DataFrame(counts), p_value, None
    )
    result.figure = _figure(result, months, title)
    return result


def _estimate(nonparametric: Any, event: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps from month 0 (survival 1), with log-log 95% intervals."""
    with warnings.catch_warnings():
        # an interval is undefined where survival is 0 or 1: sksurv warns and we draw none there
        warnings.simplefilter("ignore", RuntimeWarning)
        t, s, ci = nonparametric.kaplan_meier_estimator(event, time, conf_type="log-log")
    ci = np.where(np.isnan(ci), s, ci)
    if len(t) == 0 or t[0] > 0:
        t, s, ci = np.r_[0.0, t], np.r_[1.0, s], np.c_[[1.0, 1.0], ci]
    return t, s, ci


def _name(by: str | None, group: str) -> str:
    return group if by in (None, "label", "sex") else f"{by} {group}"


def _figure(km: KaplanMeier, months: np.ndarray, title: str | None) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    groups = list(km.at_risk.index)
    fig = Figure(figsize=(7.0, 4.2 + 0.25 * len(groups)))
    ax = fig.add_axes((0.16, 0.2 + 0.05 * len(groups), 0.8, 0.7 - 0.05 * len(groups)))
    for i, g in enumerate(groups):
        c = km.curves[km.curves["group"] == g]
        color = f"C{i}"
        ax.step(
            c["time_months"],
            c["survival"],
            where="post",
            color=color,
            label=f"{_name(km.by, g)} (n = {km.at_risk.loc[g].iloc[0]})",
        )
        ax.fill_between(c["time_months"], c["lower"], c["upper"], step="post", color=color, alpha=0.15, linewidth=0)
    ax.set_xlim(months[0], months[-1] if len(months) > 1 else None)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(months)
    ax.set_xlabel("Months from baseline")
    ax.set_ylabel("Event-free (proportion of knees)")
    events = " or ".join(e.replace("_", " ") for e in km.event_types)
    heading = title or f"Kaplan-Meier: time to {events}"
    if km.logrank_p is not None:
        heading += f" (log-rank p = {km.logrank_p:.3g})"
    ax.set_title(heading, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    # numbers at risk, one row per group, under the month ticks (x in months, y in axes units)
    under = ax.get_xaxis_transform()
    ax.text(-0.05, -0.2, "At risk", transform=ax.transAxes, fontsize=8, weight="bold", ha="right")
    for i, g in enumerate(groups):
        y = -0.2 - 0.075 * (i + 1)
        ax.text(-0.05, y, _name(km.by, g)[:16], transform=ax.transAxes, fontsize=8, color=f"C{i}", ha="right")
        for m, n in zip(months, km.at_risk.loc[g]):
            ax.text(m, y, str(n), transform=under, fontsize=8, ha="center")
    return fig


__all__ = ["KaplanMeier", "kaplan_meier"]
