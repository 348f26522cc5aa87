"""Class 3: no knee reaches a fold on uncertain grounds.

A subject without a site is excluded with a reason; values outside physical ranges become
missing with a recorded warning naming file, line and column; a re-ingest that changes a
subject's site or sex makes the labels and splits made before stale, and `train`, `eval` and
`cohort --role` refuse them, naming the subjects and what to re-run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from oaicohort.cohort.definitions import SITE_MISSING
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.splits import make_split
from oaicohort.db import Database
from oaicohort.db.schema import IngestRun, Subject, SubjectVisit
from oaicohort.db.staleness import StaleResultError
from oaicohort.ingest.run import ingest_release
from tests.helpers.releases import ASCII
from tests.helpers.reliability import run_oai


def _set_cell(path: Path, subject: int, column: str, value: str) -> int:
    """Set ``column`` of ``subject``'s row; returns the 1-based line number."""
    lines = path.read_text().splitlines()
    header = lines[0].split("|")
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("|")
        if cells[0] == str(subject):
            cells[header.index(column)] = value
            lines[number - 1] = "|".join(cells)
            path.write_text("\n".join(lines) + "\n")
            return number
    raise AssertionError(subject)


def _subjects(release: Path) -> list[tuple[int, str]]:
    rows = (release / ASCII / "Enrollees.txt").read_text().splitlines()[1:]
    return [(int(r.split("|")[0]), r.split("|")[2]) for r in rows]


@pytest.fixture(scope="module")
def included_subject(pristine_release: Path, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A subject of the pristine release with knees included under the default definition."""
    from oaicohort.db import open_database

    db = open_database(tmp_path_factory.mktemp("included") / "db.sqlite")
    ingest_release(db, pristine_release)
    labels = derive_labels(db).labels
    db.dispose()
    sites = dict(_subjects(pristine_release))
    counts = labels.loc[labels["exclusion"].isna(), "subject_id"].value_counts()
    return int(next(s for s in counts.index if sites[int(s)] != "D"))  # in a training fold


@pytest.fixture
def release(pristine_release: Path, tmp_path: Path) -> Path:
    root = tmp_path / "release"
    shutil.copytree(pristine_release, root)
    return root


def test_a_subject_without_site_is_excluded_with_a_reason(release: Path, any_db: Database) -> None:
    ingest_release(any_db, release)
    before = derive_labels(any_db).labels
    included = before[before["exclusion"].isna()]
    subject = int(included["subject_id"].value_counts().index[0])  # a subject with included knees
    _set_cell(release / ASCII / "Enrollees.txt", subject, "V00SITE", "")
    ingest_release(any_db, release)
    result = derive_labels(any_db)
    mine = result.labels[result.labels["subject_id"] == subject]
    assert len(mine) >= 1 and set(mine.loc[mine["knee_id"].isin(included["knee_id"]), "exclusion"]) == {SITE_MISSING}
    assert mine["label"].isna().all()
    split = make_split(any_db, folds=2, test_sites=("D",))
    assert subject not in set(split.assignments["subject_id"])


@pytest.mark.parametrize(
    ("column", "value", "field"),
    [("P01BMI", "0", "bmi"), ("P01BMI", "250", "bmi"), ("V00AGE", "3", "age"), ("V00AGE", "150", "age")],
)
def test_impossible_values_become_missing_with_a_recorded_warning(
    release: Path, any_db: Database, column: str, value: str, field: str, included_subject: int
) -> None:
    subject = included_subject
    line = _set_cell(release / ASCII / "AllClinical00.txt", subject, column, value)
    result = ingest_release(any_db, release)
    with any_db.read() as s:
        stored = s.execute(
            select(getattr(SubjectVisit, field)).where(SubjectVisit.subject_id == subject, SubjectVisit.visit == 0)
        ).scalar_one()
        summary = s.get(IngestRun, result.run_id).summary
    assert stored is None
    (warning,) = summary["warnings"]
    assert f"AllClinical00.txt, line {line}, column '{column}': {field} {float(value):g} is outside" in warning
    if field == "bmi":  # never used as a number: the subject is excluded for a missing BMI
        labels = derive_labels(any_db).labels
        assert set(labels.loc[labels["subject_id"] == subject, "exclusion"]) == {"bmi_missing"}


def test_a_site_change_makes_labels_and_splits_stale_until_rerun(
    release: Path, any_db: Database, included_subject: int
) -> None:
    ingest_release(any_db, release)
    derive_labels(any_db)
    make_split(any_db, folds=2, test_sites=("D",))
    ok = run_oai(any_db.url, "cohort", "--role", "train", "--format", "csv")
    assert ok.returncode == 0, ok.stderr
    subject, site = included_subject, dict(_subjects(release))[included_subject]
    _set_cell(release / ASCII / "Enrollees.txt", subject, "V00SITE", "D")  # moves to the held-out site
    ingest_release(any_db, release)
    with any_db.read() as s:
        assert s.get(Subject, subject).site == "D"
    refused = run_oai(any_db.url, "cohort", "--role", "train")
    text = " ".join(refused.stderr.split())
    assert refused.returncode == 1, refused.stderr
    assert f"{subject} (site {site} -> D)" in text and "Re-run `oai label` and then `oai split`" in text
    assert "Traceback" not in refused.stderr
    from oaimodels.data import knee_table

    with pytest.raises(StaleResultError, match=f"{subject} \\(site {site} -> D\\)"):
        knee_table(any_db, "/nowhere.zarr", "sag")  # what `oai train` and `oai eval` read first
    plain = run_oai(any_db.url, "cohort")  # without --role nothing depends on the split
    assert plain.returncode == 0, plain.stderr
    derive_labels(any_db)
    still = run_oai(any_db.url, "cohort", "--role", "train")
    assert still.returncode == 1 and "split" in still.stderr  # the split is still stale
    make_split(any_db, folds=2, test_sites=("D",))
    again = run_oai(any_db.url, "cohort", "--role", "train", "--format", "csv")
    assert again.returncode == 0, again.stderr
    assert str(subject) not in again.stdout  # now a test subject
