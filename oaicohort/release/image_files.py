"""Image series as they lie below a release root, found without reading them: folders of DICOM
files on disk, or the same folders inside a zip archive (``results/00m.zip``).

Image downloads no longer carry a ``contents.csv`` (OAI_DISTRIBUTIONS.md section 5), so the
series themselves are the index. Discovery lists them while it walks the release
(``series_in_folder``, ``series_in_archive``); ``oaicohort.release.image_scan`` then reads one
header of each.

A series is a folder holding DICOM files: the OAI names slice files ``001``, ``002`` ... without
an extension; ``*.dcm`` files are accepted too. Its *visit folder* is the folder above its release
code (``<visit dir>/0.C.2/<participant>/<date>/<series>``), so that a scanned series gets the
``visit_dir`` and ``folder`` that a ``contents.csv`` beside it would give. Without a release code
in the path it is the nearest visit folder (``00m``, ``P001``, ``OAIScreeningImages``), else the
root. An archive member that would leave the archive (``..``, an absolute path) is refused by name.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from oaicohort.errors import InputFileError
from oaicohort.release.visit_paths import is_release_code, release_visit, visit_of_dir, visit_of_dirs

IMAGE_SCAN = "image_scan"  # provenance kind (ingest_files.table_kind) of an image package read from its headers
# slice files: 001, 002 ... (the OAI's names), or *.dcm / *.dicom
_DICOM_NAME = re.compile(r"\d+|[^.].*\.(dcm|dicom)", re.IGNORECASE)
_ARCHIVE_SUFFIX = re.compile(r"\.(tar\.gz|tgz|tar|zip)$", re.IGNORECASE)


def is_dicom_name(name: str) -> bool:
    """Whether a file name is one the OAI image packages give DICOM files."""
    return _DICOM_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class SeriesLocation:
    """One series folder below a release root (on disk, or inside a zip archive there)."""

    package: str  # the image package it belongs to, relative to the root: its visit folder or its archive
    relative: str  # the series folder relative to the root (``a.zip!inner/folder`` inside an archive)
    visit_dir: str  # absolute visit folder, as ``image_series.visit_dir`` (``/x/a.zip!inner`` in an archive)
    folder: str  # the series folder relative to ``visit_dir``, as ``image_series.folder``
    header: str  # the file whose header is read: an absolute path, or the member name in ``archive``
    files: int  # DICOM files in the folder
    path_visit: int | None  # the visit its path tells (screening package, release code, visit folder)
    archive: Path | None = None  # the zip holding it; None for a folder on disk
    stamp: str = ""  # the header member's size and CRC (archives; files are stat-ed when fingerprinted)

    @property
    def key(self) -> str:
        """Where the series is, in the form ``series_key`` gives index rows."""
        return series_key(self.visit_dir, self.folder)

    @property
    def header_where(self) -> str:
        """The header file as messages and provenance name it (``archive.zip!member`` in an archive)."""
        return f"{self.archive}!{self.header}" if self.archive is not None else self.header

    @property
    def header_relative(self) -> str:
        """The header file relative to the root (``image_series.source_file`` of a scanned series)."""
        return f"{self.relative}/{PurePosixPath(self.header).name}"


def series_key(visit_dir: str, folder: str) -> str:
    """One spelling of a series' place, for index rows and scanned series alike:
    ``/abs/visit/folder``, or ``/abs/a.zip!inner/folder`` for a series inside an archive."""
    outer, bang, inner = str(visit_dir).partition("!")
    if bang:
        return f"{outer}!{posixpath.normpath(posixpath.join(inner or '.', folder))}"
    return os.path.normpath(os.path.join(outer, folder))


def series_id(folder: str) -> str:
    """The series' own name: the last folder of its path without an archive suffix (the OAI's
    8-digit series folder, or ``<series>.tar.gz`` of an NDA package)."""
    last = PurePosixPath(unquote(str(folder)).replace("\\", "/").rstrip("/")).name
    return _ARCHIVE_SUFFIX.sub("", last)


def split_series_path(parts: Sequence[str]) -> tuple[list[str], list[str], int | None]:
    """``(visit dir parts, folder parts, visit)`` of a series folder's path below the root.

    The folder starts at the last release-code component (``0.C.2``), else after the nearest visit
    folder, else at the root. The visit: the screening visit when a folder (or an archive's name)
    is the screening package, else the release code's, else the nearest visit folder's."""
    names = [_ARCHIVE_SUFFIX.sub("", p) for p in parts]
    code_at = next((i for i in range(len(parts) - 1, -1, -1) if is_release_code(parts[i])), None)
    visit = visit_of_dirs(names[:-1] if names else [])
    if code_at is not None:
        coded = release_visit(parts[code_at])
        if visit is None or visit >= 0:
            visit = coded if coded is not None else visit
        return list(parts[:code_at]), list(parts[code_at:]), visit
    dir_at = next((i for i in range(len(names) - 2, -1, -1) if visit_of_dir(names[i]) is not None), None)
    if dir_at is not None:
        return list(parts[: dir_at + 1]), list(parts[dir_at + 1 :]), visit
    return [], list(parts), visit


class _VisitDirs:
    """Absolute visit folders, resolved once each (links followed, as ``contents.csv`` folders are)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple[str, ...], str] = {}

    def __call__(self, parts: Sequence[str]) -> str:
        key = tuple(parts)
        if key not in self.cache:
            self.cache[key] = str(self.root.joinpath(*parts).resolve())
        return self.cache[key]


def series_in_folder(
    root: Path, dirpath: Path, filenames: Iterable[str], visit_dirs: _VisitDirs
) -> SeriesLocation | None:
    """The series a folder found while walking ``root`` holds, or None when it holds no DICOM files."""
    dicom = [n for n in filenames if _DICOM_NAME.fullmatch(n)]
    if not dicom:
        return None
    relative = os.path.relpath(dirpath, root)
    parts = [] if relative == "." else relative.split(os.sep)
    prefix, folder, visit = split_series_path(parts)
    package = "/".join(prefix) if prefix else "."
    return SeriesLocation(
        package=package,
        relative="/".join(parts) if parts else ".",
        visit_dir=visit_dirs(prefix),
        folder="/".join(folder) if folder else ".",
        header=os.path.abspath(os.path.join(dirpath, min(dicom))),
        files=len(dicom),
        path_visit=visit,
    )


def visit_dirs_below(root: Path) -> _VisitDirs:
    """A resolver of visit folders below ``root`` for ``series_in_folder`` (one per walk)."""
    return _VisitDirs(root)


def _refuse_leaving(archive: Path, name: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise InputFileError(
            archive, f"member {name!r} points outside the archive ('..' or an absolute path); refused, nothing read"
        )


def series_in_archive(
    archive: Path, relative: str, dir_parts: Sequence[str], infos: Iterable[zipfile.ZipInfo]
) -> list[SeriesLocation]:
    """The series folders inside a zip found at ``relative`` (below the root folders ``dir_parts``).

    Only the archive's directory is read. A DICOM member whose name leaves the archive is refused
    (``InputFileError`` naming the archive and the member)."""
    by_folder: dict[str, list[zipfile.ZipInfo]] = {}
    for info in infos:
        name = info.filename.replace("\\", "/")
        if info.is_dir() or not is_dicom_name(PurePosixPath(name).name):
            continue
        _refuse_leaving(archive, name)
        parent = PurePosixPath(name).parent.as_posix()
        if any(p.startswith(".") or p.lower() == "__macosx" for p in PurePosixPath(name).parts[:-1]):
            continue
        by_folder.setdefault(parent, []).append(info)
    located = []
    outer = str(archive.resolve())
    for parent, members in sorted(by_folder.items()):
        inner = [] if parent == "." else list(PurePosixPath(parent).parts)
        # the archive's own name counts as a folder of the path (P001.zip, 00m.zip)
        prefix, folder, visit = split_series_path([*dir_parts, PurePosixPath(relative).name, *inner])
        inner_prefix = prefix[len(dir_parts) + 1 :] if len(prefix) > len(dir_parts) else []
        if len(prefix) <= len(dir_parts):  # the split fell outside the archive: the folder is all inside
            inner_prefix, folder = [], inner
        header = min(members, key=lambda i: i.filename)
        located.append(
            SeriesLocation(
                package=relative,
                relative=f"{relative}!{parent}",
                visit_dir=f"{outer}!{PurePosixPath(*inner_prefix).as_posix() if inner_prefix else '.'}",
                folder=PurePosixPath(*folder).as_posix() if folder else ".",
                header=header.filename,
                files=len(members),
                path_visit=visit,
                archive=archive,
                stamp=f"{header.file_size}:{header.CRC:08x}",
            )
        )
    return located


def _stamp(location: SeriesLocation) -> str:
    if location.archive is not None:
        return location.stamp
    try:
        st = os.stat(location.header)
    except OSError as exc:
        return f"unreadable:{exc.strerror}"
    return f"{st.st_size}:{st.st_mtime_ns}"


def package_fingerprints(locations: Iterable[SeriesLocation]) -> dict[str, tuple[str, int, int]]:
    """Per image package: ``(sha256, header bytes, series)`` of what a scan of it depends on, found
    without reading a header: each series folder, its file count and its header file's size and
    modification time (in an archive: size and CRC). A changed, added or removed series changes it."""
    lines: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for location in locations:
        stamp = _stamp(location)
        lines.setdefault(location.package, []).append(f"{location.relative}\t{location.files}\t{stamp}\n")
        size = stamp.split(":", 1)[0]
        sizes[location.package] = sizes.get(location.package, 0) + (int(size) if size.isdigit() else 0)
    out = {}
    for package, rows in lines.items():
        digest = hashlib.sha256("".join(sorted(rows)).encode("utf-8", "surrogateescape"))
        out[package] = (digest.hexdigest(), sizes[package], len(rows))
    return out
