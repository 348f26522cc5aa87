"""Time-to-event outcomes (issue 23): times and event types by hand on the small study release,
agreement with the fixed-window labels on every knee of a synthetic release, hashes, the export,
and Kaplan-Meier curves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.definition_files import load_definition_file
from oaicohort.cohort.definitions import PRESETS, preset
from oaicohort.cohort.kaplan_meier import kaplan_meier
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort, QueryError
from oaicohort.cohort.stored import stored_labels
from oaicohort.db import Database
from oaicohort.ingest.run import ingest_release
from tests.helpers.study_release import READINGS, S1, S2, S3, S4, S5, S6, time_to_event_twin, write_study_release

# (subject, side) -> (label, exclusion, time_months, event_type); hand-derived from study_release
# under panfilov2022's rules as a time-to-event definition (examined: 12, 24, 36, 72, 96 months)
PANFILOV_TTE = {
    (S1, "R"): ("none", None, 96.0, None),  # KL0 throughout: censored at the last graded reading
    (S1, "L"): ("fast", None, 24.0, "progression"),
    (S2, "R"): ("slow", None, 72.0, "progression"),
    (S2, "L"): ("none", None, 96.0, None),  # 0 -> 1 is not an event
    (S3, "R"): ("none", None, 96.0, None),
    (S3, "L"): ("fast", None, 24.0, "progression"),
    (S4, "R"): (None, "baseline_klg_4", None, None),
    (S4, "L"): ("fast", None, 12.0, "progression"),
    # S5R: read at 0, 12, 24 only; its subject is in the 96-month file (S5L), so the fixed window
    # calls it a non-progressor: here it is censored at 24 months, still labelled none
    (S5, "R"): ("none", None, 24.0, None),
    (S5, "L"): ("none", None, 96.0, None),
    # the missing 12-month KLG is panfilov2022's replacement proxy: a knee replacement at 12
    (S6, "R"): ("fast", None, 12.0, "knee_replacement"),
}
READINGS_TTE: dict[tuple[int, str], dict[int, tuple[Any, Any, Any]]] = {
    **READINGS,
    (S5, "R"): {0: (1, 0, 0), 1: (1, 0, 0), 3: (1, 0, 0)},
    (S5, "L"): {0: (1, 0, 0), 10: (1, 0, 0)},
}
TTE_TOML = """
name = "panfilov_tte"
outcome = "time_to_event"
"""


def _tte(db: Database, definition_id: int) -> dict[tuple[int, str], tuple[Any, ...]]:
    with db.read() as session:
        labels = stored_labels(session, definition_id)
    out = {}
    for r in labels.itertuples(index=False):
        values = (r.label, r.exclusion, r.time_months, r.event_type)
        out[(int(r.subject_id), r.side)] = tuple(None if pd.isna(v) else v for v in values)
    return out


def test_time_to_event_by_hand_on_each_backend(db: Database, tmp_path: Path) -> None:
    ingest_release(db, write_study_release(tmp_path / "release", READINGS_TTE))
    result = derive_labels(db, time_to_event_twin("panfilov2022"))
    assert _tte(db, result.definition_id) == PANFILOV_TTE
    # the same knees under the fixed window: S5R is "none", only the time tells it was seen to 24
    fixed = derive_labels(db, "panfilov2022")
    assert {(int(s), side) for s, side in zip(fixed.labels["subject_id"], fixed.labels["side"])} == set(PANFILOV_TTE)
    # the knee's own last visit: oai_tkr2024 rules call S5R lost to follow-up, the twin censors it
    tkr = derive_labels(db, time_to_event_twin("oai_tkr2024"))
    got = _tte(db, tkr.definition_id)
    assert got[(S5, "R")] == (None, None, 24.0, None)  # included, censored, no fixed-window label
    assert got[(S6, "R")] == ("none", None, 96.0, None)  # oai_tkr2024 skips the missing reading
    assert got[(S1, "L")] == ("fast", None, 24.0, "progression")
    # the fixed-window labels carry no times
    assert _tte(db, fixed.definition_id)[(S1, "L")] == ("fast", None, None, None)


def test_a_knee_without_graded_follow_up_is_excluded(db: Database, tmp_path: Path) -> None:
    ingest_release(db, write_study_release(tmp_path / "release"))  # S5: baseline readings only
    result = derive_labels(db, time_to_event_twin("panfilov2022"))
    got = _tte(db, result.definition_id)
    assert got[(S5, "R")] == got[(S5, "L")] == (None, "no_follow_up", None, None)
    assert result.counts()["excluded"]["no_follow_up"] == 2 and "lost_to_follow_up" not in result.counts()["excluded"]


def test_hashes_of_existing_definitions_stay_and_the_outcome_is_hashed() -> None:
    # published hashes (tests/cohort/test_definition_identity.py pins them too)
    assert (
        preset("panfilov2022").canonical_json()
        == dataclasses.replace(preset("panfilov2022"), name="x").canonical_json()
    )
    assert '"outcome"' not in preset("panfilov2022").canonical_json()
    twin = time_to_event_twin("panfilov2022")
    assert '"outcome":"time_to_event"' in twin.canonical_json() and twin.hash() != preset("panfilov2022").hash()
    assert {p.hash() for p in PRESETS.values()}.isdisjoint({time_to_event_twin(n).hash() for n in PRESETS})


def test_definition_file_and_the_no_follow_up_reason(tmp_path: Path) -> None:
    path = tmp_path / "tte.toml"
    path.write_text(TTE_TOML)
    params = load_definition_file(path)
    assert params.time_to_event and params.hash() == time_to_event_twin("panfilov2022").hash()
    assert "no_follow_up" in params.exclusion_reasons and "lost_to_follow_up" not in params.exclusion_reasons


@pytest.mark.parametrize("name", ["panfilov2022", "oai_tkr2024"])
def test_agrees_with_the_fixed_window_labels_on_every_knee(synthetic_db: Database, name: str) -> None:
    cohort = Cohort(synthetic_db)
    fixed = cohort.knees(definition=name, split=None, include_excluded=True).set_index("knee_id")
    tte = cohort.time_to_event(definition=f"{name}_tte", split=None, include_excluded=True).set_index("knee_id")
    assert fixed.index.equals(tte.index) and len(fixed) == 1600
    params = preset(name)
    boundary, horizon = params.fast_before_month, params.horizon_month
    seen: dict[str, int] = {}
    for knee, f in fixed.iterrows():
        t = tte.loc[knee]
        included = pd.isna(t["exclusion"])
        key = f["label"] if pd.isna(f["exclusion"]) else f["exclusion"]
        seen[key] = seen.get(key, 0) + 1
        if f["label"] == "fast":
            assert included and t["event"] == 1 and t["time_months"] < boundary, knee
            assert t["time_months"] == f["progression_month"] and t["label"] == "fast"
        elif f["label"] == "slow":
            assert included and t["event"] == 1 and boundary <= t["time_months"] <= horizon, knee
            assert t["time_months"] == f["progression_month"] and t["label"] == "slow"
        elif f["label"] == "none":
            if not included:  # no graded follow-up: only the subject-level rule calls it "none"
                assert t["exclusion"] == "no_follow_up" and params.non_progressor_requires == "subject_at_last_visit"
                continue
            assert t["event"] == 0 and t["label"] == "none" and t["time_months"] <= horizon, knee
            if params.non_progressor_requires == "knee_at_last_visit":
                assert t["time_months"] == horizon, knee  # seen graded at 96 months
        elif f["exclusion"] == "lost_to_follow_up":  # censored before the horizon, or nothing to censor
            if included:
                assert t["event"] == 0 and t["time_months"] < horizon and pd.isna(t["label"]), knee
            else:
                assert t["exclusion"] in ("no_follow_up", *params.exclusions), knee
        else:  # every other exclusion is decided before any follow-up is looked at
            assert t["exclusion"] == f["exclusion"], knee
        if included and t["event"] == 1:  # and the other way round
            assert f["label"] == ("fast" if t["time_months"] < boundary else "slow"), knee
        if t["event_type"] == "knee_replacement" and params.missing_klg == "progression_proxy":
            assert f["kl_increase"] == 5 - f["kl_baseline"], knee  # the reference's proxy
    assert seen["fast"] > 50 and seen["slow"] > 20 and seen["none"] > 300 and seen["lost_to_follow_up"] > 100


def test_export_columns_and_values(synthetic_db: Database, tmp_path: Path) -> None:
    out = tmp_path / "tte.csv"
    res = CliRunner().invoke(
        app, ["--db", synthetic_db.url, "cohort", "-d", "oai_tkr2024_tte", "--format", "csv", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(out)
    columns = list(frame.columns)
    assert columns[columns.index("kl_increase") + 1 : columns.index("kl_increase") + 4] == [
        "time_months",
        "event",
        "event_type",
    ]
    expected = Cohort(synthetic_db).time_to_event(definition="oai_tkr2024_tte")
    assert len(frame) == len(expected) > 900
    assert frame["time_months"].tolist() == expected["time_months"].tolist()
    assert frame["event"].tolist() == expected["event"].astype(int).tolist()
    assert (frame["event"] == frame["event_type"].notna()).all()
    assert set(frame["event_type"].dropna()) == {"progression", "knee_replacement"}
    # a fixed-window definition exports no times
    res = CliRunner().invoke(app, ["--db", synthetic_db.url, "cohort", "--format", "csv"])
    assert "time_months" not in res.stdout.splitlines()[0]


def test_kaplan_meier_against_a_hand_product_limit(synthetic_db: Database, tmp_path: Path) -> None:
    frame = Cohort(synthetic_db).time_to_event(definition="panfilov2022_tte")
    km = kaplan_meier(frame, by="sex")
    for sex, name in (("F", "Female"), ("M", "Male")):
        part = frame[frame["sex"] == sex]
        curve = km.curves[km.curves["group"] == name].set_index("time_months")["survival"]
        survival = 1.0
        for month in sorted(part["time_months"].unique()):
            at_risk = (part["time_months"] >= month).sum()
            events = ((part["time_months"] == month) & (part["event"] == 1)).sum()
            survival *= 1 - events / at_risk
            if events:
                assert curve.loc[month] == pytest.approx(survival), (name, month)
        assert km.at_risk.loc[name].tolist() == [int((part["time_months"] >= m).sum()) for m in range(0, 97, 12)]
    assert km.logrank_p is not None and 0 <= km.logrank_p <= 1
    # progression only: a replaced knee is censored at its replacement
    progression = kaplan_meier(frame, event_types=("progression",))
    assert int(progression.events["events"].sum()) == int((frame["event_type"] == "progression").sum())
    assert int(km.events["events"].sum()) == int(frame["event"].sum())
    out = km.write(tmp_path / "km.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_km_and_its_errors(synthetic_db: Database, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "--db",
            synthetic_db.url,
            "cohort",
            "-d",
            "panfilov2022_tte",
            "--km",
            str(tmp_path / "km.svg"),
            "--by",
            "sex",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    km = json.loads(res.stdout)["km"]
    assert set(km["groups"]) == {"Female", "Male"} and km["by"] == "sex"
    assert (tmp_path / "km.svg").read_text().lstrip().startswith("<?xml")
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--km", str(tmp_path / "km.png")])
    assert res.exit_code == 2 and "has no times to event" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["--db", synthetic_db.url, "cohort", "--km", str(tmp_path / "km.txt")])
    assert res.exit_code == 2 and "km.txt" in res.output
    with pytest.raises(QueryError, match="has no times to event"):
        Cohort(synthetic_db).time_to_event()
    with pytest.raises(QueryError, match="event types"):
        kaplan_meier(Cohort(synthetic_db).time_to_event(definition="panfilov2022_tte"), event_types=("death",))
    assert np.isfinite(
        kaplan_meier(Cohort(synthetic_db).time_to_event(definition="panfilov2022_tte")).curves["survival"]
    ).all()


def test_a_time_to_event_definition_can_be_split(db: Database, tmp_path: Path) -> None:
    from oaicohort.cohort.splits import make_split

    ingest_release(db, write_study_release(tmp_path / "release", READINGS_TTE))
    derive_labels(db, time_to_event_twin("oai_tkr2024"))  # S5R: included, censored, no label
    split = make_split(db, definition="oai_tkr2024_tte", test_sites=("B",), folds=2, seed=0)
    assigned = split.assignments.set_index(["subject_id", "side"])
    # the censored knee trains in a fold, stratified as a class of its own
    assert pd.isna(assigned.loc[(S5, "R"), "label"]) and assigned.loc[(S5, "R"), "role"] == "train"
    assert assigned.loc[(S5, "R"), "fold"] in (0, 1)
    assert set(assigned.loc[assigned["role"] == "train", "fold"]) == {0, 1}
