"""The participant flow diagram (STROBE/CONSORT) of a label definition and a query.

``flow_counts(db, "panfilov2022", site="A")`` counts, from the stored labels, the knees and
subjects enrolled, excluded for each reason in the order the definition checks them, included,
left out by the query's filters, and included per label. They are the numbers of ``oai label``'s
cohort table (:mod:`oaicohort.cohort.summary`) and of ``oai cohort``'s export of the same query.

``flow_graph(counts)`` lays the boxes out with Graphviz (the ``graphviz`` package of the
``[study]`` extra writes the ``dot`` text; the system's ``dot`` program draws it).
``write_flow(counts, "flow.svg")`` writes SVG, PNG or PDF; where ``dot`` is missing it writes the
``.dot`` text beside the requested file and raises :class:`GraphvizNotFoundError` saying how to
install Graphviz.

Enrolled knees are two per enrolled subject; a knee with no reading, image or outcome in the
release has no record (``no_knee_record``, shown only when there is one). Subjects are counted in
every box they have a knee in, so subject counts of the exclusion boxes do not add up: a subject
whose two knees leave for different reasons is in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from oaicohort.cohort import study_extra
from oaicohort.cohort.definitions import LabelDefinitionParams
from oaicohort.cohort.stored import stored_definition, stored_labels
from oaicohort.cohort.summary import reason_counts
from oaicohort.db import Database
from oaicohort.db.schema import Subject
from oaicohort.errors import OAIError
from oaicohort.vocabulary import CLASSES, DEFAULT_DEFINITION, SIDES

NO_KNEE_RECORD = "no_knee_record"
NOT_IN_QUERY = "not_in_query"
NOT_MATCHED = "not_matched"
NO_LABEL = "no_label"  # time-to-event: included, censored before the definition calls it a non-progressor
FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_GRAPHVIZ = (
    "apt install graphviz (Debian/Ubuntu), brew install graphviz, or conda install -c conda-forge graphviz"
)
_TEXT = {
    NO_KNEE_RECORD: "No record of the knee",
    NOT_IN_QUERY: "Not in the query",
    NOT_MATCHED: "Not matched",
    NO_LABEL: "Censored, no fixed-window label",
    "none": "Non-progressors",
    "fast": "Fast progressors",
    "slow": "Slow progressors",
}

_ACRONYMS = {"klg": "KLG", "bmi": "BMI", "dess": "DESS", "jsn": "JSN"}


class GraphvizNotFoundError(OAIError):
    """Graphviz's ``dot`` program is missing: the diagram's ``.dot`` text was written instead."""


@dataclass(frozen=True)
class FlowBox:
    """One box of the diagram: what it is, and its knees and subjects."""

    key: str
    knees: int
    subjects: int

    @property
    def text(self) -> str:
        if self.key in _TEXT:
            return _TEXT[self.key]
        words = [_ACRONYMS.get(w, w) for w in self.key.split("_")]
        return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


@dataclass
class FlowCounts:
    """Every box of the flow diagram (see the module docstring)."""

    definition: str
    params_hash: str
    enrolled: FlowBox
    excluded: list[FlowBox]  # in the order the definition checks them
    included: FlowBox
    filters: dict[str, Any] = field(default_factory=dict)
    query: FlowBox | None = None  # the knees the query keeps (None: no filters)
    not_in_query: FlowBox | None = None
    matching: str | None = None  # the matching's description, when the cohort is a matched one
    matched: FlowBox | None = None
    not_matched: FlowBox | None = None  # cases without a control and controls not chosen
    by_label: list[FlowBox] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def box(b: FlowBox | None) -> dict[str, Any] | None:
            return None if b is None else {"knees": b.knees, "subjects": b.subjects}

        return {
            "definition": self.definition,
            "params_hash": self.params_hash,
            "enrolled": box(self.enrolled),
            "excluded": {b.key: box(b) for b in self.excluded},
            "included": box(self.included),
            "filters": {k: list(v) if isinstance(v, tuple) else v for k, v in self.filters.items()},
            "query": box(self.query),
            "not_in_query": box(self.not_in_query),
            "matching": self.matching,
            "matched": box(self.matched),
            "not_matched": box(self.not_matched),
            "by_label": {b.key: box(b) for b in self.by_label},
        }


def _box(key: str, frame: pd.DataFrame) -> FlowBox:
    return FlowBox(key, int(len(frame)), int(frame["subject_id"].nunique()))


def flow_counts(
    db: Database,
    definition: str | int | LabelDefinitionParams = DEFAULT_DEFINITION,
    *,
    query: pd.DataFrame | None = None,
    filters: dict[str, Any] | None = None,
    matched: pd.DataFrame | None = None,
    matching: str | None = None,
) -> FlowCounts:
    """Count the flow of ``definition``'s stored labels; ``query`` (the result of
    :meth:`~oaicohort.cohort.query.Cohort.knees` with ``filters``) narrows the included knees,
    ``matched`` (a matched cohort of those, described by ``matching``) narrows them again."""
    with db.read() as session:
        row = stored_definition(session, definition)
        labels = stored_labels(session, row.id)
        enrolled_subjects = int(session.execute(select(func.count(Subject.id))).scalar_one())
    try:
        params: LabelDefinitionParams | None = LabelDefinitionParams.from_dict(row.params)
    except Exception:  # a definition stored by another toolkit version: reasons as stored
        params = None
    # one record per knee of every enrolled subject; a knee the release never mentions has none
    recorded = labels.groupby("subject_id").size()
    missing_knees = len(SIDES) * enrolled_subjects - len(labels)
    missing_subjects = enrolled_subjects - int((recorded == len(SIDES)).sum())
    enrolled = FlowBox("enrolled", len(SIDES) * enrolled_subjects, enrolled_subjects)
    excluded = [FlowBox(NO_KNEE_RECORD, missing_knees, missing_subjects)] if missing_knees else []
    for reason in reason_counts(labels["exclusion"], params):
        excluded.append(_box(reason, labels[labels["exclusion"] == reason]))
    included = labels[labels["exclusion"].isna()]
    counts = FlowCounts(row.name, row.params_hash, enrolled, excluded, _box("included", included))
    kept = included
    if filters:
        if query is None:
            raise ValueError("flow_counts: filters describe a query; pass its result as query=")
        chosen = set(query["knee_id"].astype(int))
        kept = included[included["knee_id"].isin(chosen)]
        counts.filters = dict(filters)
        counts.query = _box("query", kept)
        counts.not_in_query = _box(NOT_IN_QUERY, included[~included["knee_id"].isin(chosen)])
    if matched is not None:
        pairs = set(matched["knee_id"].astype(int))
        counts.matching = matching or "matched"
        counts.matched = _box("matched", kept[kept["knee_id"].isin(pairs)])
        counts.not_matched = _box(NOT_MATCHED, kept[~kept["knee_id"].isin(pairs)])
        kept = kept[kept["knee_id"].isin(pairs)]
    for label in CLASSES:
        counts.by_label.append(_box(label, kept[kept["label"] == label]))
    unlabelled = kept[kept["label"].isna()]
    if len(unlabelled):
        counts.by_label.append(_box(NO_LABEL, unlabelled))
    return counts


# --------------------------------------------------------------------------- drawing


def _describe(filters: dict[str, Any]) -> str:
    parts = []
    for name, value in filters.items():
        if isinstance(value, tuple) and len(value) == 2 and name != "has_sequence":
            lo, hi = value
            parts.append(f"{name} {'' if lo is None else lo}-{'' if hi is None else hi}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{name} {'/'.join(str(v) for v in value)}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def _lower_first(text: str) -> str:
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]


def _label(title: str, box: FlowBox) -> str:
    knees = f"{box.knees:,} knee{'s' if box.knees != 1 else ''}"
    return f"{title}\\nn = {knees} ({box.subjects:,} subject{'s' if box.subjects != 1 else ''})"


def flow_graph(counts: FlowCounts) -> Any:
    """The diagram as a ``graphviz.Digraph``: the main column enrolled -> included (-> query) ->
    labels, each exclusion reason a box to the right of the main column, in order."""
    graphviz = study_extra.graphviz("the flow diagram")
    graph = graphviz.Digraph("flow", graph_attr={"rankdir": "TB", "nodesep": "0.4", "ranksep": "0.25"})
    graph.attr("node", shape="box", style="rounded", fontname="Helvetica", fontsize="11")
    graph.attr("edge", arrowsize="0.7")
    graph.node("enrolled", _label(f"Enrolled ({counts.definition})", counts.enrolled))
    previous = "enrolled"
    for i, box in enumerate(counts.excluded):
        point = f"p{i}"
        graph.node(point, shape="point", width="0.01")
        graph.edge(previous, point, arrowhead="none")
        graph.node(box.key, _label(f"Excluded: {_lower_first(box.text)}", box), style="rounded,dashed")
        with graph.subgraph() as rank:
            rank.attr(rank="same")
            rank.node(point)
            rank.node(box.key)
        graph.edge(point, box.key)
        previous = point
    graph.node("included", _label("Included", counts.included), penwidth="1.6")
    graph.edge(previous, "included")
    top = "included"
    if counts.query is not None and counts.not_in_query is not None:
        graph.node("qp", shape="point", width="0.01")
        graph.edge("included", "qp", arrowhead="none")
        graph.node(NOT_IN_QUERY, _label(f"Not in the query ({_describe(counts.filters)})", counts.not_in_query))
        with graph.subgraph() as rank:
            rank.attr(rank="same")
            rank.node("qp")
            rank.node(NOT_IN_QUERY)
        graph.edge("qp", NOT_IN_QUERY)
        graph.node("query", _label("In the query", counts.query), penwidth="1.6")
        graph.edge("qp", "query")
        top = "query"
    if counts.matched is not None and counts.not_matched is not None:
        graph.node("mp", shape="point", width="0.01")
        graph.edge(top, "mp", arrowhead="none")
        graph.node(
            NOT_MATCHED, _label("Not matched (cases without a control, controls not chosen)", counts.not_matched)
        )
        with graph.subgraph() as rank:
            rank.attr(rank="same")
            rank.node("mp")
            rank.node(NOT_MATCHED)
        graph.edge("mp", NOT_MATCHED)
        graph.node("matched", _label(f"Matched: {counts.matching}", counts.matched), penwidth="1.6")
        graph.edge("mp", "matched")
        top = "matched"
    with graph.subgraph() as rank:
        rank.attr(rank="same")
        for box in counts.by_label:
            rank.node(f"label_{box.key}", _label(box.text, box))
    for box in counts.by_label:
        graph.edge(top, f"label_{box.key}")
    return graph


def flow_dot(counts: FlowCounts) -> str:
    """The diagram's Graphviz source text."""
    return str(flow_graph(counts).source)


def write_flow(counts: FlowCounts, path: str | Path) -> Path:
    """Write the diagram to ``path`` (``.svg``, ``.png``, ``.pdf``, or ``.dot`` for the text only).

    Without Graphviz's ``dot`` program the text is written to ``path`` with suffix ``.dot`` and
    :class:`GraphvizNotFoundError` says so and how to install it."""
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise OAIError(f"{out}: a flow diagram is written as {', '.join('.' + f for f in FORMATS)}")
    graph = flow_graph(counts)
    if fmt == "dot":
        out.write_text(graph.source, encoding="utf-8")
        return out
    graphviz = study_extra.graphviz("the flow diagram")
    try:
        data = graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        dot = out.with_suffix(".dot")
        dot.write_text(graph.source, encoding="utf-8")
        raise GraphvizNotFoundError(
            f"Graphviz's `dot` program was not found, so {out} was not drawn; its source is in {dot}. "
            f"Install Graphviz ({INSTALL_GRAPHVIZ}), then run again or: dot -T{fmt} {dot} -o {out}"
        ) from None
    out.write_bytes(data)
    return out


__all__ = [
    "FORMATS",
    "FlowBox",
    "FlowCounts",
    "GraphvizNotFoundError",
    "flow_counts",
    "flow_dot",
    "flow_graph",
    "write_flow",
]
