"""Where a series' slice files are: a folder (classic image packages and extracted downloads), a
``.tar.gz`` holding one series (NDA packages, ``image03.txt``), or a folder inside a zipped visit
package (``.../00m.zip!0.C.2/<ID>/<date>/<series>``, as the ingest's image scan records it). An
archived series is unpacked for the time of reading into a temporary folder that is removed
afterwards; an open zip's directory is kept per process, so that a package of a million members
is listed once, not once per series.

Unpacking never writes outside that folder: members with absolute paths or ``..``, links,
devices and other special files are refused (``InputFileError`` naming the archive and member),
whatever Python's own tar filters would allow.

Nothing outside the user's release is read either: ``check_within`` refuses a series folder, or a
slice file in it, that resolves outside its visit folder.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from oaicohort.errors import InputFileError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_UNPACKED_BYTES = 8 << 30  # one MR series is ~50 MB; a bigger archive is not one series
ZIP_MARK = ".zip!"  # archive.zip!folder/inside: a series folder in a zipped visit package
_OPEN_ZIPS = 4  # zipped packages kept open per process


def is_series_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or PurePosixPath(name).is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        raise InputFileError(
            archive, f"member {member.name!r} would be written outside the folder it is unpacked into; refused"
        )
    if member.issym() or member.islnk():
        raise InputFileError(archive, f"member {member.name!r} is a link ({member.linkname!r}); refused")
    if not (member.isfile() or member.isdir()):
        raise InputFileError(archive, f"member {member.name!r} is not a regular file or folder; refused")


def _series_folder(root: Path, archive: Path) -> Path:
    """The one folder of the unpacked tree that holds the slice files."""
    holding = sorted(
        {Path(dirpath) for dirpath, _, files in os.walk(root) if any(not f.startswith(".") for f in files)}
    )
    if not holding:
        raise InputFileError(archive, "the archive holds no files; expected the slice files of one series")
    if len(holding) > 1:
        shown = ", ".join(p.relative_to(root).as_posix() or "." for p in holding[:3])
        raise InputFileError(
            archive, f"the archive holds files in {len(holding)} folders ({shown}); expected one series"
        )
    return holding[0]


def unpack_series(archive: Path, into: Path) -> Path:
    """Unpack the series archive ``archive`` below ``into``; returns the folder of its slice files."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                _check_member(archive, member)
                total += member.size
            if total > MAX_UNPACKED_BYTES:
                raise InputFileError(archive, f"unpacks to {total:,} bytes; more than one series can hold")
            for member in members:
                target = into / PurePosixPath(member.name.replace("\\", "/"))
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise InputFileError(archive, f"member {member.name!r} cannot be read")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputFileError(archive, f"cannot unpack the series archive: {exc}") from None
    return _series_folder(into, archive)


def split_zip_series(path: Path | str) -> tuple[Path, str] | None:
    """``(archive, folder inside it)`` of a series in a zipped package, None for any other path."""
    text = str(path)
    at = text.find(ZIP_MARK)
    if at < 0:
        return None
    inner = PurePosixPath(text[at + len(ZIP_MARK) :].replace("\\", "/"))
    parts = [p for p in inner.parts if p not in (".", "/")]
    if ".." in parts:
        raise InputFileError(path, "series folder leaves its zip archive ('..'); refused")
    return Path(text[: at + len(".zip")]), "/".join(parts)


class _ZipPackage:
    """An open zipped visit package and its DICOM members by folder."""

    def __init__(self, path: Path) -> None:
        self.archive = zipfile.ZipFile(path)
        self.stamp = _stamp(path)
        self.folders: dict[str, list[zipfile.ZipInfo]] = {}
        for info in self.archive.infolist():
            if not info.is_dir():
                folder, _, _ = info.filename.replace("\\", "/").rpartition("/")
                self.folders.setdefault(folder, []).append(info)


_zips: OrderedDict[Path, _ZipPackage] = OrderedDict()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _zip_package(path: Path) -> _ZipPackage:
    package = _zips.get(path)
    if package is not None and package.stamp == _stamp(path):
        _zips.move_to_end(path)
        return package
    if package is not None:
        package.archive.close()
    package = _zips[path] = _ZipPackage(path)
    while len(_zips) > _OPEN_ZIPS:
        _zips.popitem(last=False)[1].archive.close()
    return package


def unpack_zip_series(archive: Path, folder: str, into: Path) -> Path:
    """The files of ``folder`` in the zip ``archive`` written below ``into``; returns their folder.

    Member names that leave ``into`` are refused, and so are more than ``MAX_UNPACKED_BYTES``."""
    where = Path(f"{archive}!{folder}")
    try:
        members = _zip_package(archive).folders.get(folder, [])
    except FileNotFoundError:
        raise InputFileError(archive, "zipped image package not found (moved since the ingest?)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(archive, f"cannot read zip archive: {exc}") from None
    if not members:
        raise InputFileError(where, "no such series folder in the zip archive")
    if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
        raise InputFileError(where, f"the series holds more than {MAX_UNPACKED_BYTES:,} bytes; not one series")
    target = into / "series"
    target.mkdir()
    archive_file = _zip_package(archive).archive
    for member in members:
        name = PurePosixPath(member.filename.replace("\\", "/")).name
        if name in ("", ".", ".."):
            raise InputFileError(where, f"member {member.filename!r} has no file name; refused")
        try:
            with archive_file.open(member) as source, open(target / name, "wb") as out:
                shutil.copyfileobj(source, out)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
            raise InputFileError(where, f"cannot unpack member {member.filename!r}: {exc}") from None
    return target


@contextmanager
def series_folder(path: Path) -> Iterator[Path]:
    """``path`` itself when it is a folder; for a series archive or a folder in a zipped package, a
    temporary folder holding its unpacked slice files, removed when the block ends (also on error)."""
    path = Path(path)
    zipped = split_zip_series(path)
    if zipped is not None:
        with tempfile.TemporaryDirectory(prefix="oai-series-") as tmp:
            yield unpack_zip_series(*zipped, Path(tmp))
        return
    if not is_series_archive(path) or path.is_dir():
        yield path
        return
    if not path.is_file():
        raise InputFileError(path, "series archive not found (was the NDA package downloaded with its image files?)")
    with tempfile.TemporaryDirectory(prefix="oai-series-") as tmp:
        yield unpack_series(path, Path(tmp))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise InputFileError(path, f"cannot resolve the path: {exc}") from None


def check_within(folder: Path, root: Path) -> None:
    """Refuse a series folder, or a slice file in it, that resolves outside ``root`` (the visit
    folder recorded at ingest) through ``..`` or a symbolic link: the index may have been edited
    or written by an older toolkit, and nothing outside the user's release is ever read."""
    if split_zip_series(folder) is not None:  # inside a zip: names are checked when unpacked
        return
    base = _resolved(root)
    real = _resolved(folder)
    if not real.is_relative_to(base):
        raise InputFileError(folder, f"series folder resolves to {real}, outside its visit folder {base}; refused")
    if not real.is_dir():
        return  # the reader says what is wrong with it
    with os.scandir(real) as entries:  # closed on the refusal too
        for entry in entries:
            if entry.is_symlink():
                target = _resolved(Path(entry.path))
                if not target.is_relative_to(base):
                    raise InputFileError(
                        entry.path, f"slice file links to {target}, outside the visit folder {base}; refused"
                    )
