"""Reading the files of a real OAI release, as distributed, into typed pandas frames.

Everything here tolerates the variations of OAI_FORMATS.md: either folder layout, file-name and
header case, coded (``1: Right``) or bare (``1``) values, every missing-value code, UTF-8 or
latin-1 text, wrapper folders above image visit dirs. Bad input raises ``InputFileError`` naming
the file, the line (the header is line 1) and the column.

Files are read once, as bytes (so that their sha256 comes for free), then parsed with pandas
restricted to the columns asked for, because AllClinical files are hundreds of columns wide and
only a handful are ever needed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from oaicohort.errors import InputFileError
from oaicohort.release.encodings import check_one_encoding
from oaicohort.visits import RELEASE_VISITS, VISIT_MONTHS

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
SITES = ("A", "B", "C", "D", "E")  # the five OAI clinical centres (V00SITE)

# --------------------------------------------------------------------------- discovery

ENROLLEES = "enrollees"
ALLCLINICAL = "allclinical"
SUBJECTCHAR = "subjectchar"
OUTCOMES = "outcomes"
KXR_SQ_BU = "kxr_sq_bu"
CONTENTS = "contents"

# lower-cased file name -> kind; the group, when present, is the visit code
_FILE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"enrollees\.txt"), ENROLLEES),
    (re.compile(r"allclinical(\d{2})\.txt"), ALLCLINICAL),
    (re.compile(r"subjectchar(\d{2})\.txt"), SUBJECTCHAR),
    (re.compile(r"outcomes99\.txt"), OUTCOMES),
    (re.compile(r"kxr_sq_bu(\d{2})\.txt"), KXR_SQ_BU),
    (re.compile(r"contents\.csv"), CONTENTS),
)
_SKIPPED_DIRS = {"__macosx"}
_VISIT_DIR = re.compile(r"(\d{1,3})m", re.IGNORECASE)


@dataclass(frozen=True)
class SourceFile:
    """One OAI file found below a release root."""

    path: Path
    relative_path: str  # POSIX path relative to the root, as recorded in ingest provenance
    kind: str  # enrollees | allclinical | subjectchar | outcomes | kxr_sq_bu | contents
    visit: int | None  # OAI visit code from the file name (or the image visit dir)


def classify(name: str) -> tuple[str, int | None] | None:
    """Kind and visit code of an OAI file name (case-insensitive), or None for other files."""
    lower = name.lower()
    for pattern, kind in _FILE_PATTERNS:
        m = pattern.fullmatch(lower)
        if m:
            return kind, int(m.group(1)) if m.groups() else None
    return None


def visit_of_dir(name: str) -> int | None:
    """Visit code of an image package visit dir such as ``00m`` or ``96m``."""
    m = _VISIT_DIR.fullmatch(name)
    if not m:
        return None
    month = int(m.group(1))
    return next((v for v, mo in VISIT_MONTHS.items() if mo == month), None)


def discover_release(root: Path | str) -> list[SourceFile]:
    """Every OAI table and image index below ``root`` (any depth, any layout), sorted by path.

    A clinical table found twice (say a flat and a per-category copy side by side) is an error:
    silently picking one would make the ingest depend on directory order. ``contents.csv`` may
    occur many times per visit, because image packages split a visit over several folders.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise InputFileError(root_path, "no such directory (the OAI release root)")
    if not root_path.is_dir():
        raise InputFileError(root_path, "not a directory; give the folder that holds the OAI release")
    found: list[SourceFile] = []

    def walk_error(err: OSError) -> None:
        raise InputFileError(err.filename or root_path, f"cannot list directory: {err.strerror}")

    # image packages are often linked in from other disks, so links are followed, once each
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root_path, onerror=walk_error, followlinks=True):
        visited.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d.lower() not in _SKIPPED_DIRS
            and os.path.realpath(os.path.join(dirpath, d)) not in visited
        )
        for d in dirnames:
            if classify(d) is not None:
                log.warning("%s: a directory named like an OAI table; not read as one", Path(dirpath) / d)
        for name in sorted(filenames):
            kind_visit = classify(name)
            if kind_visit is None:
                continue
            kind, visit = kind_visit
            path = Path(dirpath) / name
            if not _is_regular_file(path):
                continue
            if kind == CONTENTS:
                visit = visit_of_dir(Path(dirpath).name)
            elif visit is not None and visit not in VISIT_MONTHS:
                log.warning("%s: visit %02d is not an OAI visit this toolkit knows; skipped", path, visit)
                continue
            found.append(SourceFile(path, path.relative_to(root_path).as_posix(), kind, visit))
    found.sort(key=lambda f: f.relative_path)
    seen: dict[tuple[str, int | None], SourceFile] = {}
    for f in found:
        if f.kind == CONTENTS:
            continue
        other = seen.get((f.kind, f.visit))
        if other is not None:
            raise InputFileError(
                f.path,
                f"the release holds this table twice (also {other.relative_path}); point ROOT at one release",
            )
        seen[(f.kind, f.visit)] = f
    return found


def _is_regular_file(path: Path) -> bool:
    """False (with a warning) for what is not a plain file: a FIFO, a device, a socket, a broken
    link. Such a "table" is skipped: opening a FIFO would block the ingest for ever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        log.warning("%s: a broken link (its target does not exist); skipped", path)
        return False
    except OSError:
        return True  # a link loop, no permission...: reading it says what is wrong, naming it
    if not stat.S_ISREG(mode):
        log.warning("%s: not a regular file (a FIFO, device or socket); skipped", path)
        return False
    return True


# --------------------------------------------------------------------------- raw bytes


@dataclass(frozen=True)
class FileBytes:
    """A file's content read once, with the provenance facts computed from the same bytes."""

    source: SourceFile
    data: bytes
    sha256: str

    @property
    def size_bytes(self) -> int:
        return len(self.data)


def _open_regular(path: Path) -> io.BufferedReader:
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


def load_source(source: SourceFile) -> FileBytes:
    """Read a file whole and hash it (one pass over the disk)."""
    try:
        with _open_regular(source.path) as fh:
            data = fh.read()
    except OSError as exc:
        raise InputFileError(source.path, f"cannot read file: {exc.strerror or exc}") from None
    return FileBytes(source, data, hashlib.sha256(data).hexdigest())


def hash_source(source: SourceFile) -> str:
    """sha256 of a file, streamed (for checking a release against earlier runs cheaply)."""
    try:
        with _open_regular(source.path) as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise InputFileError(source.path, f"cannot read file: {exc.strerror or exc}") from None


def _encoding(data: bytes) -> str:
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


def unify_line_ends(data: bytes) -> bytes:
    """``\\r\\n`` (Windows) and a lone ``\\r`` (classic Mac OS) as ``\\n``, so that every line-end
    convention, mixed ones included, gives the same lines (a file re-saved on an old Mac is one
    long line to a reader that only knows ``\\n``)."""
    if b"\r" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _split_lines(data: bytes) -> list[bytes]:
    lines = unify_line_ends(data).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def read_header(source: SourceFile, sep: str = "|") -> list[str]:
    """Upper-cased column names of a file, reading only its first line (ended by any line end)."""
    try:
        with _open_regular(source.path) as fh:
            first = b""
            while not re.search(rb"[\r\n]", first):
                block = fh.read(65536)
                if not block:
                    break
                first += block
    except OSError as exc:
        raise InputFileError(source.path, f"cannot read file: {exc.strerror or exc}") from None
    return _header_names(source.path, re.split(rb"[\r\n]", first, maxsplit=1)[0], sep)


_OTHER_DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def _header_names(path: Path, first_line: bytes, sep: str) -> list[str]:
    check_text(path, first_line)
    text = first_line.decode(_encoding(first_line)).lstrip("\ufeff")
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


def shown(value: object, limit: int = 60) -> str:
    """``repr`` of a cell for an error message, shortened: a damaged file can hold a 10 MB cell."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-10:]} ({len(str(value)):,} characters)"


@dataclass
class Table:
    """Selected columns of a delimited file: every cell a stripped string, plus file lines.

    ``frame`` has the upper-cased column names; ``lines`` gives each row's 1-based line number
    in the file (the header is line 1), for error messages and file-order provenance.
    """

    source: SourceFile
    frame: pd.DataFrame
    lines: np.ndarray
    header: list[str]

    def __len__(self) -> int:
        return len(self.frame)

    def error(self, message: str, *, row: int | None = None, column: str | None = None) -> InputFileError:
        line = int(self.lines[row]) if row is not None else None
        return InputFileError(self.source.path, message, line=line, column=column)


def read_table(
    raw: FileBytes,
    columns: Iterable[str],
    *,
    required: Iterable[str] = (),
    sep: str = "|",
    allow_empty: bool = True,
) -> Table:
    """Parse ``raw`` keeping only ``columns`` (matched case-insensitively; absent ones skipped).

    ``required`` columns must be in the header. Rows must have as many fields as the header
    (pipe files are not quoted, so a ragged row means a damaged file); blank lines are ignored.
    A file with a header and no rows is an error unless ``allow_empty`` (then it is logged).
    """
    path = raw.source.path
    data = raw.data
    if not data or data.isspace():  # isspace stops at the first other byte
        raise InputFileError(path, "empty file; expected a header row", line=1)
    check_text(path, data)
    data = unify_line_ends(data)
    lines = _split_lines(data)
    header = _header_names(path, lines[0], sep)
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
    encoding = _encoding(data)
    if sep == "|":
        row_lines = _pipe_row_lines(path, lines, len(header))
    else:
        row_lines = _csv_row_lines(path, data.decode(encoding), len(header), sep)
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
    if len(frame) != len(row_lines):  # the two parsers disagree: refuse rather than misnumber
        raise InputFileError(path, f"cannot parse file: {len(frame)} rows read, {len(row_lines)} expected")
    frame = frame.apply(lambda col: col.str.strip())
    return Table(raw.source, frame, row_lines, header)


def _pipe_row_lines(path: Path, lines: list[bytes], n_columns: int) -> np.ndarray:
    """Line numbers of the data rows of an unquoted pipe file; a ragged row is an error."""
    numbers: list[int] = []
    expected = n_columns - 1
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if line.count(b"|") != expected:
            raise InputFileError(
                path,
                f"row has {line.count(b'|') + 1} fields but the header has {n_columns}",
                line=number,
            )
        numbers.append(number)
    return np.asarray(numbers, dtype=np.int64)


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


# --------------------------------------------------------------------------- values

# A cell is "<head>" or "<head>: <label>"; the head is a number (code or measurement) or an OAI
# missing code (a dot and at most one letter).
_NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
_MISSING = r"^\.[A-Za-z]?$"
_NUMBER_RE = re.compile(_NUMBER)
_MISSING_RE = re.compile(_MISSING)


@dataclass(frozen=True)
class ParsedValue:
    """One OAI cell: its number (code or measurement), or its missing code, and the raw text."""

    number: float | None
    missing_code: str | None  # ".", ".A", ".T", ".P", ".M", ".D"...; "" for an empty cell
    text: str | None  # the stripped cell, None when empty


def parse_value(cell: str | None) -> ParsedValue:
    """Parse one cell: ``"1: Male"`` -> 1, ``".A: Not Expected"`` -> missing ``.A``, free text -> text."""
    text = (cell or "").strip()
    if not text:
        return ParsedValue(None, "", None)
    head = text.split(":", 1)[0].strip()
    if _NUMBER_RE.match(head):
        return ParsedValue(float(head), None, text)
    if _MISSING_RE.match(head):
        return ParsedValue(None, head.upper(), text)
    return ParsedValue(None, None, text)


@dataclass
class CodedColumn:
    """A column parsed vectorised: numbers (NaN where none), missing codes, unparseable cells."""

    number: np.ndarray  # float64
    missing_code: np.ndarray  # object: None where a number was read, "" for an empty cell
    invalid: np.ndarray  # bool: neither a number nor a missing code (free text)


def parse_coded(values: pd.Series) -> CodedColumn:
    """Vectorised ``parse_value`` over a column of strings (Arrow compute: no Python per cell)."""
    cells = pc.utf8_trim_whitespace(pa.array(values, type=pa.large_string(), from_pandas=True).fill_null(""))
    head = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(cells, ":", max_splits=1), 0))
    is_number = pc.match_substring_regex(head, _NUMBER).to_numpy(zero_copy_only=False)
    is_missing = pc.match_substring_regex(head, _MISSING).to_numpy(zero_copy_only=False)
    blank = pc.equal(cells, "").to_numpy(zero_copy_only=False)
    number = np.full(len(values), np.nan)
    if is_number.any():
        number[is_number] = pc.cast(pc.filter(head, is_number), pa.float64()).to_numpy(zero_copy_only=False)
    missing = np.full(len(values), None, dtype=object)
    if is_missing.any():
        missing[is_missing] = pc.utf8_upper(pc.filter(head, is_missing)).to_numpy(zero_copy_only=False)
    missing[blank] = ""
    return CodedColumn(number, missing, ~(is_number | is_missing | blank))


def numeric(table: Table, column: str, *, integer: bool = False) -> CodedColumn:
    """Parse a numeric/coded column; any cell that is neither a number nor a missing code is an error."""
    if column not in table.frame.columns:
        n = len(table)
        return CodedColumn(np.full(n, np.nan), np.full(n, "", dtype=object), np.zeros(n, dtype=bool))
    parsed = parse_coded(table.frame[column])
    bad = np.flatnonzero(parsed.invalid)
    if bad.size:
        row = int(bad[0])
        raise table.error(
            f"expected a number, a coded value ('1: label') or a missing code ('.: ...'), "
            f"got {shown(table.frame[column].iloc[row])}",
            row=row,
            column=column,
        )
    if np.isinf(parsed.number).any():
        row = int(np.flatnonzero(np.isinf(parsed.number))[0])
        raise table.error(f"number out of range, got {shown(table.frame[column].iloc[row])}", row=row, column=column)
    if integer:
        finite = ~np.isnan(parsed.number)
        fractional = finite & (parsed.number != np.round(parsed.number))
        if fractional.any():
            row = int(np.flatnonzero(fractional)[0])
            raise table.error(
                f"expected a whole number, got {shown(table.frame[column].iloc[row])}", row=row, column=column
            )
        # the database's INTEGER: 32 bits on PostgreSQL (SQLite would take more, silently)
        too_big = finite & (np.abs(np.nan_to_num(parsed.number)) > INT32_MAX)
        if too_big.any():
            row = int(np.flatnonzero(too_big)[0])
            raise table.error(
                f"whole number out of range (|n| > {INT32_MAX}), got {shown(table.frame[column].iloc[row])}",
                row=row,
                column=column,
            )
    return parsed


def as_int(parsed: CodedColumn) -> pd.Series:
    return pd.Series(parsed.number).round().astype("Int64")


def subject_ids(table: Table, column: str = "ID") -> np.ndarray:
    """OAI participant ids (7-digit integers) as int64; a non-numeric id names its line."""
    ids = table.frame[column]
    ok = ids.str.fullmatch(r"\d+").fillna(False).to_numpy(dtype=bool)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise table.error(f"participant id must be a whole number, got {shown(ids.iloc[row])}", row=row, column=column)
    # 9 digits fit the database's 32-bit INTEGER on every back-end
    long = (ids.str.len() > 9).to_numpy(dtype=bool)
    if long.any():
        row = int(np.flatnonzero(long)[0])
        raise table.error(
            f"participant id has {len(ids.iloc[row])} digits (OAI ids have 7, at most 9 are "
            f"accepted), got {shown(ids.iloc[row])}",
            row=row,
            column=column,
        )
    return ids.astype("int64").to_numpy()


def dates(table: Table, column: str, fmt: str = "%m/%d/%Y") -> pd.Series:
    """Dates (``mm/dd/yyyy`` by default) as ``datetime.date`` objects; missing codes -> None."""
    n = len(table)
    if column not in table.frame.columns:
        return pd.Series([None] * n, dtype=object)
    cells = table.frame[column]
    missing = parse_coded(cells).missing_code
    is_missing = np.array([m is not None for m in missing], dtype=bool)
    parsed = pd.to_datetime(cells.where(~is_missing, None), format=fmt, errors="coerce")
    bad = parsed.isna().to_numpy() & ~is_missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        human = fmt.replace("%m", "mm").replace("%d", "dd").replace("%Y", "yyyy")
        raise table.error(
            f"expected a date {human} or a missing code, got {shown(cells.iloc[row])}", row=row, column=column
        )
    out = np.full(n, None, dtype=object)
    ok = ~is_missing
    out[ok] = parsed[ok].dt.date.to_numpy(dtype=object)
    return pd.Series(out, dtype=object)


def knee_sides(table: Table, column: str = "SIDE") -> np.ndarray:
    """``SIDE`` (1/``1: Right`` -> ``"R"``, 2/``2: Left`` -> ``"L"``) as an array of strings."""
    cells = table.frame[column]
    parsed = parse_coded(cells)
    side = np.full(len(cells), None, dtype=object)
    side[parsed.number == 1] = "R"
    side[parsed.number == 2] = "L"
    words = cells.str.upper().str.strip()
    side[(words.isin(["RIGHT", "R"])).to_numpy(dtype=bool)] = "R"
    side[(words.isin(["LEFT", "L"])).to_numpy(dtype=bool)] = "L"
    unknown = np.array([s is None for s in side], dtype=bool)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise table.error(
            f"knee side must be 1 (right) or 2 (left), got {shown(cells.iloc[row])}", row=row, column=column
        )
    return side


def _text_or_none(table: Table, column: str) -> pd.Series:
    """A text column with None for empty cells (all None when the file lacks the column)."""
    out = np.full(len(table), None, dtype=object)
    if column in table.frame.columns:
        cells = table.frame[column]
        filled = (cells != "").to_numpy(dtype=bool)
        out[filled] = cells[filled].to_numpy(dtype=object)
    return pd.Series(out, dtype=object)


def _none_if_missing(values: pd.Series) -> pd.Series:
    """Strings with missing codes and empty cells replaced by None; ``"C: label"`` -> ``"C"``."""
    parsed = parse_coded(values)
    text = values.str.split(":", n=1).str[0].str.strip()
    keep = np.array([m is None for m in parsed.missing_code], dtype=bool)
    out = np.full(len(values), None, dtype=object)
    out[keep] = text[keep].to_numpy(dtype=object)
    return pd.Series(out, dtype=object)


# --------------------------------------------------------------------------- per-table readers


def read_enrollees(raw: FileBytes, variables: Sequence[str] = ()) -> tuple[pd.DataFrame, Table]:
    """Enrollees: ``subject_id, site, sex ("M"/"F"), race, cohort`` (one row per participant),
    plus a ``Table`` holding the extra ``variables`` asked for (see ``clinical_values``)."""
    t = read_table(
        raw,
        ["ID", "V00SITE", "P02SEX", "P02RACE", "V00COHORT", *variables],
        required=["ID", "V00SITE"],
        allow_empty=False,
    )
    sex_code = numeric(t, "P02SEX", integer=True).number
    sex = np.full(len(t), None, dtype=object)
    sex[sex_code == 1] = "M"
    sex[sex_code == 2] = "F"
    other = ~np.isnan(sex_code) & (sex_code != 1) & (sex_code != 2)
    if other.any():
        row = int(np.flatnonzero(other)[0])
        raise t.error(
            f"sex must be 1 (male) or 2 (female), got {shown(t.frame['P02SEX'].iloc[row])}", row=row, column="P02SEX"
        )
    site = _none_if_missing(t.frame["V00SITE"])
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t),
            "site": site,
            "sex": pd.Series(sex, dtype=object),
            "race": as_int(numeric(t, "P02RACE", integer=True)),
            "cohort": as_int(numeric(t, "V00COHORT", integer=True)),
            "line": t.lines,
        }
    )
    unknown_site = np.array([s is not None and s not in SITES for s in site], dtype=bool)
    if unknown_site.any():
        row = int(np.flatnonzero(unknown_site)[0])
        raise t.error(
            f"site must be one of the OAI clinical centres {', '.join(SITES)}, got {shown(t.frame['V00SITE'].iloc[row])}",
            row=row,
            column="V00SITE",
        )
    return _unique_subjects(t, frame), t


def _unique_subjects(t: Table, frame: pd.DataFrame) -> pd.DataFrame:
    dup = frame["subject_id"].duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise t.error(f"participant {frame['subject_id'].iloc[row]} is listed twice", row=row, column="ID")
    return frame


def read_subjectchar(raw: FileBytes, variables: Sequence[str] = ()) -> tuple[np.ndarray, Table]:
    """SubjectChar{vv}: participant ids and a ``Table`` of the ``variables`` asked for (the toolkit
    itself needs nothing from these files)."""
    t = read_table(raw, ["ID", *variables], required=["ID"], allow_empty=False)
    ids = subject_ids(t)
    _unique_subjects(t, pd.DataFrame({"subject_id": ids}))
    return ids, t


def allclinical_columns(visit: int) -> dict[str, str]:
    """The typed per-visit columns of ``AllClinical{vv}`` (field -> OAI variable)."""
    vv = f"V{visit:02d}"
    if visit == 0:
        # screening BMI (P01) is the baseline BMI; the enrolment visit has its own date column
        return {"age": "V00AGE", "bmi": "P01BMI", "visit_date": "V00EVDATE"}
    return {"age": f"{vv}AGE", "bmi": f"{vv}BMI", "visit_date": f"{vv}FVDATE"}


def read_allclinical(raw: FileBytes, variables: Sequence[str] = ()) -> tuple[pd.DataFrame, Table]:
    """AllClinical{vv}: per-visit ``subject_id, visit, age, bmi, visit_date``, plus a ``Table``
    holding the extra ``variables`` asked for (see ``clinical_values``).

    At baseline ``V00AGE`` and ``P01BMI`` are required: the paper's cohort needs them, and a file
    without them is not the AllClinical00 we think it is.
    """
    visit = raw.source.visit
    assert visit is not None
    typed = allclinical_columns(visit)
    required = ["ID", typed["age"], typed["bmi"]] if visit == 0 else ["ID"]
    t = read_table(raw, ["ID", *typed.values(), *variables], required=required, allow_empty=False)
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t),
            "visit": visit,
            "age": numeric(t, typed["age"]).number,
            "bmi": numeric(t, typed["bmi"]).number,
            "visit_date": dates(t, typed["visit_date"]),
            "line": t.lines,
        }
    )
    return _unique_subjects(t, frame), t


def clinical_values(table: Table, variables: Sequence[str], ids: np.ndarray | None = None) -> pd.DataFrame:
    """Long rows ``subject_id, variable, value_text, value_num, missing_code, source_file`` for the
    requested ``variables`` found in ``table`` (one row per subject and variable)."""
    ids = subject_ids(table) if ids is None else ids
    frames = []
    for name in variables:
        column = name.upper()
        if column not in table.frame.columns:
            continue
        parsed = parse_coded(table.frame[column])
        text = table.frame[column].where(table.frame[column] != "", None)
        frames.append(
            pd.DataFrame(
                {
                    "subject_id": ids,
                    "variable": column,
                    "value_text": text.astype(object).where(text.notna(), None),
                    "value_num": parsed.number,
                    "missing_code": parsed.missing_code,
                    "source_file": table.source.relative_path,
                }
            )
        )
    if not frames:
        return pd.DataFrame(
            columns=["subject_id", "variable", "value_text", "value_num", "missing_code", "source_file"]
        )
    return pd.concat(frames, ignore_index=True)


def kxr_columns(visit: int) -> dict[str, str]:
    """The ``kXR_SQ_BU{vv}`` columns read into ``xray_readings`` (field -> OAI variable)."""
    vv = f"V{visit:02d}XR"
    return {
        "klg": f"{vv}KL",
        "jsn_medial": f"{vv}JSM",
        "jsn_lateral": f"{vv}JSL",
        "osteophyte_fm": f"{vv}OSFM",
        "osteophyte_fl": f"{vv}OSFL",
        "osteophyte_tm": f"{vv}OSTM",
        "osteophyte_tl": f"{vv}OSTL",
    }


def read_kxr(raw: FileBytes) -> pd.DataFrame:
    """kXR_SQ_BU{vv}: one row per reading, in file order, with ``source_row`` = file line.

    Columns: ``subject_id, side, visit, read_project, klg, klg_missing_code, jsn_*,
    osteophyte_*, source_file, source_row``. Duplicates across reading projects are kept; which
    one counts is the label definition's business.
    """
    visit = raw.source.visit
    assert visit is not None
    cols = kxr_columns(visit)
    t = read_table(raw, ["ID", "SIDE", "READPRJ", *cols.values()], required=["ID", "SIDE", cols["klg"]])
    klg = numeric(t, cols["klg"], integer=True)
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t),
            "side": knee_sides(t),
            "visit": visit,
            "read_project": as_int(numeric(t, "READPRJ", integer=True)),
            "klg": as_int(klg),
            "klg_missing_code": pd.Series(klg.missing_code, dtype=object),
        }
    )
    out_of_range = frame["klg"].notna() & ~frame["klg"].isin([0, 1, 2, 3, 4])
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range.to_numpy())[0])
        raise t.error(f"KL grade must be 0-4, got {shown(t.frame[cols['klg']].iloc[row])}", row=row, column=cols["klg"])
    for field, column in cols.items():
        if field != "klg":
            frame[field] = numeric(t, column).number
    frame["source_file"] = raw.source.relative_path
    frame["source_row"] = t.lines
    return frame


# Outcomes99 knee columns: field -> suffix after V99E{R,L}K
OUTCOME_FIELDS: dict[str, str] = {
    "status": "RPSN",
    "at_baseline": "BLRP",
    "days_from_enrolment": "DAYS",
    "visit_before": "VSPR",
    "visit_after": "VSAF",
    "xray_visit_before": "XRPR",
    "xray_visit_after": "XRAF",
    "adjudication": "RPCF",
    "total_or_partial": "TLPR",
}


def read_outcomes(raw: FileBytes) -> pd.DataFrame:
    """Outcomes99: knee replacement facts, one row per subject and side (``R``/``L``)."""
    sides = {"R": "V99ERK", "L": "V99ELK"}
    wanted = ["ID"] + [p + s for p in sides.values() for s in OUTCOME_FIELDS.values()]
    t = read_table(raw, wanted, required=["ID", "V99ERKRPSN", "V99ELKRPSN"], allow_empty=False)
    ids = subject_ids(t)
    _unique_subjects(t, pd.DataFrame({"subject_id": ids}))
    frames = []
    for side, prefix in sides.items():
        cols: dict[str, object] = {"subject_id": ids, "side": side}
        for field, suffix in OUTCOME_FIELDS.items():
            cols[field] = as_int(numeric(t, prefix + suffix, integer=True))
        frame = pd.DataFrame(cols)
        frame["at_baseline"] = frame["at_baseline"].astype("boolean")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _check_folders(t: Table, folder: pd.Series) -> None:
    """Series folders must lie below the folder of their contents.csv: an entry that climbs out
    (``..``) is refused, so nothing outside the release the user named is ever read."""
    empty = (folder == "").to_numpy(dtype=bool)
    climbs = folder.str.split("/").map(lambda parts: ".." in parts).to_numpy(dtype=bool)
    for bad, reason in ((empty, "empty Folder"), (climbs, "Folder leaves the image package ('..')")):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise t.error(
                f"{reason}: {shown(t.frame['FOLDER'].iloc[row])}; series are only read below the "
                "folder of this contents.csv",
                row=row,
                column="FOLDER",
            )


def _check_length(t: Table, values: pd.Series, column: str, limit: int, what: str | None = None) -> None:
    lengths = values.map(lambda v: len(v) if isinstance(v, str) else 0).to_numpy()
    if (lengths > limit).any():
        row = int(np.flatnonzero(lengths > limit)[0])
        raise t.error(
            f"{what or column} has {lengths[row]} characters, more than the {limit} the database "
            f"holds: {shown(values.iloc[row])}",
            row=row,
            column=column,
        )


def read_contents(raw: FileBytes) -> pd.DataFrame:
    """An image package's ``contents.csv``: one row per series, rescans collapsed to the last.

    Columns: ``subject_id, visit, side ("R"/"L"/""), sequence, series_description,
    study_description, folder, visit_dir, study_date, barcode, source_file, source_row``.
    The visit comes from the release code that starts ``Folder`` (``0.C.2/...``), else from the
    visit dir's name (``00m``).
    """
    t = read_table(
        raw,
        ["FOLDER", "PARTICIPANTID", "STUDYDATE", "BARCODE", "ACCESSIONNUMBER", "STUDYDESCRIPTION", "SERIESDESCRIPTION"],
        required=["FOLDER", "PARTICIPANTID", "SERIESDESCRIPTION"],
        sep=",",
    )
    f = t.frame
    folder = f["FOLDER"].str.replace("\\", "/", regex=False).str.strip("/")
    _check_folders(t, folder)
    # the release code's first component ("0" of "0.C.2/9000001/...") names the visit
    code = pc.struct_field(pc.extract_regex(pa.array(folder, type=pa.large_string()), r"^(?P<c>[^/.]*)"), [0])
    visit = pd.Series(code.to_numpy(zero_copy_only=False), dtype=object).map(RELEASE_VISITS)
    dir_visit = raw.source.visit
    if dir_visit is not None:
        visit = visit.fillna(dir_visit)
    if visit.isna().any():
        row = int(np.flatnonzero(visit.isna().to_numpy())[0])
        raise t.error(
            f"cannot tell the visit: Folder {shown(f['FOLDER'].iloc[row])} does not start with a "
            "release code (0.C.2, 1.E.1 ...) and the folder is not a visit dir (00m, 12m ...)",
            row=row,
            column="FOLDER",
        )
    description = f["SERIESDESCRIPTION"]  # already stripped of its padding
    if (description == "").any():
        row = int(np.flatnonzero((description == "").to_numpy())[0])
        raise t.error("empty SeriesDescription", row=row, column="SERIESDESCRIPTION")
    upper = description.str.upper()
    side = np.full(len(t), "", dtype=object)
    sequence = upper.to_numpy(dtype=object).copy()
    for suffix, letter in (("_RIGHT", "R"), ("_LEFT", "L")):
        has = upper.str.endswith(suffix).to_numpy(dtype=bool)
        side[has] = letter
        sequence[has] = [s[: -len(suffix)] for s in sequence[has]]
    barcode = "BARCODE" if "BARCODE" in f.columns else "ACCESSIONNUMBER"
    # the database's column sizes (PostgreSQL enforces them; SQLite would store anything)
    _check_length(t, description, "SERIESDESCRIPTION", 128)
    _check_length(t, pd.Series(sequence), "SERIESDESCRIPTION", 64, "the sequence name (without _RIGHT/_LEFT)")
    for column, limit in (("STUDYDESCRIPTION", 128), (barcode, 32)):
        if column in f.columns:
            _check_length(t, f[column], column, limit)
    frame = pd.DataFrame(
        {
            "subject_id": subject_ids(t, "PARTICIPANTID"),
            "visit": visit.astype("int64").to_numpy(),
            "side": side,
            "sequence": sequence,
            "series_description": description.to_numpy(dtype=object),
            "study_description": _text_or_none(t, "STUDYDESCRIPTION"),
            "folder": folder.to_numpy(dtype=object),
            "visit_dir": str(raw.source.path.parent.resolve()),
            "study_date": dates(t, "STUDYDATE", fmt="%Y%m%d"),
            # kept as written: some releases lost the leading zeros (compare with lstrip("0"))
            "barcode": _text_or_none(t, barcode),
            "source_file": raw.source.relative_path,
            "source_row": t.lines,
        }
    )
    # a rescan is listed after the series it replaces
    return frame.drop_duplicates(["subject_id", "visit", "side", "sequence"], keep="last")
