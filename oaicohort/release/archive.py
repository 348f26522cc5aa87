"""Zip archives as users keep the OAI downloads (``OAICompleteData_ASCII.zip``): members are read
straight from the archive, never unpacked to disk.

A member is named ``archive.zip!member/path`` in provenance and error messages. A damaged
archive or member (bad CRC, truncated download, unsupported compression) is an ``InputFileError``
naming both. What an archive may hold is checked from its directory before anything is read:

- a member whose path leaves the archive (``../x``, ``/x``, ``C:x``) is refused by name: it was
  made by mistake or to write outside a folder on unpacking;
- a zip inside the zip is not read; a warning names it (unpack it, or point ROOT at it);
- a member is read in blocks, counting its bytes, never with one unbounded read. One larger than
  ``MAX_MEMBER_BYTES`` (1 GiB: no OAI table comes near), or over ``RATIO_FLOOR_BYTES`` (16 MiB)
  and compressed more than ``MAX_RATIO``-fold (200; OAI tables compress 5-30-fold, a zip bomb of
  zeros 1,000-fold) is refused from its directory entry, before a byte of it is read; one whose
  content runs past the size its entry declares is refused as it is read.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Generator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from oaicohort.errors import InputFileError

if TYPE_CHECKING:
    from oaicohort.release.discovery import SourceFile

_CHUNK = 1 << 20
MAX_MEMBER_BYTES = 1 << 30
MAX_RATIO = 200
RATIO_FLOOR_BYTES = 16 << 20
_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError, NotImplementedError, RuntimeError)


def leaves_archive(name: str) -> bool:
    """Whether a member path points outside the archive: ``..`` parts, an absolute path or a drive."""
    normal = name.replace("\\", "/")
    parts = PurePosixPath(normal).parts
    return normal.startswith("/") or ".." in parts or bool(parts and ":" in parts[0])


def archive_members(path: Path, shown: str | None = None) -> tuple[list[zipfile.ZipInfo], list[str]]:
    """The file members of the zip ``path``, and a warning for each zip inside it (not read),
    naming the archive ``shown`` (its path relative to the release root).

    A member whose path leaves the archive is an ``InputFileError`` naming it."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(path, f"cannot read zip archive: {exc}") from None
    members, warnings = [], []
    for info in sorted(infos, key=lambda i: i.filename):
        if leaves_archive(info.filename):
            raise InputFileError(
                path,
                f"member {info.filename!r} points outside the archive ('..', an absolute path or a drive); "
                "refused: re-create the zip with paths relative to its top folder",
            )
        if info.is_dir():
            continue
        if info.filename.lower().endswith(".zip"):
            warnings.append(
                f"{shown or path}!{info.filename}: a zip inside a zip is not read; unpack it and ingest the folder, "
                "or point ROOT at it"
            )
            continue
        members.append(info)
    return members, warnings


def _open(source: SourceFile) -> tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    if source.member is None:
        raise ValueError(f"{source.relative_path} is not an archive member")
    try:
        archive = zipfile.ZipFile(source.path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(source.path, f"cannot read zip archive: {exc}") from None
    try:
        info = archive.getinfo(source.member)
    except KeyError:
        archive.close()
        raise InputFileError(source.where, "no such member in the archive (it changed since it was listed)") from None
    try:
        check_member_size(source, info)
    except BaseException:
        archive.close()
        raise
    return archive, info


def check_member_size(source: SourceFile, info: zipfile.ZipInfo) -> None:
    """Refuse a member too large to be an OAI table, or compressed like a zip bomb (module doc)."""
    if info.file_size > MAX_MEMBER_BYTES:
        raise InputFileError(
            source.where,
            f"the member unpacks to {info.file_size:,} bytes, more than the {MAX_MEMBER_BYTES:,} an OAI table "
            "may have; refused (is this the right archive?)",
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_FLOOR_BYTES and ratio > MAX_RATIO:
        raise InputFileError(
            source.where,
            f"the member unpacks to {info.file_size:,} bytes from {info.compress_size:,} ({ratio:,.0f}-fold; "
            f"OAI tables compress far less than {MAX_RATIO}-fold): refused as a zip bomb or a damaged archive",
        )


def _blocks(source: SourceFile) -> Generator[bytes, None, None]:
    """The member's bytes in blocks, counted against the size its directory entry declares."""
    archive, info = _open(source)
    seen = 0
    try:
        with archive, archive.open(info) as fh:
            while block := fh.read(_CHUNK):
                seen += len(block)
                if seen > info.file_size:
                    raise InputFileError(
                        source.where,
                        f"the member holds more than the {info.file_size:,} bytes its zip entry declares; "
                        "the archive is damaged",
                    )
                yield block
    except _READ_ERRORS as exc:
        raise InputFileError(source.where, f"cannot read archive member: {exc}") from None


def read_member(source: SourceFile) -> bytes:
    """The bytes of an archive member (checked against the archive's CRC and size limits)."""
    return b"".join(_blocks(source))


def read_member_head(source: SourceFile, line_ends: bytes = b"\r\n") -> bytes:
    """The start of an archive member up to its first line end (or all of it if it has none)."""
    head = b""
    blocks = _blocks(source)
    try:
        for block in blocks:
            head += block
            if any(end in block for end in line_ends):
                break
    finally:
        blocks.close()  # closes the archive now, not when the generator is collected
    return head


def member_sha256(source: SourceFile) -> str:
    """sha256 of an archive member's content, streamed."""
    digest = hashlib.sha256()
    for block in _blocks(source):
        digest.update(block)
    return digest.hexdigest()
