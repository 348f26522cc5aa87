"""Class 10: pixels are never changed silently.

A radiograph's pixels are read exactly or rescaled by a rule recorded with them: signed pixels
are offset by ``2**(BitsStored-1)`` (order and differences kept), 32-bit values above 16 bits are
divided by the smallest power of two that fits them, never wrapped or clipped. MR series of
other depths or with negative values are recorded failures (class 2); the rule here is the
readers' pixel conversion (``oaicohort.imaging.series.radiograph.exact_uint16``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from oaicohort.imaging.series.dicom import SeriesError
from oaicohort.imaging.series.radiograph import exact_uint16, read_radiograph
from oaicohort.synth.dicom_writer import RadiographMeta, write_radiograph

META = RadiographMeta(
    patient_id="9000001",
    series_description="Bilateral PA Fixed Flexion Knee",
    study_date="20050101",
    accession_number="1",
    series_uid="1.2.3.4",
    study_uid="1.2.3",
    pixel_spacing_mm=0.5,
)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(4)
    out = rng.integers(0, 4096, size=(48, 64)).astype(np.uint16)
    out[0, 0], out[0, 1] = 0, 4095  # the whole 12-bit range
    return out


def _radiograph(folder: Path, image: np.ndarray, edit: object = None) -> Path:
    path = write_radiograph(folder / "001", image, META)
    if edit is not None:
        ds = pydicom.dcmread(path)
        edit(ds)  # type: ignore[operator]
        ds.save_as(path, enforce_file_format=True)
    return folder


def test_a_32_bit_radiograph_is_rescaled_by_a_recorded_rule_not_wrapped(tmp_path: Path, image: np.ndarray) -> None:
    def to_32_bits(ds: pydicom.Dataset) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 24, 23
        ds.PixelData = (image.astype("<u4") << 8).tobytes()  # up to 1,048,320: wraps in 16 bits

    read = read_radiograph(_radiograph(tmp_path, image, to_32_bits))
    # max 4095 << 8 has 20 bits: divided by 2**4, the 12-bit image times 16, exactly
    np.testing.assert_array_equal(read.pixels, image.astype(np.uint32) << 4)
    assert read.pixels.dtype == np.uint16
    assert read.notes == ["24-bit pixel values (max 1048320) divided by 16 to fit 16 bits"]


def test_a_32_bit_radiograph_within_16_bits_is_read_exactly(tmp_path: Path, image: np.ndarray) -> None:
    def to_32_bits(ds: pydicom.Dataset) -> None:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
        ds.PixelData = image.astype("<u4").tobytes()

    read = read_radiograph(_radiograph(tmp_path, image, to_32_bits))
    np.testing.assert_array_equal(read.pixels, image)
    assert read.notes == []


def test_a_signed_radiograph_is_offset_not_clipped(tmp_path: Path, image: np.ndarray) -> None:
    def to_signed(ds: pydicom.Dataset) -> None:
        ds.PixelRepresentation = 1  # 12-bit two's complement: -2048 .. 2047
        ds.PixelData = (image.astype(np.int16) - 2048).astype("<i2").tobytes()

    read = read_radiograph(_radiograph(tmp_path, image, to_signed))
    np.testing.assert_array_equal(read.pixels, image)  # offset by 2**11: the original values
    below = float(np.mean(image < 2048))
    assert read.notes == [f"signed pixels offset by +2048 ({below:.0%} were below 0; BitsStored 12)"]


def test_a_signed_monochrome1_radiograph_is_inverted_within_its_depth(tmp_path: Path, image: np.ndarray) -> None:
    def to_signed_mono1(ds: pydicom.Dataset) -> None:
        ds.PixelRepresentation = 1
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = (image.astype(np.int16) - 2048).astype("<i2").tobytes()

    read = read_radiograph(_radiograph(tmp_path, image, to_signed_mono1))
    np.testing.assert_array_equal(read.pixels, 4095 - image)
    assert read.notes[-1] == "MONOCHROME1 inverted"


def test_the_conversion_rule() -> None:
    notes: list[str] = []
    with pytest.raises(SeriesError, match="floating-point pixel data"):
        exact_uint16(Path("x.dcm"), np.zeros((2, 2), np.float32), 32, notes)
    with pytest.raises(SeriesError, match="outside the signed 8-bit range"):
        exact_uint16(Path("x.dcm"), np.array([[-200, 5]], np.int16), 8, notes)
    pixels, bits = exact_uint16(Path("x.dcm"), np.array([[0, 70000]], np.uint32), 32, notes)
    assert (
        pixels.tolist() == [[0, 35000]]
        and bits == 16
        and notes == ["32-bit pixel values (max 70000) divided by 2 to fit 16 bits"]
    )
