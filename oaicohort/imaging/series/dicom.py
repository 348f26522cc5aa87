"""Reading one MR series stored as one DICOM file per slice (the OAI image package layout).

Slices are ordered by their position along the slice normal (the cross product of the row and
column direction cosines of ImageOrientationPatient, dotted with ImagePositionPatient), never by
file name: OAI file names usually follow the acquisition order but not always. Index 0 is the
slice with the smallest position along that normal.

A series is used only when it is complete and consistent; anything else raises ``SeriesError``
naming the offending file, so a preprocessing run can record the reason and continue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError

from oaicohort.errors import InputFileError
from oaicohort.imaging.series.consistency import check_pixel_depth, check_value_range
from oaicohort.release.image_index import series_side as side_from_description  # the one home of this rule

log = logging.getLogger(__name__)

# Positions closer than this are the same slice (scanners write positions to ~1e-4 mm).
DUPLICATE_TOLERANCE_MM = 0.01
# Allowed deviation of one slice step from the median step, relative to that step.
SPACING_TOLERANCE = 0.05
# A step this many times the median step means slices are missing (uneven spacing below it).
GAP_FACTOR = 1.5
ORIENTATION_TOLERANCE = 1e-3
PIXEL_SPACING_TOLERANCE_MM = 1e-3

# (BitsAllocated, PixelRepresentation) -> dtype of uncompressed little-endian pixel data
_NATIVE_DTYPES: dict[tuple[int, int], np.dtype] = {
    (16, 0): np.dtype("<u2"),
    (16, 1): np.dtype("<i2"),
    (8, 0): np.dtype("u1"),
    (8, 1): np.dtype("i1"),
}

# Elements every slice must share. A slice whose encoded values equal the first file's needs no
# further header checks; comparing the undecoded bytes is much cheaper than decoding them.
_SHARED_TAGS = (
    0x0020000E,  # SeriesInstanceUID
    0x00200037,  # ImageOrientationPatient
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280030,  # PixelSpacing
    0x00280100,  # BitsAllocated
    0x00280103,  # PixelRepresentation
)
_IMAGE_POSITION = 0x00200032
_PIXEL_DATA = 0x7FE00010


class SeriesError(InputFileError):
    """A DICOM series that cannot be used; ``path`` is the offending file (or the folder)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(path, reason)


@dataclass
class DicomVolume:
    """One series as a volume: ``pixels`` (slices, rows, cols) uint16, slice 0 first along the
    slice normal, MONOCHROME1 already inverted; ``spacing_mm`` is (slice, row, column);
    ``files`` in slice order; ``notes`` say what was tolerated or fixed on the way."""

    pixels: np.ndarray
    spacing_mm: tuple[float, float, float]
    photometric: str
    series_description: str
    side: str | None
    patient_id: str
    study_date: str
    series_uid: str
    orientation: tuple[float, float, float, float, float, float]
    origin_mm: tuple[float, float, float]
    folder: Path
    files: tuple[Path, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        slices, rows, cols = self.pixels.shape
        return slices, rows, cols


def read_series(folder: Path | str, *, expected_description: str | None = None) -> DicomVolume:
    """Read the series in ``folder`` (one DICOM file per slice, any file names).

    Raises ``SeriesError`` naming the offending file when the folder is missing or empty, a file
    is not (complete) DICOM or lacks pixel data, slices disagree in size, orientation, pixel
    spacing, photometric interpretation or series, positions repeat, a slice is missing, the
    slice spacing is uneven, the series has a single slice, its pixel data cannot be decoded, or
    its description is not ``expected_description``. Hidden files (``.name``) are ignored.
    """
    folder = Path(folder)
    files, notes = _slice_files(folder)
    first = _read_file(files[0])
    ref = _reference(files[0], first)
    description = str(first.get("SeriesDescription", "")).strip()
    if expected_description is not None:
        expected = expected_description.strip()
        if description.upper() != expected.upper():
            raise SeriesError(files[0], f"series description is {description!r}, expected {expected!r}")

    pixels = np.empty((len(files), ref.rows, ref.cols), dtype=np.uint16)
    origins = np.empty((len(files), 3), dtype=np.float64)
    for index, path in enumerate(files):
        ds = first if index == 0 else _read_file(path)
        dtype = ref.native_dtype
        if index and _signature(ds) != ref.signature:
            _check_slice(path, ds, ref, files[0])
            dtype = _native_dtype(ds)
        origins[index] = _position(path, ds)
        pixels[index] = _slice_pixels(path, ds, ref, dtype, notes)

    positions = origins @ ref.normal
    order = np.argsort(positions, kind="stable")
    if np.any(order != np.arange(len(files))):
        pixels = pixels[order]
        notes.add("file names were not in slice-position order; sorted by position along the normal")
    ordered = [files[i] for i in order]
    step = _check_positions(ordered, positions[order])

    if ref.photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values bright: invert within the stored bit depth
        top = np.uint16(min((1 << ref.bits_stored) - 1, 65535))
        np.minimum(pixels, top, out=pixels)
        np.subtract(top, pixels, out=pixels)
        notes.add("MONOCHROME1 inverted")

    declared = first.get("SpacingBetweenSlices")
    if declared not in (None, "") and abs(float(declared) - step) > SPACING_TOLERANCE * step:
        notes.add(
            f"SpacingBetweenSlices {float(declared):g} mm differs from the slice positions' "
            f"{step:.4g} mm; used the positions"
        )

    volume = DicomVolume(
        pixels=pixels,
        spacing_mm=(step, float(ref.pixel_spacing[0]), float(ref.pixel_spacing[1])),
        photometric=ref.photometric,
        series_description=description,
        side=side_from_description(description),
        patient_id=str(first.get("PatientID", "")).strip(),
        study_date=str(first.get("StudyDate", "")).strip(),
        series_uid=ref.series_uid,
        orientation=tuple(float(v) for v in ref.orientation),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in origins[order[0]]),  # type: ignore[arg-type]
        folder=folder,
        files=tuple(ordered),
        notes=sorted(notes),
    )
    log.debug("read %s: shape %s, spacing %s, notes %s", folder, volume.shape, volume.spacing_mm, volume.notes)
    return volume


def _slice_files(folder: Path) -> tuple[list[Path], set[str]]:
    """The slice files of ``folder`` sorted by name, and notes on what was skipped."""
    if not folder.exists():
        raise SeriesError(folder, "series folder does not exist")
    if not folder.is_dir():
        raise SeriesError(folder, "is not a folder")
    notes: set[str] = set()
    entries = sorted(folder.iterdir())
    files = [p for p in entries if not p.name.startswith(".") and p.is_file()]
    if hidden := [p.name for p in entries if p.name.startswith(".")]:
        notes.add(f"ignored hidden file(s) {', '.join(hidden)}")
    if subfolders := [p.name for p in entries if not p.name.startswith(".") and p.is_dir()]:
        notes.add(f"ignored subfolder(s) {', '.join(subfolders)}")
    if not files:
        raise SeriesError(folder, "no slice files in the series folder")
    if len(files) == 1:
        raise SeriesError(files[0], "series has a single slice; a volume needs at least 2")
    return files, notes


def _read_file(path: Path) -> FileDataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        raise SeriesError(path, "not a DICOM file (no DICM marker after the preamble)") from None
    except Exception as exc:  # truncated or garbled files fail in many ways inside pydicom
        raise SeriesError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None


# pydicom element values are untyped (str, numbers, MultiValue, ...): callers convert and check them
def _required(path: Path, ds: FileDataset, keyword: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise SeriesError(path, f"missing {keyword} (incomplete or truncated file?)")
    return value


def _floats(path: Path, ds: FileDataset, keyword: str, count: int) -> np.ndarray:
    value = _required(path, ds, keyword)
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise SeriesError(path, f"{keyword} {value!r} is not {count} numbers") from None
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise SeriesError(path, f"{keyword} {value!r} is not {count} numbers")
    return numbers


@dataclass
class _Reference:
    """Header values every slice of the series must share (taken from the first file)."""

    rows: int
    cols: int
    orientation: np.ndarray
    normal: np.ndarray
    pixel_spacing: np.ndarray
    photometric: str
    series_uid: str
    bits_stored: int
    signature: tuple[object, ...]
    native_dtype: np.dtype | None  # uncompressed little-endian pixels: read the bytes directly


def _signature(ds: FileDataset) -> tuple[object, ...]:
    """The shared elements as read from the file (before attribute access decodes them)."""
    values: list[object] = []
    for tag in _SHARED_TAGS:
        element = ds.get_item(tag)
        values.append(None if element is None else element.value)
    file_meta = getattr(ds, "file_meta", None)
    values.append(None if file_meta is None else str(file_meta.get("TransferSyntaxUID", "")))
    return tuple(values)


def _native_dtype(ds: FileDataset) -> np.dtype | None:
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is None or syntax.is_compressed or not syntax.is_little_endian:
        return None
    key = (int(ds.get("BitsAllocated", 16)), int(ds.get("PixelRepresentation", 0)))
    return _NATIVE_DTYPES.get(key)


def _reference(path: Path, ds: FileDataset) -> _Reference:
    signature = _signature(ds)  # first: reading attributes below replaces the raw values
    rows = int(_required(path, ds, "Rows"))
    cols = int(_required(path, ds, "Columns"))
    orientation = _floats(path, ds, "ImageOrientationPatient", 6)
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 0.5:
        raise SeriesError(path, f"ImageOrientationPatient {list(orientation)} has parallel row and column cosines")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise SeriesError(path, f"unsupported PhotometricInterpretation {photometric!r} (need MONOCHROME1/2)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SeriesError(path, f"SamplesPerPixel {ds.SamplesPerPixel}: not a grayscale image")
    bits_allocated = int(ds.get("BitsAllocated", 16))
    check_pixel_depth(path, bits_allocated, int(ds.get("BitsStored", bits_allocated)))
    return _Reference(
        rows=rows,
        cols=cols,
        orientation=orientation,
        normal=normal / length,
        pixel_spacing=_floats(path, ds, "PixelSpacing", 2),
        photometric=photometric,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        bits_stored=int(ds.get("BitsStored", bits_allocated)),
        signature=signature,
        native_dtype=_native_dtype(ds),
    )


def _check_slice(path: Path, ds: FileDataset, ref: _Reference, first: Path) -> None:
    """Full header check of a slice whose shared elements are not byte-identical to the first's."""
    rows, cols = _required(path, ds, "Rows"), _required(path, ds, "Columns")
    if (rows, cols) != (ref.rows, ref.cols):
        raise SeriesError(path, f"slice is {rows}x{cols} (rows x columns) but {first.name} is {ref.rows}x{ref.cols}")
    orientation = _floats(path, ds, "ImageOrientationPatient", 6)
    if not np.allclose(orientation, ref.orientation, atol=ORIENTATION_TOLERANCE):
        raise SeriesError(
            path,
            f"ImageOrientationPatient {list(orientation)} differs from {first.name}'s {list(ref.orientation)}",
        )
    spacing = _floats(path, ds, "PixelSpacing", 2)
    if not np.allclose(spacing, ref.pixel_spacing, atol=PIXEL_SPACING_TOLERANCE_MM):
        raise SeriesError(path, f"PixelSpacing {list(spacing)} differs from {first.name}'s {list(ref.pixel_spacing)}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric != ref.photometric:
        raise SeriesError(
            path, f"PhotometricInterpretation {photometric} differs from {first.name}'s {ref.photometric}"
        )
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    if series_uid != ref.series_uid:
        raise SeriesError(
            path,
            f"SeriesInstanceUID {series_uid} differs from {first.name}'s {ref.series_uid}: "
            "files of two series in one folder",
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SeriesError(path, f"SamplesPerPixel {ds.SamplesPerPixel}: not a grayscale image")


def _position(path: Path, ds: FileDataset) -> np.ndarray:
    """ImagePositionPatient, parsed straight from its encoded text when possible."""
    element = ds.get_item(_IMAGE_POSITION)
    if element is not None and isinstance(element.value, bytes):
        try:
            values = np.array([float(v) for v in element.value.split(b"\\")])
        except ValueError:
            values = np.empty(0)
        if values.shape == (3,) and np.all(np.isfinite(values)):
            return values
    return _floats(path, ds, "ImagePositionPatient", 3)


def _slice_pixels(path: Path, ds: FileDataset, ref: _Reference, dtype: np.dtype | None, notes: set[str]) -> np.ndarray:
    element = ds.get_item(_PIXEL_DATA)
    if element is None:
        raise SeriesError(path, "no pixel data (PixelData element missing; truncated file?)")
    if dtype is not None:
        # uncompressed: view the bytes, cheaper than pydicom's generic decoder path
        data = element.value if isinstance(element.value, bytes) else ds.PixelData
        expected = ref.rows * ref.cols * dtype.itemsize
        if len(data) < expected:
            raise SeriesError(
                path,
                f"pixel data has {len(data)} bytes, expected {expected} for {ref.rows}x{ref.cols} (truncated file?)",
            )
        image = np.frombuffer(data, dtype=dtype, count=ref.rows * ref.cols).reshape(ref.rows, ref.cols)
    else:
        image = _decoded_pixels(path, ds, notes)
        check_value_range(path, image)
        if image.shape != (ref.rows, ref.cols):
            raise SeriesError(path, f"pixel data has shape {image.shape}, expected one {ref.rows}x{ref.cols} frame")
    if image.dtype.kind == "i" and image.size and (low := int(image.min())) < 0:
        # clipping would change the values silently: read exactly or not at all
        raise SeriesError(path, f"pixel value {low} below 0 in signed pixel data; unsupported (values must be >= 0)")
    return image


def _decoded_pixels(path: Path, ds: FileDataset, notes: set[str]) -> np.ndarray:
    """Pixels through pydicom's decoders (compressed or unusual encodings)."""
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    name = getattr(syntax, "name", str(syntax))
    try:
        image = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        # no installed plugin handles this transfer syntax
        raise SeriesError(path, f"cannot decode pixel data with transfer syntax {name} ({syntax}): {exc}") from None
    except Exception as exc:
        raise SeriesError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    if syntax is not None and syntax.is_compressed:
        notes.add(f"decoded {name} pixel data")
    return image


def _check_positions(ordered: list[Path], positions: np.ndarray) -> float:
    """Check sorted slice positions are distinct, evenly spaced and gap-free; return the step."""
    steps = np.diff(positions)
    if (duplicates := np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)).size:
        i = int(duplicates[0])
        raise SeriesError(
            ordered[i + 1],
            f"duplicate slice position: same position ({positions[i]:.4f} mm along the slice normal) "
            f"as {ordered[i].name}",
        )
    step = round(float(np.median(steps)), 6)
    if (gaps := np.flatnonzero(steps > step * GAP_FACTOR)).size:
        i = int(gaps[0])
        raise SeriesError(
            ordered[i + 1],
            f"missing slice(s): gap of {steps[i]:.4g} mm after {ordered[i].name} where slices are "
            f"{step:.4g} mm apart (about {round(steps[i] / step) - 1} slice(s) missing)",
        )
    if (uneven := np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)).size:
        i = int(uneven[0])
        raise SeriesError(
            ordered[i + 1],
            f"inconsistent slice spacing: {steps[i]:.4g} mm after {ordered[i].name}, the series' step is {step:.4g} mm",
        )
    return step
