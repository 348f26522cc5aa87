"""Fixtures of the methods-section tests: a synthetic release labelled by the presets and by their
time-to-event twins (the same rules, ``outcome = "time_to_event"``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from oaicohort.cohort.labels import derive_labels
from oaicohort.db import Database, open_database
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from tests.helpers.study_release import time_to_event_twin

SYNTH_SUBJECTS = 800


@pytest.fixture(scope="session")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """800 synthetic subjects (seed 0), labelled by panfilov2022, oai_tkr2024 and their twins."""
    base = tmp_path_factory.mktemp("synthetic_study")
    root = base / "release"
    write_release(root, subjects=SYNTH_SUBJECTS, seed=0)
    db = open_database(base / "synthetic.sqlite")
    ingest_release(db, root)
    for name in ("panfilov2022", "oai_tkr2024"):
        derive_labels(db, name)
        derive_labels(db, time_to_event_twin(name))
    yield db
    db.dispose()
