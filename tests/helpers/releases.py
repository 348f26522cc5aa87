"""Synthetic releases shared by tests: the folder names of a release, and the builders of the
session fixtures in tests/conftest.py (each release is written once per test process; tests
read it, and a test that changes a release or its database changes a copy)."""

from __future__ import annotations

import shutil
from pathlib import Path

from oaicohort.db import open_database
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from oaicohort.synth.images import write_images
from oaicohort.synth.radiograph_release import write_radiographs

ASCII = "OAICompleteData_ASCII"


def clinical_release(root: Path, *, subjects: int, seed: int) -> Path:
    """The clinical tables and image indexes of a synthetic release (no image files)."""
    write_release(root, subjects=subjects, seed=seed)
    return root


def imaging_release(root: Path, *, subjects: int, seed: int, radiographs: bool = False) -> Path:
    """A synthetic release with small DESS series (and, with ``radiographs``, small radiographs)."""
    write_release(root, subjects=subjects, seed=seed)
    write_images(root, size="small", seed=seed)
    if radiographs:
        write_radiographs(root, size="small", seed=seed)
    return root


def ingested(release: Path, database: Path) -> Path:
    """``release`` ingested into a new SQLite database at ``database`` (a template to copy)."""
    db = open_database(database)
    ingest_release(db, release)
    db.dispose()
    return database


def copy_release(release: Path, where: Path) -> Path:
    """A copy of ``release`` at ``where``, for a test that changes it."""
    shutil.copytree(release, where)
    return where


def small_imaging_release(base: Path, *, subjects: int = 3, seed: int = 5) -> tuple[Path, Path]:
    """A synthetic release with small DESS series under ``base``, and its ingested database (a
    template to copy: tests damage copies of both)."""
    release = imaging_release(base / "release", subjects=subjects, seed=seed)
    return release, ingested(release, base / "template.sqlite")
