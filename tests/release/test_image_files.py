"""Units of the image scan: where a series' visit folder and visit are, and the bounded header read."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from oaicohort.release import dicom_header
from oaicohort.release.dicom_header import MAX_HEADER_BYTES, HeaderError, read_file_header, read_member_header
from oaicohort.release.discovery import discover
from oaicohort.release.image_files import series_id, series_key, split_series_path
from oaicohort.release.image_index import read_contents
from oaicohort.release.text import load_source
from oaicohort.release.visit_paths import is_screening_study, visit_of_dir, visit_of_dirs
from oaicohort.synth.dicom_writer import SeriesMeta, write_series
from oaicohort.visits import SCREENING_VISIT, visit_month, visit_name

P01 = SCREENING_VISIT


@pytest.mark.parametrize(
    ("parts", "prefix", "folder", "visit"),
    [
        (["00m", "0.C.2", "9000001", "20040101", "12345678"], ["00m"], ["0.C.2", "9000001", "20040101", "12345678"], 0),
        (
            ["OAIBaselineImages", "results", "1.E.1", "9", "d", "s"],
            ["OAIBaselineImages", "results"],
            ["1.E.1", "9", "d", "s"],
            1,
        ),
        # screening radiographs carry baseline release codes, below 00m-like folders too
        (
            ["OAIScreeningImages", "results", "00m", "0.E.1", "9", "d", "s"],
            ["OAIScreeningImages", "results", "00m"],
            ["0.E.1", "9", "d", "s"],
            P01,
        ),
        (
            ["P001", "results", "P001.zip", "0.E.1", "9", "d", "s"],
            ["P001", "results", "P001.zip"],
            ["0.E.1", "9", "d", "s"],
            P01,
        ),
        (["12m", "9000001", "DESS"], ["12m"], ["9000001", "DESS"], 1),
        (["scans", "9000001", "DESS"], [], ["scans", "9000001", "DESS"], None),
    ],
)
def test_split_series_path(parts: list[str], prefix: list[str], folder: list[str], visit: int | None) -> None:
    assert split_series_path(parts) == (prefix, folder, visit)


def test_visit_names_and_screening_markers() -> None:
    assert [visit_of_dir(n) for n in ("P001", "p01", "OAIScreeningImages", "OAI_Screening_Images", "00m")] == [
        P01,
        P01,
        P01,
        None,
        0,
    ]
    assert visit_of_dirs(["P001", "results", "00m"]) == P01 and visit_of_dirs(["x", "96m", "y"]) == 10
    assert is_screening_study("OAI^XR^SCREENING^KNEE ") and is_screening_study("oai^xr^screening")
    assert not is_screening_study("OAI^MR^ENROLLMENT^RIGHT") and not is_screening_study(None)
    assert not is_screening_study("OAI^XR^RESCREENING")
    assert (visit_name(P01), visit_name(3), visit_month(P01)) == ("P01", "V03", 0)


def test_series_keys_and_ids() -> None:
    assert series_key("/r/00m", "0.C.2/9/d/s") == "/r/00m/0.C.2/9/d/s"
    assert (
        series_key("/r/a.zip!.", "0.C.2/9/d/s") == series_key("/r/a.zip!x/..", "0.C.2/9/d/s") == "/r/a.zip!0.C.2/9/d/s"
    )
    assert (
        series_id("image03/s%2F00m%2F0.C.2%2F9%2Fd%2F12345678.tar.gz") == series_id("0.C.2/9/d/12345678") == "12345678"
    )


def test_a_screening_package_index_reads_p01(tmp_path: Path) -> None:
    index = tmp_path / "P001" / "contents.csv"
    index.parent.mkdir()
    index.write_text(
        "Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription\n"
        "0.E.1/9000001/20040101/11111111,9000001,20040101,016600000001,OAI^XR^SCREENING^KNEE ,Bilateral PA Fixed Flexion Knee\n"
    )
    baseline = tmp_path / "00m" / "contents.csv"
    baseline.parent.mkdir()
    baseline.write_text(
        "Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription\n"
        "0.E.1/9000002/20040101/22222222,9000002,20040101,016600000002,OAI^XR^ENROLLMENT,Bilateral PA Fixed Flexion Knee\n"
        "0.E.1/9000003/20040101/33333333,9000003,20040101,016600000003,OAI^XR^SCREENING^KNEE,Bilateral PA Fixed Flexion Knee\n"
    )
    sources = {s.relative_path: s for s in discover(tmp_path).sources}
    assert sources["P001/contents.csv"].visit == P01
    listed: set[str] = set()
    screening = read_contents(load_source(sources["P001/contents.csv"]), listed=listed)
    mixed = read_contents(load_source(sources["00m/contents.csv"]))
    assert screening["visit"].tolist() == [P01]
    assert dict(zip(mixed["subject_id"], mixed["visit"])) == {9000002: 0, 9000003: P01}
    assert listed == {str(tmp_path.resolve() / "P001" / "0.E.1/9000001/20040101/11111111")}


def _slice(tmp_path: Path) -> Path:
    (path,) = write_series(
        tmp_path / "s",
        np.zeros((1, 8, 8), dtype=np.uint16),
        SeriesMeta(
            patient_id="9000001", series_description=" SAG_3D_DESS_LEFT  ", accession_number="0166", series_number=3
        ),
    )
    return path


def test_header_fields_from_a_file_and_a_zip_member(tmp_path: Path) -> None:
    path = _slice(tmp_path)
    header = read_file_header(str(path))
    assert (header.patient_id, header.series_description, header.accession_number) == (
        "9000001",
        "SAG_3D_DESS_LEFT",
        "0166",
    )
    assert (header.study_date, header.study_description, header.series_number) == ("20040101", "OAI^MR^ENROLLMENT", 3)
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, "0.C.2/9000001/20040101/1/001")
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert read_member_header(archive, "0.C.2/9000001/20040101/1/001") == header


def test_a_header_longer_than_the_bound_is_not_read(tmp_path: Path) -> None:
    """A huge element before the index elements: reading stops at the bound, with the reason."""
    path = _slice(tmp_path)
    ds = dcmread(path)
    ds.add_new(0x00091010, "OB", b"\x00" * (MAX_HEADER_BYTES + 1024))  # a private element of group 0009
    ds.save_as(path)
    with pytest.raises(HeaderError, match="no complete DICOM header in its first 4 MiB"):
        read_file_header(str(path))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"plain text, not DICOM" * 20, "not a DICOM file"),
        (b"\x00" * 128 + b"DICM" + b"\xff" * 64, "no PatientID, StudyDate, SeriesDescription"),
    ],
)
def test_unreadable_headers_say_why(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "001"
    path.write_bytes(data)
    with pytest.raises(HeaderError, match=reason):
        read_file_header(str(path))


def _edited(tmp_path: Path, name: str, edit: Callable[[Dataset], None]) -> Path:
    ds = dcmread(_slice(tmp_path))
    edit(ds)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _sequence(ds: Dataset, *, undefined: bool) -> None:
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds.ReferencedImageSequence = [item]  # (0008,1140): between the descriptions and PatientID
    ds["ReferencedImageSequence"].is_undefined_length = undefined


def _implicit(ds: Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _compressed(ds: Dataset) -> None:
    ds.compress(RLELossless, encoding_plugin="pydicom")


@pytest.mark.parametrize(
    ("edit", "walked"),
    [
        (lambda ds: None, True),
        (_implicit, True),
        (lambda ds: _sequence(ds, undefined=False), True),
        (lambda ds: _sequence(ds, undefined=True), False),  # undefined length: pydicom reads it
        (_compressed, False),  # another transfer syntax: pydicom reads it
    ],
)
def test_the_element_walk_reads_what_pydicom_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Callable[[Dataset], None], walked: bool
) -> None:
    path = _edited(tmp_path, "001", edit)
    data = path.read_bytes()
    assert (dicom_header._walk(data) is not None) == walked
    fast = dicom_header.parse_header(data, whole=True)
    monkeypatch.setattr(dicom_header, "_walk", lambda _data: None)
    assert dicom_header.parse_header(data, whole=True) == fast
    assert fast is not None and (fast.patient_id, fast.series_description, fast.series_number) == (
        "9000001",
        "SAG_3D_DESS_LEFT",
        3,
    )
    # cut short: more is read, never a wrong header
    assert dicom_header.parse_header(data[:200], whole=False) is None
