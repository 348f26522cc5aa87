"""Reading one knee radiograph series (one single-frame DICOM file, OAI_DISTRIBUTIONS.md section 4).

Pixel size comes from ``ImagerPixelSpacing``, else ``PixelSpacing``; MONOCHROME1 is inverted so
bone is always bright. A folder with no file, several image files, a multi-frame or colour
image, or no pixel size raises ``SeriesError`` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from oaicohort.imaging.series.dicom import SeriesError


@dataclass
class Radiograph:
    """A radiograph: ``pixels`` (rows, cols) uint16 with bone bright; square pixels of ``spacing_mm``."""

    pixels: np.ndarray
    spacing_mm: float
    series_description: str
    patient_id: str
    path: Path
    notes: list[str] = field(default_factory=list)


def read_radiograph(folder: Path | str) -> Radiograph:
    """The single image of the series in ``folder`` (hidden files ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesError(folder, "series folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise SeriesError(folder, "no image file in the series folder")
    if len(files) > 1:
        raise SeriesError(folder, f"{len(files)} files in a radiograph series; expected one")
    path = files[0]
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise SeriesError(path, "not a DICOM file (no DICM marker after the preamble)") from None
    except Exception as exc:
        raise SeriesError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    notes: list[str] = []
    spacing_value = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    if not spacing_value:
        raise SeriesError(path, "no ImagerPixelSpacing or PixelSpacing: the pixel size is unknown")
    try:
        row_mm, col_mm = (float(v) for v in spacing_value)
    except (TypeError, ValueError):
        raise SeriesError(path, f"pixel spacing {spacing_value!r} is not two numbers") from None
    if not (0.01 <= row_mm <= 2.0) or abs(row_mm - col_mm) > 1e-3:
        raise SeriesError(path, f"pixel spacing {row_mm:g} x {col_mm:g} mm: need square pixels of 0.01-2 mm")
    if "ImagerPixelSpacing" not in ds:
        notes.append("pixel size from PixelSpacing")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SeriesError(path, "not a single-frame grayscale image")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise SeriesError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    if pixels.ndim != 2:
        raise SeriesError(path, f"pixel data has shape {pixels.shape}; expected one 2D image")
    pixels, bits = exact_uint16(path, pixels, int(ds.get("BitsStored", pixels.dtype.itemsize * 8) or 16), notes)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        top = np.uint16((1 << bits) - 1)
        pixels = top - np.minimum(pixels, top)
        notes.append("MONOCHROME1 inverted")
    return Radiograph(
        pixels=pixels,
        spacing_mm=row_mm,
        series_description=str(ds.get("SeriesDescription", "")).strip(),
        patient_id=str(ds.get("PatientID", "")).strip(),
        path=path,
        notes=notes,
    )


def exact_uint16(path: Path, pixels: np.ndarray, bits_stored: int, notes: list[str]) -> tuple[np.ndarray, int]:
    """The decoded pixels as uint16, never clipped nor wrapped, and their bit depth after it.

    Values that fit 0..65535 are kept exactly. Signed pixels with values below 0 are offset by
    ``2**(BitsStored-1)`` (two's complement onto unsigned: order and differences kept); values
    above 16 bits (32-bit data) are divided by the smallest power of two that fits them. Either
    rule is recorded in ``notes`` (stored with the ROIs). Floating-point data is refused.
    """
    if pixels.dtype.kind == "f":
        raise SeriesError(path, f"floating-point pixel data ({pixels.dtype}) is not supported")
    if pixels.dtype.kind not in "iu":
        raise SeriesError(path, f"pixel data of type {pixels.dtype} is not a grayscale integer image")
    bits = max(1, min(int(bits_stored), pixels.dtype.itemsize * 8))
    if pixels.size == 0 or (pixels.dtype.itemsize <= 2 and pixels.dtype.kind == "u"):
        return pixels.astype(np.uint16), min(bits, 16)
    values = pixels.astype(np.int64)
    low = int(values.min())
    if low < 0:
        offset = 1 << (bits - 1)
        if low < -offset:
            raise SeriesError(path, f"pixel value {low} is outside the signed {bits}-bit range (BitsStored {bits})")
        below = float(np.mean(values < 0))
        values += offset
        notes.append(f"signed pixels offset by +{offset} ({below:.0%} were below 0; BitsStored {bits})")
    high = int(values.max())
    if high > np.iinfo(np.uint16).max:
        shift = high.bit_length() - 16
        values >>= shift
        notes.append(f"{bits}-bit pixel values (max {high}) divided by {1 << shift} to fit 16 bits")
        bits -= shift
    return values.astype(np.uint16), max(1, min(bits, 16))
