"""Writing real SAS7BDAT files, for the SAS form of a synthetic release (``oai synth --distribution sas``).

No Python package writes SAS7BDAT, but ReadStat's C writer is compiled into pyreadstat's
extension module (pyreadstat only exposes SAV/DTA/XPORT writing). It is called here through
ctypes: ``readstat_begin_writing_sas7bdat`` and friends (ReadStat's public ``readstat.h`` API).
Files written so are read by pyreadstat, ``pandas.read_sas`` and SAS alike.

Cells are given as the ASCII release writes them and typed the way the OAI's SAS files are
(OAI_DISTRIBUTIONS.md section 2): ``ID``, ``READPRJ`` and ``VERSION`` are character; a column whose
cells are all numbers, codes (``1: Male`` -> 1) or missing codes is numeric, with ``.A``...``.Z``
as SAS special missing values and ``.``/blank as the system missing value; a column of
``mm/dd/yyyy`` dates is numeric with the ``MMDDYY10.`` format; anything else is character.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from oaicohort.errors import OAIError

_TYPE_STRING = 0  # readstat_type_t
_TYPE_DOUBLE = 5
_CHARACTER = {"ID", "READPRJ", "VERSION"}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_MISSING = re.compile(r"\.([A-Za-z_]?)")
_DATE = re.compile(r"(\d{2})/(\d{2})/(\d{4})")
_SAS_EPOCH = dt.date(1960, 1, 1)
_WRITER = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


@cache
def _readstat() -> ctypes.CDLL:
    try:
        import pyreadstat
    except ImportError as exc:
        raise OAIError(f"writing SAS files needs pyreadstat ({exc})") from None
    folder = Path(pyreadstat.__file__).parent
    found = sorted(folder.glob("_readstat_writer*.so")) + sorted(folder.glob("_readstat_writer*.pyd"))
    if not found:
        raise OAIError(f"pyreadstat in {folder} has no compiled ReadStat writer; cannot write SAS7BDAT")
    lib = ctypes.CDLL(str(found[0]))
    if not hasattr(lib, "readstat_begin_writing_sas7bdat"):
        raise OAIError("this pyreadstat build lacks ReadStat's SAS7BDAT writer")
    p, c = ctypes.c_void_p, ctypes
    lib.readstat_writer_init.restype = p
    lib.readstat_set_data_writer.argtypes = [p, _WRITER]
    lib.readstat_add_variable.restype = p
    lib.readstat_add_variable.argtypes = [p, c.c_char_p, c.c_int, c.c_size_t]
    lib.readstat_variable_set_format.argtypes = [p, c.c_char_p]
    lib.readstat_writer_set_table_name.argtypes = [p, c.c_char_p]
    lib.readstat_begin_writing_sas7bdat.argtypes = [p, p, c.c_long]
    for name in ("readstat_begin_row", "readstat_end_row", "readstat_end_writing", "readstat_writer_free"):
        getattr(lib, name).argtypes = [p]
    lib.readstat_insert_double_value.argtypes = [p, p, c.c_double]
    lib.readstat_insert_string_value.argtypes = [p, p, c.c_char_p]
    lib.readstat_insert_missing_value.argtypes = [p, p]
    lib.readstat_insert_tagged_missing_value.argtypes = [p, p, c.c_char]
    return lib


def _numeric_value(cell: str) -> float | str | None:
    """A float, the tag letter of a special missing value, or None (system missing)."""
    head = cell.split(":", 1)[0].strip()
    if not head:
        return None
    if _NUMBER.fullmatch(head):
        return float(head)
    m = _MISSING.fullmatch(head)
    if m:
        return m.group(1).upper() or None
    raise ValueError(head)


def _date_value(cell: str) -> float | str | None:
    m = _DATE.fullmatch(cell.strip())
    if m:
        return float((dt.date(int(m.group(3)), int(m.group(1)), int(m.group(2))) - _SAS_EPOCH).days)
    return _numeric_value(cell)


def _column_kind(name: str, cells: Sequence[str]) -> str:
    """``string``, ``date`` or ``double``."""
    if name.upper() in _CHARACTER:
        return "string"
    dated = False
    for cell in cells:
        text = cell.strip()
        if _DATE.fullmatch(text):
            dated = True
            continue
        try:
            _numeric_value(text)
        except ValueError:
            return "string"
    return "date" if dated else "double"


def _check(code: int, what: str, path: Path) -> None:
    if code != 0:
        raise OAIError(f"{path}: ReadStat error {code} while {what}")


def write_sas7bdat(path: Path, columns: Mapping[str, Sequence[str]], table_name: str = "") -> int:
    """Write ``columns`` (cells in the ASCII conventions) as a SAS7BDAT file; returns the rows written."""
    lib = _readstat()
    names = list(columns)
    n_rows = len(columns[names[0]]) if names else 0
    kinds = [_column_kind(name, columns[name]) for name in names]
    chunks: list[bytes] = []

    @_WRITER
    def sink(data: int, size: int, ctx: int) -> int:
        chunks.append(ctypes.string_at(data, size))
        return size

    writer = lib.readstat_writer_init()
    try:
        _check(lib.readstat_set_data_writer(writer, sink), "setting up", path)
        if table_name:
            lib.readstat_writer_set_table_name(writer, table_name.upper()[:32].encode())
        variables = []
        for name, kind in zip(names, kinds):
            if kind == "string":
                width = max([len(str(c).encode("utf-8")) for c in columns[name]] + [1])
                variable = lib.readstat_add_variable(writer, name.encode(), _TYPE_STRING, width)
            else:
                variable = lib.readstat_add_variable(writer, name.encode(), _TYPE_DOUBLE, 8)
                if kind == "date":
                    lib.readstat_variable_set_format(variable, b"MMDDYY10")
            variables.append(variable)
        _check(lib.readstat_begin_writing_sas7bdat(writer, None, n_rows), "writing the header", path)
        convert = {"double": _numeric_value, "date": _date_value}
        for row in range(n_rows):
            lib.readstat_begin_row(writer)
            for name, kind, variable in zip(names, kinds, variables):
                cell = str(columns[name][row])
                if kind == "string":
                    lib.readstat_insert_string_value(writer, variable, cell.rstrip().encode("utf-8"))
                    continue
                value = convert[kind](cell)
                if value is None:
                    lib.readstat_insert_missing_value(writer, variable)
                elif isinstance(value, str):
                    _check(
                        lib.readstat_insert_tagged_missing_value(writer, variable, value.encode()),
                        f"writing .{value} in {name}",
                        path,
                    )
                else:
                    lib.readstat_insert_double_value(writer, variable, value)
            _check(lib.readstat_end_row(writer), f"writing row {row + 1}", path)
        _check(lib.readstat_end_writing(writer), "finishing", path)
    finally:
        lib.readstat_writer_free(writer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(chunks))
    return n_rows
