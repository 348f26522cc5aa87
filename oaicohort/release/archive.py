"""Zip archives as users keep the OAI downloads (``OAICompleteData_ASCII.zip``): members are read
straight from the archive, never unpacked to disk.

A member is named ``archive.zip!member/path`` in provenance and error messages. A damaged
archive or member (bad CRC, truncated download, unsupported compression) is an ``InputFileError``
naming both.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib

from oaicohort.errors import InputFileError
from oaicohort.release.discovery import SourceFile

_CHUNK = 1 << 20


def _open(source: SourceFile) -> tuple[zipfile.ZipFile, str]:
    if source.member is None:
        raise ValueError(f"{source.relative_path} is not an archive member")
    try:
        return zipfile.ZipFile(source.path), source.member
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(source.path, f"cannot read zip archive: {exc}") from None


def read_member(source: SourceFile) -> bytes:
    """The bytes of an archive member (checked against the archive's CRC)."""
    archive, member = _open(source)
    try:
        with archive:
            return archive.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError, NotImplementedError, RuntimeError) as exc:
        raise InputFileError(source.where, f"cannot read archive member: {exc}") from None


def member_sha256(source: SourceFile) -> str:
    """sha256 of an archive member's content, streamed."""
    archive, member = _open(source)
    digest = hashlib.sha256()
    try:
        with archive, archive.open(member) as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError, NotImplementedError, RuntimeError) as exc:
        raise InputFileError(source.where, f"cannot read archive member: {exc}") from None
    return digest.hexdigest()
