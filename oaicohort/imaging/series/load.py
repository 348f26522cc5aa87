"""Loading one image series: the one way ``oai preprocess`` and ``oai predict`` read a series.

``load_series(folder, params, expected)`` reads an MR series (a folder, or an NDA ``.tar.gz``
unpacked for the time of reading), checks it against what the caller knows of it (``Expected``:
the index row of ``oai preprocess`` or of a release ``oai predict`` reads; the run's sequence and
``--side`` for a folder given on the command line) and reorients it to the canonical order
(``orientation``). Both commands load through here, so they cannot diverge: a series one refuses
the other refuses too, and a series stored in another orientation reaches the model as the store
holds it. The checks (``consistency``), in order:

- nothing outside the visit folder is read (``source.check_within``);
- the reader's own: consistent slices, pixel depth and values that fit 16 bits (``dicom``);
- the participant (index ``Folder``, ``ParticipantID``, DICOM ``PatientID``);
- the DICOM ``SeriesDescription`` against the index one, and against the sequence and knee side
  the series was given as;
- the slice orientation against the plane the description names; positive, finite spacing.

``load_radiograph(folder, expected)`` does the same for a bilateral radiograph (inside its visit
folder, one readable image). The recipes (``oaicohort.imaging.recipe``) take what these return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from oaicohort.errors import InputFileError
from oaicohort.imaging.series.consistency import (
    check_description,
    check_given,
    check_orientation,
    check_participant,
    check_spacing,
)
from oaicohort.imaging.series.orientation import to_canonical
from oaicohort.imaging.series.radiograph import Radiograph, read_radiograph
from oaicohort.imaging.series.source import check_within, series_folder
from oaicohort.vocabulary import SIDES

if TYPE_CHECKING:  # the recipe builds on series, not the other way round
    from oaicohort.imaging.recipe.params import PreprocessParams

# a reader folder -> series (tests pass their own; it must be picklable for the worker processes)
SeriesReader = Callable[[Path], Any]


@dataclass(frozen=True)
class Expected:
    """What the caller knows of a series before reading it; None: not known, so not checked."""

    subject_id: int | None = None
    side: str | None = None  # R | L
    sequence: str | None = None  # the sequence the caller reads (the store's, the run's)
    index_folder: str | None = None  # contents.csv Folder
    description: str | None = None  # contents.csv SeriesDescription
    root: Path | None = None  # the visit folder: nothing outside it is read
    given_by: str = "the index"  # who said so, for the messages


@dataclass(frozen=True)
class LoadedSeries:
    """A checked series in canonical order with the knee side preprocessing assumes."""

    pixels: np.ndarray  # (slices, rows, cols)
    spacing_mm: tuple[float, float, float]
    side: str
    source: Any  # the read series, reoriented (a DicomVolume: header facts, geometry, notes)


def _read_series(folder: Path) -> Any:
    from oaicohort.imaging.series.dicom import read_series

    return read_series(folder)


def check_series(series: Any, folder: Path, expected: Expected) -> str:
    """Every agreement of the module doc for one read series; returns the knee side to use.

    Attributes a test reader's series lacks are not checked."""
    check_participant(folder, expected.index_folder, expected.subject_id, getattr(series, "patient_id", None))
    dicom_description = getattr(series, "series_description", None)
    check_description(folder, expected.description, dicom_description)
    check_given(folder, dicom_description, sequence=expected.sequence, side=expected.side, given_by=expected.given_by)
    check_orientation(folder, expected.description or dicom_description, getattr(series, "orientation", None))
    check_spacing(folder, series.spacing_mm)
    side = getattr(series, "side", None)
    side = side if side in SIDES else expected.side
    if side not in SIDES:
        raise InputFileError(
            folder, f"cannot tell the knee side (series description {dicom_description!r}); pass --side R or L"
        )
    return str(side)


def load_series(
    folder: Path | str, params: PreprocessParams, expected: Expected = Expected(), *, reader: SeriesReader | None = None
) -> LoadedSeries:
    """Read, check and reorient the MR series in ``folder`` (see the module doc)."""
    folder = Path(folder)
    if expected.root is not None:
        check_within(folder, expected.root)
    with series_folder(folder) as files:  # a .tar.gz series (NDA) is unpacked while read
        series = (reader or _read_series)(files)
    side = check_series(series, folder, expected)
    if params.canonical_orientation and hasattr(series, "orientation"):
        series = to_canonical(series)  # a test reader's plain arrays are in canonical order already
    slice_mm, row_mm, col_mm = series.spacing_mm
    return LoadedSeries(np.asarray(series.pixels), (slice_mm, row_mm, col_mm), side, series)


def load_radiograph(folder: Path | str, expected: Expected = Expected()) -> Radiograph:
    """Read the bilateral radiograph in ``folder``, refusing one outside its visit folder."""
    folder = Path(folder)
    if expected.root is not None:
        check_within(folder, expected.root)
    with series_folder(folder) as files:  # a radiograph in a zipped package is unpacked while read
        return read_radiograph(files)
