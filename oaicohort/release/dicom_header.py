"""The one DICOM header an image scan reads per series: what an image index would list.

Only the first bytes of the file are read (``FIRST_BYTES``, growing to at most ``MAX_HEADER_BYTES``)
and parsed up to ``SeriesNumber`` (0020,0011): the elements an index needs all come before it, so
neither private vendor blocks nor pixel data are read. Uncompressed little-endian files (the
OAI's) are read by a plain walk over their elements; anything else by pydicom. A file in a zip archive is streamed the
same way, never unpacked to disk. Whatever is wrong with the file (not DICOM, truncated, a damaged
archive member, a header longer than the bound) is a ``HeaderError`` carrying one line of reason.
"""

from __future__ import annotations

import io
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from oaicohort.errors import InputFileError
from oaicohort.release.text import open_regular

FIRST_BYTES = 32 << 10
MAX_HEADER_BYTES = 4 << 20  # an MR slice header is ~10-20 kB; a longer one is not read

PATIENT_ID = 0x00100020
STUDY_DATE = 0x00080020
SERIES_TIME = 0x00080031
ACCESSION_NUMBER = 0x00080050
STUDY_DESCRIPTION = 0x00081030
SERIES_DESCRIPTION = 0x0008103E
SERIES_INSTANCE_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
_TAGS = [
    PATIENT_ID,
    STUDY_DATE,
    SERIES_TIME,
    ACCESSION_NUMBER,
    STUDY_DESCRIPTION,
    SERIES_DESCRIPTION,
    SERIES_INSTANCE_UID,
    SERIES_NUMBER,
]
_LAST = max(_TAGS)


class HeaderError(Exception):
    """A series' header file cannot be read; ``str()`` is the reason, in one line."""


@dataclass(frozen=True)
class SeriesHeader:
    """The index facts of one series, as its DICOM header states them (stripped text; "" when absent)."""

    patient_id: str
    study_date: str
    series_time: str
    accession_number: str
    study_description: str
    series_description: str
    series_uid: str
    series_number: int | None


def _text(ds: Any, tag: int) -> str:
    """An element's text as stored: the raw bytes are decoded here, not by pydicom's value
    conversion (which costs more than reading the header). Index fields are ASCII in the OAI;
    anything else is kept readable."""
    key = BaseTag(tag)
    if key not in ds:
        return ""
    value = ds.get_item(key).value
    if value is None:
        return ""
    return _decoded(value) if isinstance(value, bytes) else str(value).strip(" \x00\t\r\n")


def _number(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


# transfer syntaxes whose data set the element walk below reads (uncompressed, little endian)
_EXPLICIT_LE, _IMPLICIT_LE = b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2"
# explicit-VR elements with a 4-byte length (after 2 reserved bytes)
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_WANTED = frozenset(_TAGS)


def _walk(data: bytes) -> dict[int, bytes] | None:
    """The wanted elements' raw values, walking the elements of an uncompressed little-endian file
    up to the first tag after ``_LAST``; None for anything else (another transfer syntax, an
    element of undefined length, the data ending first), which pydicom then reads. The OAI's
    files take this path: it reads their headers several times faster than pydicom."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    pos, end, syntax = 132, len(data), None
    while pos + 8 <= end and data[pos : pos + 2] == b"\x02\x00":  # file meta: explicit VR always
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, start = int.from_bytes(data[pos + 8 : pos + 12], "little"), pos + 12
        else:
            length, start = int.from_bytes(data[pos + 6 : pos + 8], "little"), pos + 8
        if data[pos + 2 : pos + 4] == b"\x10\x00":
            syntax = data[start : start + length].rstrip(b"\x00 ")
        pos = start + length
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    explicit = syntax == _EXPLICIT_LE
    found: dict[int, bytes] = {}
    while pos + 8 <= end:
        tag = int.from_bytes(data[pos : pos + 2], "little") << 16 | int.from_bytes(data[pos + 2 : pos + 4], "little")
        if tag > _LAST:
            return found
        if not explicit:
            length, start = int.from_bytes(data[pos + 4 : pos + 8], "little"), pos + 8
        elif data[pos + 4 : pos + 6] in _LONG_VRS:
            length, start = int.from_bytes(data[pos + 8 : pos + 12], "little"), pos + 12
        else:
            length, start = int.from_bytes(data[pos + 6 : pos + 8], "little"), pos + 8
        if length == 0xFFFFFFFF or start + length > end:
            return None
        if tag in _WANTED:
            found[tag] = data[start : start + length]
        pos = start + length
    return None


def _decoded(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    return text.strip(" \x00\t\r\n")


def _header(values: dict[int, str]) -> SeriesHeader:
    if not any(values.values()):
        raise HeaderError("no PatientID, StudyDate, SeriesDescription ... in the DICOM header (damaged?)")
    return SeriesHeader(
        patient_id=values[PATIENT_ID],
        study_date=values[STUDY_DATE],
        series_time=values[SERIES_TIME],
        accession_number=values[ACCESSION_NUMBER],
        study_description=values[STUDY_DESCRIPTION],
        series_description=values[SERIES_DESCRIPTION],
        series_uid=values[SERIES_INSTANCE_UID],
        series_number=_number(values[SERIES_NUMBER]),
    )


def parse_header(data: bytes, *, whole: bool) -> SeriesHeader | None:
    """The header in ``data`` (the file's first bytes; ``whole`` when that is all of it), or None
    when ``data`` ends before the last element wanted and the file goes on (read more)."""
    walked = _walk(data)
    if walked is not None:
        return _header({tag: _decoded(walked[tag]) if tag in walked else "" for tag in _TAGS})
    reached = False

    def stop(tag: BaseTag, vr: str | None, length: int) -> bool:
        nonlocal reached
        reached = tag > _LAST
        return reached

    try:
        with warnings.catch_warnings():  # pydicom warns about odd values; the scan reports what matters
            warnings.simplefilter("ignore")
            ds = read_partial(io.BytesIO(data), stop_when=stop, specific_tags=list(_TAGS))
            values = {tag: _text(ds, tag) for tag in _TAGS}
    except InvalidDicomError as exc:  # the start of the file already says it is not DICOM
        raise HeaderError(_reason(exc)) from None
    except Exception as exc:  # a parser on untrusted bytes: every failure is "not a readable header"
        if not whole:
            return None  # perhaps only cut short by the bound: read more
        raise HeaderError(_reason(exc)) from None
    if not reached:
        if not whole:
            return None
        raise HeaderError("the file ends inside its DICOM header (truncated?)")
    return _header(values)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "DICM" in text or "File Meta" in text:
        return "not a DICOM file (no DICM prefix or file meta information)"
    return f"not a readable DICOM header ({text[:160]})"


def _read_bounded(fh: BinaryIO) -> SeriesHeader:
    data = fh.read(FIRST_BYTES)
    if not data:
        raise HeaderError("empty file")
    want = FIRST_BYTES
    while True:
        whole = len(data) < want
        header = parse_header(data, whole=whole)
        if header is not None:
            return header
        if want >= MAX_HEADER_BYTES:
            raise HeaderError(f"no complete DICOM header in its first {MAX_HEADER_BYTES >> 20} MiB; not read")
        more = fh.read(want)  # double what is read
        want *= 2
        data += more


def read_file_header(path: str) -> SeriesHeader:
    """The header of a DICOM file on disk (``HeaderError`` when it cannot be read)."""
    try:
        with open_regular(Path(path)) as fh:
            return _read_bounded(fh)
    except InputFileError as exc:
        raise HeaderError(exc.reason) from None
    except OSError as exc:
        raise HeaderError(f"cannot read file: {exc.strerror or exc}") from None


def read_member_header(archive: zipfile.ZipFile, member: str) -> SeriesHeader:
    """The header of a DICOM file inside an open zip archive, streamed (``HeaderError`` when it cannot be read)."""
    try:
        with archive.open(member) as fh:
            return _read_bounded(fh)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError, NotImplementedError, RuntimeError) as exc:
        raise HeaderError(f"cannot read the archive member: {' '.join(str(exc).split())}") from None
