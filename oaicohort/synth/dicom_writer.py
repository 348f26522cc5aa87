"""DICOM writing for the synthetic images: MR series one file per slice, radiographs one file per
series, as in the OAI image packages.

``write_series`` builds the header with pydicom; Explicit VR Little Endian slices are then
encoded by a hand-written byte encoder (``_SliceEncoder``) that only re-encodes the elements that
change per slice and writes the same bytes as pydicom (a test checks this), because pydicom's
own writer costs more than the phantom for small series. All UIDs are derived from the series'
inputs, so the same inputs give the same bytes.

Default geometry: sagittal slices, ImageOrientationPatient ``[0, 1, 0, 0, 0, -1]`` (rows run
anterior -> posterior, columns superior -> inferior), so the slice normal (row x column cosine)
is -x and ImagePositionPatient moves along it by the slice spacing.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from oaicohort.synth.raster import MAX_VALUE

SAGITTAL_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@dataclass(frozen=True)
class SeriesMeta:
    """Header values of one series. Spacing is (slice, row, column) in mm."""

    patient_id: str
    series_description: str
    study_date: str = "20040101"
    study_description: str = "OAI^MR^ENROLLMENT"
    accession_number: str = ""
    series_uid: str | None = None
    study_uid: str | None = None
    spacing_mm: tuple[float, float, float] = (0.7, 0.365, 0.365)
    slice_thickness_mm: float | None = None
    orientation: tuple[float, float, float, float, float, float] = SAGITTAL_ORIENTATION
    series_number: int = 1


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def synth_uid(*parts: object) -> UID:
    """A deterministic UID under the UUID-derived root 2.25 (pydicom's own ignores entropy there)."""
    digest = hashlib.sha256("\x1f".join(["oaicohort.synth.images", *map(str, parts)]).encode()).digest()
    return UID(f"2.25.{int.from_bytes(digest[:16], 'big')}")


def _set_patient_and_study(ds: Dataset, meta: SeriesMeta | RadiographMeta) -> None:
    """The patient and study elements an MR series and a radiograph write alike."""
    ds.PatientID = meta.patient_id
    ds.PatientName = meta.patient_id
    ds.StudyDate = meta.study_date
    ds.SeriesDate = meta.study_date
    ds.StudyDescription = meta.study_description
    ds.SeriesDescription = meta.series_description
    ds.AccessionNumber = meta.accession_number


def _base_dataset(meta: SeriesMeta, shape: tuple[int, int, int], photometric: str) -> Dataset:
    _, rows, cols = shape
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Trio"
    ds.MagneticFieldStrength = "3"
    _set_patient_and_study(ds, meta)
    ds.StudyInstanceUID = meta.study_uid or synth_uid("study", meta.patient_id, meta.study_date)
    ds.SeriesInstanceUID = meta.series_uid or synth_uid(
        "series", meta.patient_id, meta.study_date, meta.series_description
    )
    ds.FrameOfReferenceUID = synth_uid("frame", ds.SeriesInstanceUID)
    ds.SeriesNumber = meta.series_number
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SP", "OSP"]
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "16.32"
    ds.EchoTime = "4.71"
    ds.FlipAngle = "25"
    ds.BodyPartExamined = "KNEE"
    ds.SliceThickness = _ds(meta.slice_thickness_mm if meta.slice_thickness_mm is not None else meta.spacing_mm[0])
    ds.SpacingBetweenSlices = _ds(meta.spacing_mm[0])
    ds.PixelSpacing = [_ds(meta.spacing_mm[1]), _ds(meta.spacing_mm[2])]
    ds.ImageOrientationPatient = [_ds(v) for v in meta.orientation]
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def write_series(
    folder: Path,
    volume: np.ndarray,
    meta: SeriesMeta,
    *,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    positions_mm: Sequence[float] | None = None,
    file_names: Sequence[str] | None = None,
    force_pydicom: bool = False,
) -> list[Path]:
    """Write ``volume`` (slices, rows, cols) as one DICOM file per slice into ``folder``.

    Slice ``k`` goes to ``file_names[k]`` (default ``001``, ``002``, ...) at ``positions_mm[k]``
    along the slice normal (default ``k * spacing``). With ``MONOCHROME1`` the stored values are
    ``4095 - volume`` so a reader that inverts gets ``volume`` back. ``transfer_syntax`` may be
    any syntax pydicom can encode (RLE Lossless is used by the tests). Tests use the overrides to
    build unusual or corrupt series. Explicit VR Little Endian slices are encoded by a fast path
    that writes the same bytes as pydicom (``force_pydicom=True`` uses pydicom's writer for every
    slice). Returns the written paths in slice order.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (slices, rows, cols), got shape {volume.shape}")
    if volume.dtype != np.uint16:
        raise ValueError(f"volume must be uint16, got {volume.dtype}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    n, rows, cols = volume.shape
    positions = [k * meta.spacing_mm[0] for k in range(n)] if positions_mm is None else list(positions_mm)
    names = [f"{k + 1:03d}" for k in range(n)] if file_names is None else list(file_names)
    if len(positions) != n or len(names) != n:
        raise ValueError("positions_mm and file_names need one entry per slice")
    stored = (MAX_VALUE - np.minimum(volume, MAX_VALUE)).astype(np.uint16) if photometric == "MONOCHROME1" else volume
    stored = np.ascontiguousarray(stored, dtype="<u2")

    orientation = np.asarray(meta.orientation, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    ds_slice, ds_row, ds_col = meta.spacing_mm
    # centre the field of view on the isocentre: first pixel of the middle slice at the corner
    corner = -orientation[:3] * ds_col * (cols - 1) / 2 - orientation[3:] * ds_row * (rows - 1) / 2
    start = corner - normal * ds_slice * (n - 1) / 2

    folder.mkdir(parents=True, exist_ok=True)
    base = _base_dataset(meta, volume.shape, photometric)
    syntax = UID(transfer_syntax)
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = MRImageStorage
    file_meta.TransferSyntaxUID = syntax
    file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    fast = _SliceEncoder(base, file_meta) if syntax == ExplicitVRLittleEndian and not force_pydicom else None
    paths = []
    for k in range(n):
        path = folder / names[k]
        sop_uid = UID(f"{base.SeriesInstanceUID}.{k + 1}")
        position = start + normal * positions[k]
        image_position = [_ds(v) for v in position]
        slice_location = _ds(float(np.dot(position, normal)))
        if fast is not None:
            path.write_bytes(fast.encode(sop_uid, k + 1, image_position, slice_location, stored[k]))
        else:
            ds = base.copy()
            ds.file_meta = FileMetaDataset(file_meta)
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = image_position
            ds.SliceLocation = slice_location
            if syntax.is_compressed:
                ds.compress(syntax, stored[k], encoding_plugin="pydicom")
            else:
                ds.PixelData = stored[k].tobytes()
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


IMPLEMENTATION_UID = synth_uid("implementation")
IMPLEMENTATION_VERSION = "OAICOHORT_SYNTH"

# Tags that change from slice to slice (in ascending order, as they appear in the file).
_SOP_INSTANCE_UID = 0x00080018
_INSTANCE_NUMBER = 0x00200013
_IMAGE_POSITION = 0x00200032
_SLICE_LOCATION = 0x00201041
_PIXEL_DATA = 0x7FE00010
_VARYING = (_SOP_INSTANCE_UID, _INSTANCE_NUMBER, _IMAGE_POSITION, _SLICE_LOCATION, _PIXEL_DATA)


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian element with a short (16-bit) length field."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _long_element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit-VR little-endian element of a VR with a 32-bit length field (OB, OW, ...)."""
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value


def _text(value: str, pad: bytes = b" ") -> bytes:
    data = value.encode("ascii")
    return data + pad if len(data) % 2 else data


class _SliceEncoder:
    """Explicit VR Little Endian slices from a header encoded once by pydicom.

    pydicom re-validates and re-encodes every element of every file, which costs more than the
    phantom for small series; here only the elements that change per slice are encoded, and a
    test checks the bytes equal pydicom's own output.
    """

    def __init__(self, base: Dataset, file_meta: FileMetaDataset) -> None:
        self.meta_elements = [
            (tag, file_meta[tag].VR, file_meta[tag].value) for tag in sorted(file_meta.keys()) if tag != 0x00020003
        ]
        segments: list[bytes] = []
        bounds = (0, *_VARYING)
        for low, high in itertools.pairwise(bounds):
            part = Dataset()
            for element in base:
                if low < element.tag < high:
                    part.add(element)
            segments.append(_encode_dataset(part))
        self.segments = segments

    def _file_meta(self, sop_uid: str) -> bytes:
        body = [_long_element(0x00020001, "OB", b"\x00\x01")]  # file meta version 1
        for tag, vr, value in self.meta_elements:
            if tag in (0x00020000, 0x00020001):
                continue
            body.append(_element(tag, vr, _text(str(value), b"\x00" if vr == "UI" else b" ")))
            if tag == 0x00020002:
                body.append(_element(0x00020003, "UI", _text(sop_uid, b"\x00")))
        joined = b"".join(body)
        return b"\x00" * 128 + b"DICM" + _element(0x00020000, "UL", struct.pack("<I", len(joined))) + joined

    def encode(self, sop_uid: str, instance: int, position: list[str], location: str, pixels: np.ndarray) -> bytes:
        seg = self.segments
        return b"".join(
            (
                self._file_meta(sop_uid),
                seg[0],
                _element(_SOP_INSTANCE_UID, "UI", _text(sop_uid, b"\x00")),
                seg[1],
                _element(_INSTANCE_NUMBER, "IS", _text(str(instance))),
                seg[2],
                _element(_IMAGE_POSITION, "DS", _text("\\".join(position))),
                seg[3],
                _element(_SLICE_LOCATION, "DS", _text(location)),
                seg[4],
                _long_element(_PIXEL_DATA, "OW", pixels.tobytes()),
            )
        )


def _encode_dataset(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Radiographs: one single-frame file per series


@dataclass(frozen=True)
class RadiographMeta:
    """Header values of one radiograph series (OAI_DISTRIBUTIONS.md section 4)."""

    patient_id: str
    series_description: str
    study_date: str
    accession_number: str
    series_uid: str
    study_uid: str
    pixel_spacing_mm: float
    study_description: str = "OAI^XR^ENROLLMENT"
    view_position: str = "PA"


def write_radiograph(path: Path, image: np.ndarray, meta: RadiographMeta) -> Path:
    """Write a (rows, cols) uint16 12-bit MONOCHROME2 image as one uncompressed CR DICOM file.

    Pixel size goes to ``ImagerPixelSpacing`` only (``PixelSpacing`` is absent, as in many OAI
    radiographs); ``ImageLaterality`` is absent: a reader must not rely on it.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ValueError(f"image must be a (rows, cols) uint16 array, got {image.dtype} {image.shape}")
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = f"{meta.series_uid}.1"
    ds.Modality = "CR"
    ds.Manufacturer = "SYNTH"
    _set_patient_and_study(ds, meta)
    ds.StudyInstanceUID = meta.study_uid
    ds.SeriesInstanceUID = meta.series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "KNEE"
    ds.ViewPosition = meta.view_position
    ds.ImagerPixelSpacing = [_ds(meta.pixel_spacing_mm), _ds(meta.pixel_spacing_mm)]
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image, dtype="<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
