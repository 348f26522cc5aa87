"""A release file as bytes and as a table of strings: encoding, text checks, header, rows.

Files are read once, as bytes (so that their sha256 comes for free), then parsed with pandas
restricted to the columns asked for, because AllClinical files are hundreds of columns wide and
only a handful are ever needed. Bad input raises ``InputFileError`` naming the file, the line
(the header is line 1) and the column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.release.archive import member_sha256, read_member, read_member_head
from oaicohort.release.discovery import SAS, SourceFile
from oaicohort.release.encodings import check_one_encoding
from oaicohort.release.table import Table

log = logging.getLogger(__name__)


class TableSource(Protocol):
    """Something the table readers read: a file's bytes, or a table assembled from an NDA package."""

    @property
    def source(self) -> SourceFile: ...

    def table(self, columns: Iterable[str], *, required: Iterable[str] = (), allow_empty: bool = True) -> Table: ...


@dataclass(frozen=True)
class FileBytes:
    """A file's content read once, with the provenance facts computed from the same bytes."""

    source: SourceFile
    data: bytes
    sha256: str

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    def table(self, columns: Iterable[str], *, required: Iterable[str] = (), allow_empty: bool = True) -> Table:
        """The ``columns`` of this table as strings (see ``read_table``); SAS files are converted."""
        if self.source.form == SAS:
            from oaicohort.release.sas import read_sas_table  # pyreadstat: only for SAS files

            return read_sas_table(self, columns, required=required, allow_empty=allow_empty)
        return read_table(self, columns, required=required, allow_empty=allow_empty)


def load_source(source: SourceFile) -> FileBytes:
    """Read a file (or archive member) whole and hash it (one pass over the disk)."""
    if source.member is not None:
        data = read_member(source)
    else:
        try:
            with open_regular(source.path) as fh:
                data = fh.read()
        except OSError as exc:
            raise InputFileError(source.path, f"cannot read file: {exc.strerror or exc}") from None
    return FileBytes(source, data, hashlib.sha256(data).hexdigest())


def hash_source(source: SourceFile) -> str:
    """sha256 of a file or archive member, streamed (for checking a release against earlier runs cheaply)."""
    if source.member is not None:
        return member_sha256(source)
    try:
        with open_regular(source.path) as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise InputFileError(source.path, f"cannot read file: {exc.strerror or exc}") from None


def open_regular(path: Path) -> io.BufferedReader:
    """Open ``path`` for reading without ever blocking: a file swapped for a FIFO or a device
    after discovery is refused instead of waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputFileError(path, "not a regular file (a FIFO, device or socket); cannot read it as a table")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def unify_line_ends(data: bytes) -> bytes:
    """``\\r\\n`` (Windows) and a lone ``\\r`` (classic Mac OS) as ``\\n``, so that every line-end
    convention, mixed ones included, gives the same lines (a file re-saved on an old Mac is one
    long line to a reader that only knows ``\\n``)."""
    if b"\r" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def text_encoding(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # older releases were exported from SAS on Windows
        return "latin-1"
    return "utf-8"


# C0 control characters that never occur in a text table (tab, line ends, form feed and the
# DOS end-of-file mark ^Z do)
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x19\x1b-\x1f]")
_TEXT_SNIFF_BYTES = 65536


def check_text(path: Path, data: bytes) -> None:
    """Refuse bytes that are not a text table: UTF-16/32 text, or binary data (a NUL anywhere, or
    another control character near the start). UTF-8 and latin-1 text pass."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputFileError(path, "UTF-16 text (a Windows 'Unicode' export); save it as UTF-8 or latin-1", line=1)
    # a NUL anywhere (cheap to find); other control bytes near the start (a regex over a whole
    # AllClinical file would cost more than parsing it)
    found = _BINARY.search(data, 0, _TEXT_SNIFF_BYTES)
    at = found.start() if found else data.find(b"\x00")
    if at >= 0:
        raise InputFileError(
            path,
            f"binary data (byte 0x{data[at]:02x} at offset {at}): not a text table; "
            "is this the right file, or a damaged download?",
            line=data.count(b"\n", 0, at) + 1,
        )
    check_one_encoding(path, data)


def read_header(source: SourceFile, sep: str = "|") -> list[str]:
    """Upper-cased column names of a file, reading only its first line (a SAS file's metadata)."""
    if source.form == SAS:
        from oaicohort.release.sas import read_sas_header

        return read_sas_header(source)
    try:
        if source.member is not None:
            first = read_member_head(source)  # never the whole member for its header
        else:
            with open_regular(source.path) as fh:  # the first line, ended by any line end
                first = b""
                while not re.search(rb"[\r\n]", first):
                    block = fh.read(65536)
                    if not block:
                        break
                    first += block
    except OSError as exc:
        raise InputFileError(source.where, f"cannot read file: {exc.strerror or exc}") from None
    return _header_names(source.where, re.split(rb"[\r\n]", first, maxsplit=1)[0], sep)


def header_names(raw: FileBytes, sep: str = "|") -> list[str]:
    """Upper-cased column names of a file already read (its first line)."""
    first = re.split(rb"[\r\n]", _without_eof_mark(raw.data), maxsplit=1)[0]
    return _header_names(raw.source.where, first, sep)


_OTHER_DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def _header_names(path: Path, first_line: bytes, sep: str) -> list[str]:
    check_text(path, first_line)
    text = first_line.decode(text_encoding(first_line)).lstrip("\ufeff")
    if not text.strip():
        raise InputFileError(path, "empty file or blank header line; expected a header row", line=1)
    if sep not in text:
        found = [name for d, name in _OTHER_DELIMITERS.items() if d != sep and d in text]
        looks = f"; the header looks {found[0]}-separated" if found else ""
        expected = _OTHER_DELIMITERS[sep]
        raise InputFileError(path, f"unknown delimiter: expected {expected}-separated ({sep!r}) text{looks}", line=1)
    names = text.split(sep) if sep == "|" else next(csv.reader([text], delimiter=sep))
    return [name.strip().upper() for name in names]


# --------------------------------------------------------------------------- delimited tables


def read_table(
    raw: FileBytes,
    columns: Iterable[str],
    *,
    required: Iterable[str] = (),
    sep: str = "|",
    allow_empty: bool = True,
    description_row: bool = False,
) -> Table:
    """Parse ``raw`` keeping only ``columns`` (matched case-insensitively; absent ones skipped).

    ``required`` columns must be in the header. Rows must have as many fields as the header
    (pipe files are not quoted, so a ragged row means a damaged file); blank lines are ignored.
    A file with a header and no rows is an error unless ``allow_empty`` (then it is logged).
    ``description_row``: the first row below the header describes the columns (NDA files) and
    is skipped. A DOS end-of-file mark (^Z) ending the file is accepted.
    """
    path = raw.source.where
    data = _without_eof_mark(raw.data)
    if not data or data.isspace():  # isspace stops at the first other byte
        raise InputFileError(path, "empty file; expected a header row", line=1)
    check_text(path, data)
    data = unify_line_ends(data)
    end = data.find(b"\n")
    first = data if end < 0 else data[:end]
    header = _header_names(path, first[:-1] if first.endswith(b"\r") else first, sep)
    position: dict[str, int] = {}
    for i, name in enumerate(header):
        position.setdefault(name, i)
    for name in required:
        if name.upper() not in position:
            raise InputFileError(
                path,
                f"missing required column {name} (header has {len(header)} columns)",
                line=1,
                column=name,
            )
    wanted = sorted({position[c.upper()] for c in columns if c.upper() in position})
    encoding = text_encoding(data)
    if sep == "|":
        row_lines = _pipe_row_lines(path, data, len(header))
    elif b'"' not in data and len(sep) == 1:  # no quoting: every line is one record
        row_lines = _pipe_row_lines(path, data, len(header), sep)
    else:
        quoted = _quoted_row_lines(path, data, len(header), sep) if len(sep) == 1 else None
        row_lines = quoted if quoted is not None else _csv_row_lines(path, data.decode(encoding), len(header), sep)
    if description_row:
        if not row_lines.size:
            raise InputFileError(path, "no description row below the header (an NDA structure file has one)", line=2)
        row_lines = row_lines[1:]
    if not row_lines.size:
        if not allow_empty:
            raise InputFileError(
                path,
                "no data rows below the header; this file lists every participant, so it is "
                "truncated or not the file it is named after",
                line=2,
            )
        log.warning("%s: no data rows below the header", path)
    if not wanted or not row_lines.size:
        frame = pd.DataFrame({header[i]: pd.Series([], dtype=object) for i in wanted})
        return Table(raw.source, frame.iloc[:0], row_lines, header)
    quoting = csv.QUOTE_NONE if sep == "|" else csv.QUOTE_MINIMAL
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            sep=sep,
            header=0,
            usecols=wanted,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            quoting=quoting,
            encoding=encoding,
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        where = re.search(r"line (\d+)", str(exc))
        raise InputFileError(path, f"cannot parse file: {exc}", line=int(where.group(1)) if where else None) from None
    frame.columns = [header[i] for i in wanted]
    if description_row:
        frame = frame.iloc[1:].reset_index(drop=True)
    if len(frame) != len(row_lines):  # the two parsers disagree: refuse rather than misnumber
        raise InputFileError(path, f"cannot parse file: {len(frame)} rows read, {len(row_lines)} expected")
    frame = frame.apply(lambda col: col.str.strip())
    return Table(raw.source, frame, row_lines, header)


_EOF_MARK = re.compile(rb"\x1a[\r\n]*\Z")


def _without_eof_mark(data: bytes) -> bytes:
    """``data`` without the DOS end-of-file mark (^Z) that old Windows tools end text files with."""
    if b"\x1a" not in data[-4:]:
        return data
    return _EOF_MARK.sub(b"", data)


def _pipe_row_lines(
    path: Path, data: bytes, n_columns: int, sep: str = "|", separators: np.ndarray | None = None
) -> np.ndarray:
    """Line numbers of the data rows of an unquoted delimited file; a ragged row is an error.

    Counted over the bytes with numpy (line ends and pipes), not line by line: this runs over
    every byte of files hundreds of columns wide. ``separators``: the positions of the field
    separators, where not every ``sep`` byte is one (quoted fields)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 0x0A)
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(buf))
    starts = np.r_[0, ends[:-1] + 1]
    pipes = np.flatnonzero(buf == ord(sep)) if separators is None else separators
    fields = np.searchsorted(pipes, ends) - np.searchsorted(pipes, starts) + 1
    length = ends - starts
    ends_cr = (length > 0) & (buf[np.maximum(ends - 1, 0)] == 0x0D)
    blank = (length == 0) | ((length == 1) & ends_cr)
    numbers = np.arange(1, len(starts) + 1, dtype=np.int64)
    data_rows = ~blank
    data_rows[0] = False  # the header
    ragged = data_rows & (fields != n_columns)
    if ragged.any():
        at = int(np.flatnonzero(ragged)[0])
        raise InputFileError(
            path, f"row has {int(fields[at])} fields but the header has {n_columns}", line=int(numbers[at])
        )
    return numbers[data_rows]


def _quoted_row_lines(path: Path, data: bytes, n_columns: int, sep: str) -> np.ndarray | None:
    """``_pipe_row_lines`` for a file with quote characters, counting only the separators outside
    quoted fields (real image03 exports quote every field; free text has quotes inside fields,
    which are literal there). None (parse it record by record) where that cannot be told from
    the bytes alone: a line with a quoted field and a quote not at a field's edge, or a quoted
    field running over a line end."""
    buf = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buf == 0x22)
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    prev = buf[np.maximum(quotes - 1, 0)]
    follow = buf[np.minimum(quotes + 1, len(buf) - 1)]
    separator = ord(sep)
    # a quote may open a field at its start, close one before a separator or line end, or be
    # one of a doubled pair inside it
    opens = (quotes == start) | (prev == separator) | (prev == 0x0A) | (prev == 0x0D) | (prev == 0x22)
    closes = (quotes == len(buf) - 1) | (follow == separator) | (follow == 0x0A) | (follow == 0x0D) | (follow == 0x22)
    ends = np.flatnonzero(buf == 0x0A)
    line_of = np.searchsorted(ends, quotes)
    field_start = opens & (prev != 0x22)
    if not field_start.any():  # quotes inside fields only (free text): literal, every tab a separator
        return _pipe_row_lines(path, data, n_columns, sep)
    has_quoted = np.zeros(len(ends) + 1, dtype=bool)
    has_quoted[line_of[field_start]] = True
    quoting = has_quoted[line_of]  # quotes on lines where a field starts with one
    active = np.zeros(len(buf), dtype=np.uint8)
    active[quotes[quoting]] = 1
    inside = np.bitwise_xor.accumulate(active)
    toggles_in = inside[quotes[quoting]] == 1
    if not (np.where(toggles_in, opens[quoting], closes[quoting])).all():
        return None  # a quote inside a field of a line that also has quoted fields
    if inside[ends].any():  # a quoted field runs over a line end
        return None
    separators = np.flatnonzero((buf == separator) & (inside == 0))
    return _pipe_row_lines(path, data, n_columns, sep, separators)


def _csv_row_lines(path: Path, text: str, n_columns: int, sep: str) -> np.ndarray:
    """Line numbers where the records of a (possibly quoted) CSV file start; ragged is an error."""
    numbers: list[int] = []
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    next(reader, None)
    previous_end = reader.line_num
    for record in reader:
        start, previous_end = previous_end + 1, reader.line_num
        if not record:
            continue
        if len(record) != n_columns:
            raise InputFileError(path, f"row has {len(record)} fields but the header has {n_columns}", line=start)
        numbers.append(start)
    return np.asarray(numbers, dtype=np.int64)
