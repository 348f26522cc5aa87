"""SAS copies of the OAI tables (``.sas7bdat``), read into the same string tables as the ASCII files.

Read with pyreadstat and ``user_missing=True``, because it alone keeps SAS special missing values
(``.A``, ``.P``, ``.T`` ...) apart: they come back as the letters and are written here as the
ASCII codes (``.P``), so a prosthesis and a technical problem stay distinguishable exactly as in
the ASCII release (OAI_DISTRIBUTIONS.md section 2). Numbers become their shortest decimal text
(``1``, ``27.3``), the system missing value ``.``, dates ``mm/dd/yyyy``, byte strings are decoded
(UTF-8, else latin-1). Line numbers in errors are those of the table's ASCII export (header =
line 1, first record = line 2).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from oaicohort.errors import InputFileError
from oaicohort.release.discovery import SourceFile
from oaicohort.release.table import Table

if TYPE_CHECKING:  # the reader of FileBytes.table: text imports this module, not the reverse
    from oaicohort.release.text import FileBytes


@contextmanager
def _on_disk(source: SourceFile, data: bytes | None) -> Iterator[str]:
    """A path pyreadstat can open: the file itself, or an archive member copied to a temporary file."""
    if source.member is None:
        yield str(source.path)
        return
    if data is None:
        from oaicohort.release.archive import read_member

        data = read_member(source)
    fd, name = tempfile.mkstemp(suffix=".sas7bdat")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield name
    finally:
        os.unlink(name)


def _read(source: SourceFile, data: bytes | None, **options: Any) -> tuple[pd.DataFrame, Any]:
    import pyreadstat

    with _on_disk(source, data) as path:
        try:
            return pyreadstat.read_sas7bdat(path, user_missing=True, **options)
        except Exception as exc:  # pyreadstat raises its own types and plain ones for damaged files
            raise InputFileError(source.where, f"cannot read SAS file: {type(exc).__name__}: {exc}") from None


def read_sas_header(source: SourceFile) -> list[str]:
    """Upper-cased column names of a SAS file (its metadata only)."""
    _, meta = _read(source, None, metadataonly=True)
    return [name.upper() for name in meta.column_names]


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _number_text(value: float) -> str:
    if math.isnan(value):
        return "."
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def cell_text(value: object) -> str:
    """One SAS value as the ASCII release writes it."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return _decode(value).strip()
    if isinstance(value, str):
        # a character value, or (in a numeric column) the letter of a special missing value
        return value.strip()
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        return value.strftime("%m/%d/%Y")
    if isinstance(value, dt.date):
        return value.strftime("%m/%d/%Y")
    if isinstance(value, (float, np.floating, int, np.integer)):
        return _number_text(float(value))
    return str(value).strip()


def _column_text(values: pd.Series, numeric: bool) -> pd.Series:
    if values.dtype.kind == "f":
        out = np.full(len(values), ".", dtype=object)
        number = values.to_numpy()
        ok = ~np.isnan(number)
        whole = ok & (number == np.round(number)) & (np.abs(np.nan_to_num(number)) < 1e15)
        out[whole] = number[whole].astype(np.int64).astype(str)
        rest = ok & ~whole
        out[rest] = [repr(float(v)) for v in number[rest]]
        return pd.Series(out, dtype=object)
    texts = [cell_text(v) for v in values.tolist()]
    if numeric:
        # special missing values come back as their letter: write them as the ASCII code
        texts = [f".{t}" if len(t) == 1 and (t.isalpha() or t == "_") else t for t in texts]
    return pd.Series(texts, dtype=object)


def read_sas_table(
    raw: FileBytes, columns: Iterable[str], *, required: Iterable[str] = (), allow_empty: bool = True
) -> Table:
    """The ``columns`` (case-insensitive) of a SAS table as a ``Table`` of ASCII-style strings."""
    where = raw.source.where
    _, meta = _read(raw.source, raw.data, metadataonly=True)
    names = [n.upper() for n in meta.column_names]
    for name in required:
        if name.upper() not in names:
            raise InputFileError(
                where, f"missing required column {name} (the SAS table has {len(names)} columns)", line=1, column=name
            )
    wanted = {c.upper() for c in columns}
    actual = [n for n in meta.column_names if n.upper() in wanted]
    if actual:
        frame, meta = _read(raw.source, raw.data, usecols=actual)
    else:
        frame = pd.DataFrame(index=range(meta.number_rows or 0))
    n_rows = len(frame)
    if not n_rows and not allow_empty:
        raise InputFileError(
            where,
            "no records in this SAS table; it lists every participant, so it is truncated or not the file it "
            "is named after",
            line=2,
        )
    types = getattr(meta, "readstat_variable_types", None) or {}
    out = pd.DataFrame(
        {name.upper(): _column_text(frame[name], types.get(name, "double") != "string") for name in actual},
        index=range(n_rows),
    )
    return Table(raw.source, out, np.arange(2, n_rows + 2, dtype=np.int64), names)
