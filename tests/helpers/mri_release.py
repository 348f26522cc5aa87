"""Small synthetic DESS series on disk with their image_series rows, as ingest would write them:
the input of the preprocess, export and orientation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oaicohort.db import Database
from oaicohort.db.schema import ImageSeries, Subject
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.series.dicom import DicomVolume, read_series
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaicohort.synth.mri_anatomy import render_knee_volume
from oaicohort.synth.raster import IMAGE_SIZES

SMALL = PreprocessParams.small()
GEOMETRY = IMAGE_SIZES["small"]
SUBJECTS = (9000010, 9000020, 9000030)


def read_series_for_tests(folder: Path) -> DicomVolume:
    """The project's reader, passed explicitly (the same as the default)."""
    return read_series(folder)


def make_release(db: Database, root: Path, subjects: tuple[int, ...] = SUBJECTS) -> dict[tuple[int, str], Path]:
    """Small synthetic DESS series on disk and their image_series rows (as ingest would write)."""
    visit_dir = root / "00m"
    folders = {}
    with db.write() as session:
        for n, subject in enumerate(subjects):
            session.add(Subject(id=subject, site="A", sex="F"))
            session.flush()
            for side, description in (("R", "SAG_3D_DESS_RIGHT"), ("L", "SAG_3D_DESS_LEFT")):
                rel = f"0.C.2/{subject}/20040101/{n:04d}{side}"
                volume = render_knee_volume(0.0, side, np.random.default_rng([subject, ord(side)]), "small")
                write_series(
                    visit_dir / rel,
                    volume,
                    SeriesMeta(patient_id=str(subject), series_description=description, spacing_mm=GEOMETRY.spacing_mm),
                )
                folders[(subject, side)] = visit_dir / rel
                session.add(
                    ImageSeries(
                        subject_id=subject,
                        visit=0,
                        month=0,
                        side=side,
                        sequence="SAG_3D_DESS",
                        series_description=description,
                        folder=rel,
                        visit_dir=str(visit_dir),
                        source_file=str(visit_dir / "contents.csv"),
                        source_row=len(folders),
                    )
                )
            # a non-DESS series of the same visit is never selected
            session.add(
                ImageSeries(
                    subject_id=subject,
                    visit=0,
                    month=0,
                    side="R",
                    sequence="COR_IW_TSE",
                    series_description="COR_IW_TSE_RIGHT",
                    folder="nowhere",
                    visit_dir=str(visit_dir),
                    source_file="contents.csv",
                    source_row=99,
                )
            )
    return folders
