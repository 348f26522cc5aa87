"""The participant flow diagram (issue 23): its numbers equal `oai label`'s cohort table and the
cohort export; the SVG/PNG is drawn by Graphviz, and without the `dot` program the `.dot` text is
written and the user told how to install it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.flow import FlowBox, flow_counts, flow_dot, write_flow
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort, QueryError
from oaicohort.db import Database
from oaicohort.ingest.run import ingest_release
from tests.helpers.study_release import write_study_release

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")


def _cli(db: Database, *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, ["--db", db.url, *args])
    return res.exit_code, res.stdout, res.stderr


def test_flow_numbers_by_hand_on_each_backend(db: Database, tmp_path: Path) -> None:
    ingest_release(db, write_study_release(tmp_path / "release"))
    derive_labels(db)
    counts = Cohort(db).flow(site="A")
    assert (counts.enrolled.knees, counts.enrolled.subjects) == (12, 6)  # 6 enrollees, one knee unread (S6L)
    assert [(b.key, b.knees, b.subjects) for b in counts.excluded] == [
        ("no_knee_record", 1, 1),
        ("no_baseline_reading", 0, 0),
        ("baseline_klg_missing", 0, 0),
        ("baseline_klg_4", 1, 1),  # S4R
        ("lost_to_follow_up", 2, 1),  # S5R, S5L
        ("replaced_at_baseline", 0, 0),
        ("bmi_missing", 0, 0),
        ("no_baseline_dess", 0, 0),
    ]
    assert (counts.included.knees, counts.included.subjects) == (8, 5)
    assert counts.query is not None and counts.not_in_query is not None
    assert (counts.query.knees, counts.query.subjects) == (4, 2)  # site A: S1R, S1L, S2R, S2L
    assert (counts.not_in_query.knees, counts.not_in_query.subjects) == (4, 3)  # S3R, S3L, S4L, S6R
    assert {b.key: (b.knees, b.subjects) for b in counts.by_label} == {"none": (2, 2), "fast": (1, 1), "slow": (1, 1)}
    unfiltered = Cohort(db).flow()
    assert unfiltered.query is None and {b.key: b.knees for b in unfiltered.by_label} == {
        "none": 3,
        "fast": 4,
        "slow": 1,
    }
    with pytest.raises(QueryError, match="include_excluded"):
        Cohort(db).flow(include_excluded=True)


def test_flow_equals_the_label_table_and_the_export(synthetic_db: Database, tmp_path: Path) -> None:
    code, out, err = _cli(synthetic_db, "label", "-d", "panfilov2022", "--json")
    assert code == 0, err
    table = json.loads(out)
    code, out, err = _cli(synthetic_db, "cohort", "--flow", str(tmp_path / "flow.dot"), "--json")
    assert code == 0, err
    flow = json.loads(out)["flow"]
    assert flow["included"] == {"knees": table["knees"], "subjects": table["subjects"]}
    assert {k: v["knees"] for k, v in flow["excluded"].items()} == table["excluded"]  # same reasons, same order
    assert list(flow["excluded"]) == list(table["excluded"])
    assert {k: v["knees"] for k, v in flow["by_label"].items()} == {c: table[c] for c in ("none", "fast", "slow")}
    assert flow["enrolled"] == {"knees": 1600, "subjects": 800}
    assert flow["enrolled"]["knees"] == table["knees"] + sum(table["excluded"].values())
    # the export of the same query: its knees are the flow's last boxes
    export = tmp_path / "knees.csv"
    code, _, err = _cli(synthetic_db, "cohort", "--sex", "F", "--kl", "0", "--kl", "1", "--out", str(export))
    assert code == 0, err
    knees = pd.read_csv(export)
    code, out, err = _cli(
        synthetic_db, "cohort", "--sex", "F", "--kl", "0", "--kl", "1", "--flow", str(tmp_path / "q.dot"), "--json"
    )
    assert code == 0, err
    flow = json.loads(out)["flow"]
    assert flow["query"] == {"knees": len(knees), "subjects": knees["subject_id"].nunique()}
    assert flow["not_in_query"]["knees"] == table["knees"] - len(knees)
    by_label = knees.groupby("label").agg(knees=("knee_id", "size"), subjects=("subject_id", "nunique"))
    assert flow["by_label"] == {k: {"knees": int(r.knees), "subjects": int(r.subjects)} for k, r in by_label.iterrows()}
    assert flow["filters"] == {"sex": "F", "kl_baseline": [0, 1]}
    text = (tmp_path / "q.dot").read_text()
    assert "Not in the query (sex F, kl_baseline 0/1)" in text and f"n = {len(knees):,} knees" in text


@needs_dot
def test_svg_and_png_are_drawn(synthetic_db: Database, tmp_path: Path) -> None:
    code, _, err = _cli(synthetic_db, "cohort", "--flow", str(tmp_path / "flow.svg"))
    assert code == 0, err
    svg = (tmp_path / "flow.svg").read_text()
    assert "<svg" in svg and "Enrolled (panfilov2022)" in svg and "n = 1,600 knees (800 subjects)" in svg
    assert "Excluded: lost to follow up" in svg and not (tmp_path / "flow.dot").exists()
    counts = Cohort(synthetic_db).flow()
    assert write_flow(counts, tmp_path / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"n = {counts.included.knees:,} knees ({counts.included.subjects} subjects)" in svg


def test_without_the_dot_program_the_dot_text_is_written(
    synthetic_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no `dot` to be found
    code, _, err = _cli(synthetic_db, "cohort", "--flow", str(tmp_path / "flow.svg"))
    assert code == 1 and "Traceback" not in err
    message = " ".join(err.split())
    assert "Graphviz's `dot` program was not found" in message and "apt install graphviz" in message
    assert "conda install -c conda-forge graphviz" in message and "dot -Tsvg" in message
    assert not (tmp_path / "flow.svg").exists()
    text = (tmp_path / "flow.dot").read_text()
    assert text.startswith("digraph flow {") and text == flow_dot(Cohort(synthetic_db).flow())


def test_box_titles_and_bad_suffixes(synthetic_db: Database, tmp_path: Path) -> None:
    assert [FlowBox(k, 1, 1).text for k in ("baseline_klg_4", "bmi_missing", "no_baseline_dess", "no_follow_up")] == [
        "Baseline KLG 4",
        "BMI missing",
        "No baseline DESS",
        "No follow up",
    ]
    code, _, err = _cli(synthetic_db, "cohort", "--flow", "flow.txt")
    text = " ".join(err.replace("│", " ").split())  # the usage-error box wraps with the terminal width
    assert code == 2 and "flow.txt" in text and ".svg, .png, .pdf, .dot" in text
    counts = flow_counts(synthetic_db, "panfilov2022_tte")
    assert "no_follow_up" in {b.key for b in counts.excluded}
    assert {b.key for b in counts.by_label} == {"none", "fast", "slow", "no_label"}  # censored knees
    assert sum(b.knees for b in counts.by_label) == counts.included.knees
