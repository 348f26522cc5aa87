"""Site-held-out, subject-grouped, stratified splits: guarantees, reproducibility, storage, CLI."""

from __future__ import annotations

import json
import random
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.splits import (
    SplitError,
    SplitIntegrityError,
    assign_folds,
    check_split,
    load_split,
    make_split,
)
from oaicohort.db import Database
from oaicohort.db.schema import Split, SplitAssignment, XrayReading
from oaicohort.errors import DatabaseStateError
from tests.helpers.cohort_rows import add_knee, add_subject

CLASSES = ("none", "fast", "slow")


# --------------------------------------------------------------------------- generated cohorts


@st.composite
def cohorts(draw: Any) -> pd.DataFrame:
    n_subjects = draw(st.integers(min_value=1, max_value=60))
    rows = []
    knee_id = 1
    for i in range(n_subjects):
        site = draw(st.sampled_from("ABCDE"))
        sides = draw(st.sampled_from(["R", "L", "RL"]))
        for side in sides:
            label = draw(st.sampled_from(CLASSES))
            rows.append({"knee_id": knee_id, "subject_id": 9000000 + i, "side": side, "site": site, "label": label})
            knee_id += 1
    frame = pd.DataFrame(rows)
    # shuffle the input order: the split must not depend on it
    return frame.sample(frac=1.0, random_state=draw(st.integers(0, 1000))).reset_index(drop=True)


def assert_guarantees(a: pd.DataFrame, cohort: pd.DataFrame, test_sites: set[str], folds: int) -> None:
    """The split guarantees, checked here independently of ``check_split``."""
    assert sorted(a["knee_id"]) == sorted(cohort["knee_id"])  # every knee exactly once
    site = cohort.set_index("knee_id")["site"]
    for row in a.itertuples():
        if site[row.knee_id] in test_sites:
            assert row.role == "test" and pd.isna(row.fold)
        else:
            assert row.role == "train" and 0 <= int(row.fold) < folds
    for _, g in a.groupby("subject_id"):
        assert g["role"].nunique() == 1  # never in train and test
        assert g["fold"].nunique(dropna=False) == 1  # never in two folds
    train = a[a["role"] == "train"]
    assert set(train["fold"].astype(int)) == set(range(folds))  # no empty fold


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cohort=cohorts(),
    test_sites=st.sets(st.sampled_from("ABCDE"), min_size=0, max_size=2),
    folds=st.integers(min_value=2, max_value=5),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_split_guarantees_on_generated_cohorts(
    cohort: pd.DataFrame, test_sites: set[str], folds: int, seed: int
) -> None:
    present = set(cohort["site"])
    train_subjects = cohort.loc[~cohort["site"].isin(test_sites), "subject_id"].nunique()
    if not test_sites <= present:
        with pytest.raises(SplitError, match="no included knee at test site"):
            assign_folds(cohort, test_sites=sorted(test_sites), folds=folds, seed=seed)
        return
    if train_subjects < folds:
        with pytest.raises(SplitError, match=f"{folds} folds need at least {folds} training subjects"):
            assign_folds(cohort, test_sites=sorted(test_sites), folds=folds, seed=seed)
        return
    train_labels = cohort.loc[~cohort["site"].isin(test_sites), "label"].value_counts()
    if (train_labels < folds).all():
        with pytest.raises(SplitError, match=f"{folds} folds need at least {folds} training knees of some class"):
            assign_folds(cohort, test_sites=sorted(test_sites), folds=folds, seed=seed)
        return
    a = assign_folds(cohort, test_sites=sorted(test_sites), folds=folds, seed=seed)
    assert_guarantees(a, cohort, test_sites, folds)
    check_split(a, cohort, test_sites=sorted(test_sites), folds=folds)  # agrees: no violation
    # the input order does not matter, the seed decides
    again = assign_folds(cohort.iloc[::-1], test_sites=sorted(test_sites), folds=folds, seed=seed)
    pd.testing.assert_frame_equal(a, again)


def _cohort(n_subjects: int, seed: int = 1) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n_subjects):
        site = "ABCDE"[i % 5]
        for j, side in enumerate("RL"):
            label = rng.choices(CLASSES, weights=(0.73, 0.19, 0.08))[0]
            rows.append(
                {"knee_id": 2 * i + j + 1, "subject_id": 9000000 + i, "side": side, "site": site, "label": label}
            )
    return pd.DataFrame(rows)


def test_folds_are_roughly_stratified() -> None:
    cohort = _cohort(1000)
    a = assign_folds(cohort, test_sites=["D"], folds=5, seed=0)
    train = a[a["role"] == "train"]
    overall = train["label"].value_counts(normalize=True)
    for _, fold in train.groupby("fold"):
        share = fold["label"].value_counts(normalize=True)
        for c in CLASSES:
            assert abs(share[c] - overall[c]) < 0.02, (c, share[c], overall[c])
        assert abs(len(fold) - len(train) / 5) < 0.05 * len(train) / 5


def test_seed_changes_the_folds_but_not_the_test_set() -> None:
    cohort = _cohort(200)
    a = assign_folds(cohort, test_sites=["D"], folds=5, seed=0)
    b = assign_folds(cohort, test_sites=["D"], folds=5, seed=1)
    assert (a["role"] == b["role"]).all()
    assert not a["fold"].equals(b["fold"])
    assert set(a.loc[a["role"] == "test", "site"]) == {"D"}


# --------------------------------------------------------------------------- check_split


def _good_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    cohort = pd.DataFrame(
        {
            "knee_id": [1, 2, 3, 4, 5, 6],
            "subject_id": [11, 11, 12, 13, 14, 14],
            "site": ["A", "A", "B", "C", "D", "D"],
        }
    )
    a = cohort[["knee_id", "subject_id"]].assign(
        role=["train", "train", "train", "train", "test", "test"],
        fold=pd.array([0, 0, 1, 1, None, None], dtype="Int64"),
    )
    return a, cohort


def test_check_split_accepts_a_good_split() -> None:
    a, cohort = _good_split()
    check_split(a, cohort, test_sites=["D"], folds=2)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.assign(fold=pd.array([0, 1, 1, 1, None, None], dtype="Int64")), "subject 11 in two folds"),
        (
            lambda a: a.assign(
                role=["train", "test", "train", "train", "test", "test"],
                fold=pd.array([0, None, 1, 0, None, None], dtype="Int64"),
            ),
            "subject 11 in both train and test",
        ),
        (
            lambda a: a.assign(role=["train"] * 6, fold=pd.array([0, 0, 1, 1, 0, 0], dtype="Int64")),
            "test-site knee 5 in train",
        ),
        (lambda a: a.iloc[:-1], "1 included knee\\(s\\) not assigned"),
        (lambda a: pd.concat([a, a.iloc[[0]]]), "assigned more than once"),
        (lambda a: a.assign(fold=pd.array([0, 0, 0, 0, None, None], dtype="Int64")), "empty fold\\(s\\) \\[1\\]"),
        (lambda a: a.assign(fold=pd.array([0, 0, 1, 7, None, None], dtype="Int64")), "without a fold in 0..1"),
    ],
)
def test_check_split_catches_violations(mutate: Any, message: str) -> None:
    a, cohort = _good_split()
    with pytest.raises(SplitIntegrityError, match=message):
        check_split(mutate(a), cohort, test_sites=["D"], folds=2)


# --------------------------------------------------------------------------- database


def build(db: Database, n_subjects: int = 60, seed: int = 3) -> None:
    rng = random.Random(seed)
    with db.write() as s:
        for i in range(n_subjects):
            sid = 9000000 + i
            add_subject(s, sid, site="ABCDE"[i % 5], sex="FM"[i % 2])
            for side in "RL":
                k0 = rng.choice((0, 1, 2, 3))
                r = rng.random()
                later = k0 + 1 if k0 else 2
                traj = {0: k0, 1: later if r < 0.2 else k0, 8: later if r < 0.35 else k0, 10: later if r < 0.35 else k0}
                add_knee(s, sid, side, traj)
    derive_labels(db)


def test_make_split_is_stored_and_idempotent(db: Database) -> None:
    build(db)
    first = make_split(db)
    second = make_split(db)
    assert first.created and not second.created
    assert first.split_id == second.split_id
    pd.testing.assert_frame_equal(
        first.assignments.reset_index(drop=True), second.assignments.reset_index(drop=True), check_dtype=False
    )
    with db.read() as s:
        n_assigned = s.execute(select(func.count()).select_from(SplitAssignment)).scalar()
        stored = s.get(Split, first.split_id)
    assert n_assigned == 120  # every knee of the 60 subjects is included
    assert stored is not None and stored.params["test_sites"] == ["D"] and stored.params["seed"] == 0
    assert stored.params_hash == first.params_hash
    test = first.assignments[first.assignments["role"] == "test"]
    assert set(test["site"]) == {"D"} and len(test) == 24  # subjects 3, 8, ... (every 5th): 12 x 2
    other = make_split(db, seed=1)
    assert other.split_id != first.split_id and other.created


def test_same_data_same_split_in_another_database(db: Database, tmp_path: Any) -> None:
    from oaicohort.db import open_database

    build(db)
    other_db = open_database(tmp_path / "other.sqlite")
    # the same subjects inserted in another order give other knee ids but the same split
    rng_state = random.Random(3)
    with other_db.write() as s:
        rows = []
        for i in range(60):
            for side in "RL":
                k0 = rng_state.choice((0, 1, 2, 3))
                r = rng_state.random()
                later = k0 + 1 if k0 else 2
                rows.append(
                    (
                        i,
                        side,
                        {
                            0: k0,
                            1: later if r < 0.2 else k0,
                            8: later if r < 0.35 else k0,
                            10: later if r < 0.35 else k0,
                        },
                    )
                )
        for i in reversed(range(60)):
            add_subject(s, 9000000 + i, site="ABCDE"[i % 5], sex="FM"[i % 2])
        for i, side, traj in reversed(rows):
            add_knee(s, 9000000 + i, side, traj)
    derive_labels(other_db)
    key = ["subject_id", "side", "role", "fold"]
    a = make_split(db).assignments[key].reset_index(drop=True)
    b = make_split(other_db).assignments[key].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    other_db.dispose()


def test_relabelled_cohort_gets_a_new_split(db: Database) -> None:
    build(db)
    old = make_split(db)
    with db.write() as s:  # a re-read film: one knee's 96-month grade goes up
        reading = s.execute(select(XrayReading).where(XrayReading.visit == 10).limit(1)).scalar_one()
        reading.klg = 4
    derive_labels(db)
    new = make_split(db)
    assert new.created and new.split_id != old.split_id
    with pytest.raises(DatabaseStateError, match="re-derived differently"):
        load_split(db, old.split_id)
    assert load_split(db, new.split_id).split_id == new.split_id


def test_split_errors(db: Database) -> None:
    with pytest.raises(DatabaseStateError, match="oai ingest"):
        make_split(db)
    build(db, n_subjects=6)
    with pytest.raises(SplitError, match="no included knee at test site\\(s\\) \\['Z'\\]"):
        make_split(db, test_sites=["Z"])
    with pytest.raises(SplitError, match="5 folds need at least 5 training subjects"):
        make_split(db, test_sites=["A", "B"])
    with pytest.raises(DatabaseStateError, match="oai label --definition oai_tkr2024"):
        make_split(db, definition="oai_tkr2024")


def test_cli_split_json_and_table(db: Database) -> None:
    build(db)
    runner = CliRunner()
    res = runner.invoke(app, ["--db", db.url, "split", "--json", "--folds", "3", "--test-site", "d"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["params"]["test_sites"] == ["D"] and data["params"]["folds"] == 3
    assert [f["fold"] for f in data["folds"]] == [0, 1, 2]
    assert sum(f["knees"] for f in data["folds"]) == data["train"]["knees"] == 96
    assert data["test"]["knees"] == 24 and data["test"]["subjects"] == 12
    assert data["train"]["none"] + data["train"]["fast"] + data["train"]["slow"] == 96
    res = runner.invoke(app, ["--db", db.url, "split", "--folds", "3", "--test-site", "D"])
    assert res.exit_code == 0, res.output
    assert f"Split {data['split_id']} (existing)" in res.stdout
    assert "fold 2" in res.stdout and "test" in res.stdout
    res = runner.invoke(app, ["--db", db.url, "split", "--test-site", "Q"])
    assert res.exit_code == 1 and "no included knee at test site" in res.stderr
