"""Progression labels and exclusions on hand-made trajectories; expectations written by hand.

Trajectories map OAI visit codes (0, 1=12m, 3=24m, 5=36m, 6=48m, 8=72m, 10=96m) to a KLG, a
missing code (".P", ".T", "." ...) or a list of rows (reading-project duplicates, file order =
list order unless a ``(value, source_row)`` pair says otherwise; every row is reading project 15
unless a ``(value, source_row, project)`` triple names another).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.definitions import (
    LabelDefinitionError,
    LabelDefinitionParams,
    preset,
)
from oaicohort.cohort.labels import cohort_summary, derive_labels
from oaicohort.db import Database, open_database
from oaicohort.db.schema import (
    KneeLabel,
    LabelDefinition,
    Volume,
)
from oaicohort.db.stores import store_id_at
from oaicohort.errors import DatabaseStateError
from tests.helpers.cohort_rows import add_knee, add_subject

# --------------------------------------------------------------------------- cohort builder

FULL = {0: 1, 1: 1, 3: 1, 5: 1, 6: 1, 8: 1, 10: 1}  # a stable KLG-1 knee seen at every visit


def one_knee(s: Any, sid: int, readings: dict[int, Any], **kw: Any) -> int:
    subject_kw = {k: kw.pop(k) for k in ("site", "sex", "age", "bmi") if k in kw}
    add_subject(s, sid, **subject_kw)
    return add_knee(s, sid, "R", readings, **kw)


def _int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def _str(value: Any) -> str | None:
    return None if pd.isna(value) else str(value)


def labels_by_knee(db: Database, definition: Any = "panfilov2022") -> dict[int, tuple]:
    """knee id -> (label, exclusion, progression month, KLG increase) as derived and stored."""
    result = derive_labels(db, definition)
    return {
        int(r.knee_id): (_str(r.label), _str(r.exclusion), _int(r.progression_month), _int(r.kl_increase))
        for r in result.labels.itertuples()
    }


@pytest.fixture(scope="module")
def rules_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, dict[str, int]]]:
    """One subject per rule (knee ids by rule name); shared by the tests of this module, which
    only derive labels (never change the readings)."""
    db = open_database(tmp_path_factory.mktemp("rules") / "rules.sqlite")
    k: dict[str, int] = {}
    with db.write() as s:
        k["zero_to_one"] = one_knee(s, 9000001, {0: 0, 1: 1, 3: 1, 5: 1, 8: 1, 10: 1})
        k["zero_one_two"] = one_knee(s, 9000002, {0: 0, 1: 1, 3: 2, 5: 2, 8: 2, 10: 2})
        k["down_then_up"] = one_knee(s, 9000003, {0: 2, 1: 1, 3: 2, 5: 2, 8: 3, 10: 3})
        k["missing_followups"] = one_knee(s, 9000004, {0: 1, 8: 2, 10: 2})
        k["technical_missing"] = one_knee(s, 9000005, {0: 2, 1: 2, 3: ".T", 5: 2, 6: 2, 8: 2, 10: 2})
        k["prosthesis"] = one_knee(s, 9000006, {0: 3, 1: 3, 3: 3, 5: ".P", 6: ".P", 8: ".P", 10: ".P"})
        k["lost"] = one_knee(s, 9000007, {0: 1, 1: 1, 3: 1, 5: 1, 6: 1, 8: 1})
        k["klg4"] = one_knee(s, 9000008, {0: 4, 1: 4, 3: 4, 5: 4, 8: 4, 10: 4})
        k["baseline_missing"] = one_knee(s, 9000009, {0: ".", 1: 2, 3: 2, 5: 2, 8: 2, 10: 2})
        k["baseline_prosthesis"] = one_knee(s, 9000010, {0: ".P", 10: ".P"})
        # duplicates: the first row in file order wins even though it was inserted second
        k["duplicates"] = one_knee(
            s,
            9000011,
            {
                0: [(4, 501), (2, 401)],  # inserted KLG 4 first, but KLG 2 (row 401) is first in file
                1: 2,
                3: [(3, 902), (2, 901)],
                5: 3,
                8: 3,
                10: 3,
            },
        )
        k["only_48"] = one_knee(s, 9000012, {0: 1, 1: 1, 3: 1, 5: 1, 6: 2, 8: 1, 10: 1})
        k["only_48_then_gone"] = one_knee(s, 9000013, {0: 1, 1: 1, 3: 1, 5: 1, 6: 2})
        k["fast_36"] = one_knee(s, 9000014, {0: 2, 1: 2, 3: 2, 5: 3, 8: 3, 10: 3})
        k["slow_72"] = one_knee(s, 9000015, {0: 2, 1: 2, 3: 2, 5: 2, 8: 3, 10: 3})
        k["slow_96"] = one_knee(s, 9000016, {0: 0, 1: 0, 3: 0, 5: 0, 8: 1, 10: 2})
        k["bmi_missing"] = one_knee(s, 9000017, {0: 1, 1: 2, 10: 2}, bmi=None)
        k["no_dess"] = one_knee(s, 9000018, {0: 1, 1: 2, 10: 2}, dess=False)
        k["klg4_and_no_bmi"] = one_knee(s, 9000019, {0: 4, 10: 4}, bmi=None)
        k["lost_and_no_dess"] = one_knee(s, 9000020, {0: 1, 1: 1}, dess=False)
        k["replaced_at_baseline"] = one_knee(
            s, 9000021, {0: 3, 1: 3, 10: 3}, replacement={"status": 1, "at_baseline": True}
        )
        k["no_baseline_row"] = one_knee(s, 9000022, {1: 1, 10: 1})
        # lost knee whose other knee is in the 96-month file: a non-progressor for the reference
        add_subject(s, 9000023)
        k["lost_knee_other_seen"] = add_knee(s, 9000023, "R", {0: 1, 1: 1, 3: 1, 5: 1, 8: 1})
        k["other_knee_seen"] = add_knee(s, 9000023, "L", {0: 1, 10: 1})
        k["missing_at_96"] = one_knee(s, 9000024, {0: 1, 1: 1, 3: 1, 5: 1, 8: 1, 10: ".T"})
        k["tkr_outcomes"] = one_knee(
            s,
            9000025,
            {0: 2, 1: 2, 3: 2, 5: ".", 8: ".", 10: "."},
            replacement={"status": 1, "at_baseline": False, "visit_after": 5, "xray_visit_after": 5},
        )
        k["tkr_days_only"] = one_knee(
            s,
            9000026,
            {0: 2, 1: 2, 3: 2, 5: 2, 6: 2, 8: 2, 10: 2},
            replacement={"status": 1, "at_baseline": False, "days_from_enrolment": 800},
        )
        k["duplicate_ungraded_first"] = one_knee(
            s,
            9000027,
            {
                0: 1,
                1: 1,
                3: 1,
                5: 1,
                6: 1,
                8: [(".T", 50), (2, 60)],
                10: 2,
            },
        )
        # project 15's readings come after 37's and 42's in the file: they count all the same
        k["project_15_last"] = one_knee(
            s, 9000028, {0: [(2, 1001, 37), (1, 1002, 15)], 1: [(3, 1003, 42), (1, 1004, 15)], 3: 1, 5: 1, 8: 1, 10: 1}
        )
    yield db, k
    db.dispose()


@pytest.fixture(scope="module")
def rules_labels(rules_db: tuple[Database, dict[str, int]]) -> dict[str, dict[int, tuple]]:
    db, _ = rules_db
    return {name: labels_by_knee(db, name) for name in ("panfilov2022", "oai_tkr2024")}


# --------------------------------------------------------------------------- panfilov2022


PANFILOV_EXPECTED: dict[str, tuple] = {
    # rule: (label, exclusion, progression month, KLG increase)
    "zero_to_one": ("none", None, None, None),
    "zero_one_two": ("fast", None, 24, 2),
    "down_then_up": ("slow", None, 72, 1),
    "missing_followups": ("slow", None, 72, 1),
    "technical_missing": ("fast", None, 24, 3),  # missing KLG = progression, increase 5 - 2
    "prosthesis": ("fast", None, 36, 2),
    "lost": (None, "lost_to_follow_up", None, None),
    "klg4": (None, "baseline_klg_4", None, None),
    "baseline_missing": (None, "baseline_klg_missing", None, None),
    "baseline_prosthesis": (None, "baseline_klg_missing", None, None),
    # baseline 2 (row 401, not the KLG 4 of row 501), 24m 2 (row 901, not the 3 of row 902),
    # so the first progression is 3 at 36 months (fast at 24 if the later row won)
    "duplicates": ("fast", None, 36, 1),
    "only_48": ("none", None, None, None),  # 48 months is not examined
    "only_48_then_gone": (None, "lost_to_follow_up", None, None),
    "fast_36": ("fast", None, 36, 1),
    "slow_72": ("slow", None, 72, 1),
    "slow_96": ("slow", None, 96, 2),  # 0 -> 1 at 72 does not count, 2 at 96 does
    "bmi_missing": (None, "bmi_missing", None, None),
    "no_dess": (None, "no_baseline_dess", None, None),
    "klg4_and_no_bmi": (None, "baseline_klg_4", None, None),
    "lost_and_no_dess": (None, "lost_to_follow_up", None, None),
    "replaced_at_baseline": (None, "replaced_at_baseline", None, None),
    "no_baseline_row": (None, "no_baseline_reading", None, None),
    "lost_knee_other_seen": ("none", None, None, None),
    "other_knee_seen": ("none", None, None, None),
    "missing_at_96": ("slow", None, 96, 4),  # .T at 96 = progression proxy, 5 - 1
    "tkr_outcomes": ("fast", None, 36, 3),  # missing "." at 36 = proxy
    "tkr_days_only": ("none", None, None, None),  # Outcomes99 not read by the reference
    "duplicate_ungraded_first": ("slow", None, 72, 4),  # first row .T wins: proxy 5 - 1
    # baseline 1 and 12 months 1 by project 15 (by file order: 2 then 3, fast at 12 months)
    "project_15_last": ("none", None, None, None),
}

TKR_EXPECTED: dict[str, tuple] = {
    **PANFILOV_EXPECTED,
    "technical_missing": ("none", None, None, None),  # .T skipped like an absent row
    "prosthesis": ("fast", None, 36, 2),  # .P still counts
    "only_48": ("fast", None, 48, 1),
    "only_48_then_gone": ("fast", None, 48, 1),
    "lost_knee_other_seen": (None, "lost_to_follow_up", None, None),  # the knee itself is unseen
    "missing_at_96": (None, "lost_to_follow_up", None, None),  # not graded at 96
    "tkr_outcomes": ("fast", None, 36, 3),  # Outcomes99: replaced, first seen at 36 months
    "tkr_days_only": ("fast", None, 36, 3),  # day 800 = 26.3 months -> next X-ray visit, 36
    "duplicate_ungraded_first": ("slow", None, 72, 1),  # first graded row (KLG 2) wins
}


@pytest.mark.parametrize("rule", sorted(PANFILOV_EXPECTED))
def test_panfilov2022_rules(
    rules_db: tuple[Database, dict[str, int]], rules_labels: dict[str, dict[int, tuple]], rule: str
) -> None:
    assert rules_labels["panfilov2022"][rules_db[1][rule]] == PANFILOV_EXPECTED[rule]


@pytest.mark.parametrize("rule", sorted(TKR_EXPECTED))
def test_oai_tkr2024_rules(
    rules_db: tuple[Database, dict[str, int]], rules_labels: dict[str, dict[int, tuple]], rule: str
) -> None:
    assert rules_labels["oai_tkr2024"][rules_db[1][rule]] == TKR_EXPECTED[rule]


def test_baseline_kl_is_first_row_and_stored(rules_db: tuple[Database, dict[str, int]]) -> None:
    db, knees = rules_db
    result = derive_labels(db)
    row = result.labels.set_index("knee_id").loc[knees["duplicates"]]
    assert int(row["kl_baseline"]) == 2
    row = result.labels.set_index("knee_id").loc[knees["klg4"]]
    assert int(row["kl_baseline"]) == 4


def test_reading_order_file_takes_the_first_row_of_the_file(db: Database) -> None:
    with db.write() as s:
        late = one_knee(s, 9000128, {0: [(2, 1001, 37), (1, 1002, 15)], 1: [(3, 1003, 42), (1, 1004, 15)], 10: 1})
        same = one_knee(s, 9000129, {0: [(4, 1005), (2, 1006)], 1: 3, 10: 3})  # one project twice
    by_file = dataclasses.replace(preset("panfilov2022"), name="file_order", reading_order="file")
    got = labels_by_knee(db, by_file)
    assert got[late] == ("fast", None, 12, 1) and got[same] == (None, "baseline_klg_4", None, None)
    result = derive_labels(db)
    assert result.definition.reading_order == "project"
    got = labels_by_knee(db)
    assert got[late] == ("none", None, None, None) and got[same] == (None, "baseline_klg_4", None, None)
    # knees whose reading projects disagree: only the first (rows of one project do not count)
    assert result.disagreeing_knees == 1


def test_custom_definition_counts_zero_to_one_and_ignores_missing(db: Database) -> None:
    with db.write() as s:
        zero_one = one_knee(s, 9100001, {0: 0, 1: 1, 10: 1})
        tech = one_knee(s, 9100002, {0: 2, 3: ".T", 8: 3, 10: 3})
    custom = dataclasses.replace(preset("panfilov2022"), name="lenient", count_0_to_1=True, missing_klg="ignore")
    got = labels_by_knee(db, custom)  # type: ignore[arg-type]
    assert got[zero_one] == ("fast", None, 12, 1)
    assert got[tech] == ("slow", None, 72, 1)


def test_custom_boundary_horizon_and_allowed_grades(db: Database) -> None:
    with db.write() as s:
        at_36 = one_knee(s, 9100011, {0: 1, 5: 2, 8: 2})
        at_72 = one_knee(s, 9100012, {0: 1, 5: 1, 8: 2, 10: 3})
        kl3 = one_knee(s, 9100013, {0: 3, 5: 3, 8: 3})
    custom = dataclasses.replace(
        preset("panfilov2022"),
        name="short",
        fast_before_month=36,
        horizon_month=72,
        baseline_klg_allowed=(0, 1, 2),
    )
    got = labels_by_knee(db, custom)  # type: ignore[arg-type]
    assert got[at_36] == ("slow", None, 36, 1)  # 36 is not before 36
    assert got[at_72] == ("slow", None, 72, 1)  # 96 is beyond the horizon; 72 is the last visit
    assert got[kl3] == (None, "baseline_klg_3", None, None)


def test_image_store_exclusions(db: Database, tmp_path: Any) -> None:
    store = tmp_path / "vol.zarr"
    with db.write() as s:
        good = one_knee(s, 9200001, {0: 1, 10: 1})
        failed = one_knee(s, 9200002, {0: 1, 10: 1})
        absent = one_knee(s, 9200003, {0: 1, 10: 1})
        for knee, status in ((good, "ok"), (failed, "failed")):
            s.add(
                Volume(
                    knee_id=knee, visit=0, view="sag", store_id=store_id_at(s, store), params_hash="h", status=status
                )
            )
    result = derive_labels(db, "panfilov2022", store=store)
    by = {k: _str(v) for k, v in result.labels.set_index("knee_id")["exclusion"].items()}
    assert by == {good: None, failed: "image_failed", absent: "image_missing"}
    assert result.definition.image_store == str(store.resolve())
    # where images live is not part of the definition: deriving without the store re-derives
    # the labels of the same definition, now without image exclusions (issue 12)
    plain = derive_labels(db, "panfilov2022")
    assert plain.definition_id == result.definition_id
    assert plain.params_hash == result.params_hash
    assert plain.labels["exclusion"].isna().all()
    with db.read() as s:
        rows = s.execute(select(LabelDefinition.name, LabelDefinition.params)).all()
    assert [(name, params["image_store"]) for name, params in rows] == [("panfilov2022", None)]


def test_required_views_name_the_missing_input(db: Database, tmp_path: Any) -> None:
    store = tmp_path / "vol.zarr"
    with db.write() as s:
        both = one_knee(s, 9200021, {0: 1, 10: 1})
        no_xray = one_knee(s, 9200022, {0: 1, 10: 1})
        xray_failed = one_knee(s, 9200023, {0: 1, 10: 1})
        no_sag = one_knee(s, 9200024, {0: 1, 10: 1})
        cor_only = one_knee(s, 9200025, {0: 1, 10: 1})
        volumes = [
            (both, "sag", "ok"), (both, "xray", "ok"), (no_xray, "sag", "ok"), (xray_failed, "sag", "ok"),
            (xray_failed, "xray", "failed"), (no_sag, "xray", "ok"), (cor_only, "cor", "ok"),
        ]  # fmt: skip
        for knee, view, status in volumes:
            s.add(
                Volume(knee_id=knee, visit=0, view=view, store_id=store_id_at(s, store), params_hash="h", status=status)
            )
    result = derive_labels(db, "panfilov2022", store=store, require=("sag", "xray"))
    by = {k: _str(v) for k, v in result.labels.set_index("knee_id")["exclusion"].items()}
    assert by == {
        both: None,
        no_xray: "image_missing_xray",
        xray_failed: "image_failed_xray",
        no_sag: "image_missing_sag",  # sag is checked first: the order given
        cor_only: "image_missing_sag",
    }
    assert result.definition.required_views == ("sag", "xray")
    assert list(result.definition.exclusion_reasons[-4:]) == [
        "image_failed_sag", "image_missing_sag", "image_failed_xray", "image_missing_xray",
    ]  # fmt: skip
    # which views are required is not the definition's identity: one definition, re-derived
    plain = derive_labels(db, "panfilov2022", store=store)
    assert plain.params_hash == result.params_hash == preset("panfilov2022").hash()
    by = {k: _str(v) for k, v in plain.labels.set_index("knee_id")["exclusion"].items()}
    assert by == {both: None, no_xray: None, xray_failed: None, no_sag: "image_missing", cor_only: None}
    with pytest.raises(LabelDefinitionError, match="need an image store"):
        derive_labels(db, "panfilov2022", require=("xray",))
    with pytest.raises(LabelDefinitionError, match="required views must be distinct views"):
        derive_labels(db, "panfilov2022", store=store, require=("sag", "dess"))


def test_cli_label_require(db: Database, tmp_path: Any) -> None:
    store = tmp_path / "vol.zarr"
    with db.write() as s:
        knee = one_knee(s, 9200031, {0: 1, 10: 1})
        s.add(Volume(knee_id=knee, visit=0, view="sag", store_id=store_id_at(s, store), params_hash="h", status="ok"))
    runner = CliRunner()
    args = ["--db", db.url, "label", "--store", str(store), "--json"]
    res = runner.invoke(app, [*args, "--require", "sag,xray"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["excluded"]["image_missing_xray"] == 1
    res = runner.invoke(app, [*args, "--require", "sag,mri"])
    assert res.exit_code == 2 and "--require" in res.output and "sag, cor, ax, xray" in res.output
    res = runner.invoke(app, ["--db", db.url, "label", "--require", "xray"])
    assert res.exit_code == 2 and "needs --store" in res.output


def test_image_store_without_volumes_is_a_state_error(db: Database, tmp_path: Any) -> None:
    with db.write() as s:
        one_knee(s, 9200011, {0: 1, 10: 1})
    with pytest.raises(DatabaseStateError, match="oai preprocess --store"):
        derive_labels(db, store=tmp_path / "empty.zarr")


# --------------------------------------------------------------------------- storage


def test_labels_are_stored_per_definition_and_rederived_in_place(rules_db: tuple[Database, dict[str, int]]) -> None:
    db, knees = rules_db
    first = derive_labels(db, "panfilov2022")
    again = derive_labels(db, "panfilov2022")
    tkr = derive_labels(db, "oai_tkr2024")
    assert first.definition_id == again.definition_id != tkr.definition_id
    with db.read() as s:
        assert s.execute(select(func.count()).select_from(LabelDefinition)).scalar() == 2
        per_def = dict(s.execute(select(KneeLabel.definition_id, func.count()).group_by(KneeLabel.definition_id)).all())
        stored = s.execute(select(LabelDefinition).where(LabelDefinition.id == first.definition_id)).scalar_one()
    n_knees = len(knees)
    assert per_def == {first.definition_id: n_knees, tkr.definition_id: n_knees}
    assert stored.name == "panfilov2022"
    assert stored.params_hash == preset("panfilov2022").hash()
    assert LabelDefinitionParams.from_dict(stored.params) == preset("panfilov2022")


def test_labelled_counts_before_cohort_exclusions(db: Database) -> None:
    with db.write() as s:
        one_knee(s, 9300001, {0: 1, 1: 2, 10: 2}, bmi=None)  # fast, then dropped for BMI
        one_knee(s, 9300002, {0: 1, 10: 1}, dess=False)  # none, then dropped for DESS
        one_knee(s, 9300003, {0: 1, 10: 1})  # none
        one_knee(s, 9300004, {0: 4, 10: 4})  # not labelled at all
    result = derive_labels(db)
    assert result.labelled == {"knees": 3, "subjects": 3, "none": 2, "fast": 1, "slow": 0}
    assert result.counts()["knees"] == 1


def test_state_errors_before_ingest_and_before_label(db: Database) -> None:
    with pytest.raises(DatabaseStateError, match="oai ingest"):
        derive_labels(db)
    with pytest.raises(DatabaseStateError, match="oai ingest"):
        cohort_summary(db)
    with db.write() as s:
        one_knee(s, 9300011, {0: 1, 10: 1})
    with pytest.raises(DatabaseStateError, match="oai label --definition panfilov2022"):
        cohort_summary(db)


# --------------------------------------------------------------------------- definitions


def test_definition_hash_is_canonical_and_ignores_the_name() -> None:
    p = preset("panfilov2022")
    canonical = json.loads(p.canonical_json())
    assert canonical == {
        "followup_visits": [1, 3, 5, 8, 10],
        "fast_before_month": 72,
        "horizon_month": 96,
        "count_0_to_1": False,
        "missing_klg": "progression_proxy",
        "non_progressor_requires": "subject_at_last_visit",
        "baseline_klg_allowed": [0, 1, 2, 3],
        "duplicates": "first",
        "exclusions": ["replaced_at_baseline", "bmi_missing", "no_baseline_dess"],
        "dess_sequence": "SAG_3D_DESS",
        "image_store": None,
    }  # parameters added later (read_projects, project_42_as_37, ...) are hashed only when set
    assert p.hash() == hashlib.sha256(p.canonical_json().encode()).hexdigest()
    assert dataclasses.replace(p, name="other").hash() == p.hash()
    assert dataclasses.replace(p, followup_visits=(1, 3, 5, 6, 8, 10)).hash() != p.hash()
    assert preset("oai_tkr2024").hash() != p.hash()
    assert dataclasses.replace(p, read_projects=(37,)).hash() != p.hash()
    assert dataclasses.replace(p, reading_order="file").hash() != p.hash()  # the default is not hashed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"followup_visits": (1, 2, 3)}, "not follow-up X-ray visits"),
        ({"followup_visits": (3, 1)}, "increasing"),
        ({"missing_klg": "guess"}, "missing_klg must be one of"),
        ({"exclusions": ("bmi_missing", "smoker")}, "exclusions must be distinct names"),
        ({"baseline_klg_allowed": (0, 5)}, "KL grades 0-4"),
        ({"horizon_month": 6}, "no follow-up visit within horizon_month=6"),
    ],
)
def test_bad_definitions_are_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(LabelDefinitionError, match=message):
        dataclasses.replace(preset("panfilov2022"), **change)


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(LabelDefinitionError, match=r"presets: \['oai_tkr2024', 'panfilov2022'\]"):
        preset("panfilov2021")


# --------------------------------------------------------------------------- cohort table


@pytest.fixture
def summary_db(db: Database) -> Database:
    with db.write() as s:
        add_subject(s, 9400001, sex="F", age=50.0, bmi=20.0)
        add_knee(s, 9400001, "R", {0: 0, 10: 0})  # none, KL0
        add_knee(s, 9400001, "L", {0: 2, 3: 3, 10: 3})  # fast, KL2
        add_subject(s, 9400002, sex="M", age=60.0, bmi=25.0)
        add_knee(s, 9400002, "R", {0: 1, 8: 2, 10: 2})  # slow, KL1
        add_subject(s, 9400003, sex="F", age=70.0, bmi=33.0)
        add_knee(s, 9400003, "L", {0: 3, 10: 3})  # none, KL3
        add_subject(s, 9400004, sex="M", age=80.0, bmi=None)
        add_knee(s, 9400004, "R", {0: 1, 10: 1})  # excluded: BMI
        add_subject(s, 9400005, sex="M", age=40.0, bmi=22.0)
        add_knee(s, 9400005, "R", {0: 4, 10: 4})  # excluded: KLG 4
    derive_labels(db)
    return db


def test_cohort_summary_numbers(summary_db: Database) -> None:
    summary = cohort_summary(summary_db)
    assert (summary.knees, summary.subjects) == (4, 3)
    assert (summary.none, summary.fast, summary.slow) == (2, 1, 1)
    assert summary.kl == {0: 1, 1: 1, 2: 1, 3: 1}
    assert (summary.female, summary.male) == (2, 1)
    # subjects 50/60/70 years, BMI 20/25/33: mean 60 +- 10, 26 +- sqrt(43)
    assert summary.age_mean == pytest.approx(60.0)
    assert summary.age_sd == pytest.approx(10.0)
    assert summary.bmi_mean == pytest.approx(26.0)
    assert summary.bmi_sd == pytest.approx(math.sqrt(43.0))
    assert summary.excluded["bmi_missing"] == 1
    assert summary.excluded["baseline_klg_4"] == 1
    assert summary.excluded["lost_to_follow_up"] == 0
    d = summary.to_dict()
    assert {"knees", "subjects", "none", "fast", "slow", "excluded"} <= set(d)
    assert d["kl"] == {"0": 1, "1": 1, "2": 1, "3": 1}


def test_cli_label_json_and_table(summary_db: Database) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--db", summary_db.url, "label", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert (data["knees"], data["subjects"], data["none"], data["fast"], data["slow"]) == (4, 3, 2, 1, 1)
    assert data["excluded"]["bmi_missing"] == 1
    res = runner.invoke(app, ["--db", summary_db.url, "label", "--definition", "oai_tkr2024"])
    assert res.exit_code == 0, res.output
    assert "oai_tkr2024" in res.stdout
    assert "60.0 ± 10.0" in res.stdout
    assert "2 / 1" in res.stdout  # female / male subjects


def test_cli_label_errors(tmp_path: Any) -> None:
    runner = CliRunner()
    url = str(tmp_path / "empty.sqlite")
    res = runner.invoke(app, ["--db", url, "label"])
    assert res.exit_code == 1
    assert "oai ingest" in res.stderr
    res = runner.invoke(app, ["--db", url, "label", "--definition", "nope"])
    assert res.exit_code == 2  # a usage error
    assert "unknown label definition 'nope'" in res.stderr


def test_labels_on_postgres_and_sqlite(any_db: Database) -> None:
    with any_db.write() as s:
        prog = one_knee(s, 9500001, {0: 1, 3: ".P", 10: ".P"})
        lost = one_knee(s, 9500002, {0: 1, 1: 1})
    got = labels_by_knee(any_db)
    assert got[prog] == ("fast", None, 24, 4)
    assert got[lost] == (None, "lost_to_follow_up", None, None)
    assert cohort_summary(any_db).knees == 1


def test_reopen_and_summarise(tmp_path: Any) -> None:
    path = tmp_path / "re.sqlite"
    db = open_database(path)
    with db.write() as s:
        one_knee(s, 9600001, {0: 2, 10: 2})
    derive_labels(db)
    db.dispose()
    db = open_database(path)
    assert cohort_summary(db, "panfilov2022").none == 1
    db.dispose()


# --------------------------------------------------------------------------- end to end


def _naive_reference(ascii_dir: Any) -> dict[tuple[int, str], tuple]:
    """The reference algorithm (REFERENCE.md section 1) written naively over the raw files:
    (ID, side) -> (label, month, increase), or (None, reason, None) for lost knees."""

    def code(cell: str) -> str:
        return cell.split(":")[0].strip()

    def read(vv: int) -> dict[tuple[int, str], int | None]:
        path = next(p for p in ascii_dir.iterdir() if p.name.lower() == f"kxr_sq_bu{vv:02d}.txt")
        frame = pd.read_csv(path, sep="|", dtype=str, keep_default_na=False)
        frame.columns = [c.upper() for c in frame.columns]
        first: dict[tuple[int, str], int | None] = {}
        for _, row in frame.iterrows():
            key = (int(row["ID"]), "R" if code(row["SIDE"]) == "1" else "L")
            if key not in first:  # the first row in file order wins
                kl = code(row[f"V{vv:02d}XRKL"])
                first[key] = int(float(kl)) if kl and not kl.startswith(".") else None
        return first

    base = read(0)
    follow = {vv: read(vv) for vv in (1, 3, 5, 8, 10)}
    seen_96 = {sid for sid, _ in follow[10]}
    months = {1: 12, 3: 24, 5: 36, 8: 72, 10: 96}
    out: dict[tuple[int, str], tuple] = {}
    for key, kl0 in base.items():
        if kl0 is None or kl0 not in (0, 1, 2, 3):
            continue
        result = None
        for vv in (1, 3, 5, 8, 10):
            if key not in follow[vv]:
                continue
            kl = follow[vv][key]
            if kl is None:
                result = (months[vv], 5 - kl0)
                break
            if kl > kl0 and kl != 1:
                result = (months[vv], kl - kl0)
                break
        if result is not None:
            out[key] = ("fast" if result[0] < 72 else "slow", result[0], result[1])
        elif key[0] in seen_96:
            out[key] = ("none", None, None)
        else:
            out[key] = (None, "lost_to_follow_up", None)
    return out


def write_in_real_order(ascii_dir: Any) -> int:
    """Rewrite the kXR files of a synthetic release in the order of the real files: a knee's
    project 15 reading before its 37/42 one (OAI_DISTRIBUTIONS.md section 5), the file order kept
    otherwise. Returns how many knee-visits had their rows swapped."""
    swapped = 0
    for path in ascii_dir.iterdir():
        if not path.name.lower().startswith("kxr_sq_bu"):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        header = [h.upper() for h in lines[0].split("|")]
        rows = [line.split("|") for line in lines[1:]]
        at = {name: header.index(name) for name in ("ID", "SIDE", "READPRJ")}

        def key(row: list[str], at: dict[str, int] = at) -> tuple[str, str, int]:
            project = int(float(row[at["READPRJ"]]))
            return row[at["ID"]], row[at["SIDE"]].split(":")[0], 0 if project == 15 else 1

        ordered = sorted(rows, key=key)
        swapped += sum(a is not b for a, b in zip(rows, ordered)) // 2
        path.write_text("\n".join([lines[0], *("|".join(r) for r in ordered)]) + "\n", encoding="utf-8")
    return swapped


def test_panfilov2022_matches_a_naive_reference_on_a_synthetic_release(db: Database, tmp_path: Any) -> None:
    from oaicohort.ingest import run as ingest
    from oaicohort.synth import clinical as synth

    root = tmp_path / "release"
    synth.write_release(root, subjects=400, seed=7)
    # the reference takes the first row in file order; in real files that is project 15's
    assert write_in_real_order(root / "OAICompleteData_ASCII") > 0
    ingest.ingest_release(db, root)
    expected = _naive_reference(root / "OAICompleteData_ASCII")
    # the label algorithm alone: no cohort exclusions
    no_exclusions = dataclasses.replace(preset("panfilov2022"), name="reference_only", exclusions=())
    result = derive_labels(db, no_exclusions)
    got = {}
    for r in result.labels.itertuples():
        reason = _str(r.exclusion)
        if reason == "lost_to_follow_up":
            got[(int(r.subject_id), r.side)] = (None, reason, None)
        elif reason is None:
            got[(int(r.subject_id), r.side)] = (_str(r.label), _int(r.progression_month), _int(r.kl_increase))
    assert len(expected) > 300
    assert {k: v for k, v in expected.items() if v[0] != "none"} != {}
    assert got == expected
    # on files in the real order, reading project first and file order alone are the same labels
    by_file = dataclasses.replace(no_exclusions, name="reference_file_order", reading_order="file")
    pd.testing.assert_frame_equal(
        derive_labels(db, by_file).labels.drop(columns="definition_id", errors="ignore"),
        result.labels.drop(columns="definition_id", errors="ignore"),
    )
