"""A text file in one encoding, or an error naming the line: never silent mojibake.

OAI tables are UTF-8 or (older SAS exports) latin-1. A file holding both - a latin-1 table
with UTF-8 rows pasted in, or the reverse - would decode one of them wrongly whichever encoding
is chosen ("MÃ¼ller" or "M\\ufffdller"), so it is refused naming the first line of each kind.
"""

from __future__ import annotations

import re
from pathlib import Path

from oaicohort.errors import InputFileError

# a well-formed UTF-8 multi-byte sequence (what latin-1 text almost never contains)
_UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + data.count(b"\r", 0, offset) - data.count(b"\r\n", 0, offset) + 1


def check_one_encoding(path: Path, data: bytes) -> None:
    """Refuse bytes that are partly UTF-8 and partly another 8-bit encoding."""
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError as exc:
        bad = exc.start
    utf8 = _UTF8_MULTIBYTE.search(data)
    if utf8 is None:
        return  # consistently another 8-bit encoding (latin-1)
    raise InputFileError(
        path,
        f"mixed text encodings: byte 0x{data[bad]:02x} here is not UTF-8, but line {_line_of(data, utf8.start())} "
        "is UTF-8 text; save the whole file in one encoding (UTF-8)",
        line=_line_of(data, bad),
    )
