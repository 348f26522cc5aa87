"""Finding the OAI files below a release root: which file is which table, of which visit, in
which form (classic ASCII, SAS, NDA data package) and where (a file, or a member of a zip).

Either folder layout of OAI_FORMATS.md, any file-name case, any depth, zip archives read without
unpacking (OAI_DISTRIBUTIONS.md section 3). Image visit folders (``00m``, ``OAI_00m``,
``OAIBaselineImages``) and per-release index names (``contents.0E1.csv``) name the visit of an
image index. When one table is present in several forms, one is read (ASCII before SAS before
NDA; a file before an archive member) and the others are reported as warnings.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from oaicohort.errors import InputFileError
from oaicohort.release.archive import archive_members
from oaicohort.release.image_files import SeriesLocation, series_in_archive, series_in_folder, visit_dirs_below
from oaicohort.release.visit_paths import release_visit, visit_of_dirs
from oaicohort.release.walk import walk
from oaicohort.visits import VISIT_MONTHS

log = logging.getLogger(__name__)

# kinds of source
ENROLLEES = "enrollees"
ALLCLINICAL = "allclinical"
SUBJECTCHAR = "subjectchar"
OUTCOMES = "outcomes"
KXR_SQ_BU = "kxr_sq_bu"
CONTENTS = "contents"  # an image index (contents.csv and its per-release variants)
NDA_STRUCTURE = "nda_structure"  # one data structure of an NDA package (oai_enrollee01.txt ...)
IMAGE03 = "image03"  # the image index of an NDA package
ARCHIVE = "archive"  # a zip holding OAI files (recorded for provenance; its members are read)
# forms of content
ASCII = "ascii"
SAS = "sas"
NDA = "nda"
CSV = "csv"  # image indexes

TABLE_KINDS = (ENROLLEES, ALLCLINICAL, SUBJECTCHAR, OUTCOMES, KXR_SQ_BU)
_TABLE_EXT = r"\.(?P<ext>txt|sas7bdat)"
# lower-cased file name -> kind; the group ``v``, when present, is the visit code
_FILE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"enrollees" + _TABLE_EXT), ENROLLEES),
    (re.compile(r"allclinical(?P<v>\d{2})" + _TABLE_EXT), ALLCLINICAL),
    (re.compile(r"subjectchar(?P<v>\d{2})" + _TABLE_EXT), SUBJECTCHAR),
    (re.compile(r"outcomes99" + _TABLE_EXT), OUTCOMES),
    (re.compile(r"kxr_sq_bu(?P<v>\d{2})" + _TABLE_EXT), KXR_SQ_BU),
    (re.compile(r"contents\.csv"), CONTENTS),
    # per-release indexes: contents.0E1.csv, contents.2D2.csv, contents.0.C.2.csv
    (re.compile(r"contents[._-](?P<code>\d{1,2}\.?[a-z]\.?\d{1,2})\.csv"), CONTENTS),
    # NDA structures: tab-delimited .txt as downloadcmd saves them, or comma-separated .csv exports
    (re.compile(r"image03\.(?:txt|csv)"), IMAGE03),
    (re.compile(r"oai_(?!nda_map\.csv$)[a-z0-9_]+\.(?:txt|csv)"), NDA_STRUCTURE),
)
_SKIPPED_DIRS = {"__macosx"}


@dataclass(frozen=True)
class SourceFile:
    """One OAI file found below a release root (a file on disk, or a member of a zip there)."""

    path: Path  # the file on disk; for an archive member, the archive
    relative_path: str  # POSIX path relative to the root, as recorded in ingest provenance ("a.zip!member")
    kind: str  # enrollees | allclinical | subjectchar | outcomes | kxr_sq_bu | contents | nda_structure | ...
    visit: int | None  # OAI visit code from the file name (or the image visit dir)
    member: str | None = None  # the path inside the archive ``path``
    form: str = ASCII  # ascii | sas | nda | csv

    @property
    def where(self) -> Path:
        """What error messages name: the file, or ``archive.zip!member``."""
        return Path(f"{self.path}!{self.member}") if self.member else self.path

    @property
    def name(self) -> str:
        return PurePosixPath(self.member).name if self.member else self.path.name

    @property
    def structure(self) -> str:
        """An NDA structure's name (``oai_kxrsemiquant01``)."""
        return self.name.lower().rsplit(".", 1)[0]

    @property
    def delimiter(self) -> str:
        """An NDA file's field separator: comma for a ``.csv`` export, else tab."""
        return "," if self.name.lower().endswith(".csv") else "\t"


@dataclass
class Discovery:
    """The sources to read, the image series folders found (``oaicohort.release.image_files``),
    and what was found but set aside (one message each)."""

    sources: list[SourceFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    image_series: list[SeriesLocation] = field(default_factory=list)


def classify(name: str) -> tuple[str, int | None] | None:
    """Kind and visit code of an OAI file name (case-insensitive), or None for other files."""
    found = _classify(name)
    return None if found is None else found[:2]


def _classify(name: str) -> tuple[str, int | None, str] | None:
    lower = name.lower()
    for pattern, kind in _FILE_PATTERNS:
        m = pattern.fullmatch(lower)
        if not m:
            continue
        groups = m.groupdict()
        visit = int(groups["v"]) if groups.get("v") else None
        if groups.get("code"):
            visit = release_visit(groups["code"])
        if kind in (CONTENTS, IMAGE03):
            form = CSV if kind == CONTENTS else NDA
        elif kind == NDA_STRUCTURE:
            form = NDA
        else:
            form = SAS if groups.get("ext") == "sas7bdat" else ASCII
        return kind, visit, form
    return None


def _source(
    path: Path, relative: str, name: str, dir_parts: list[str], member: str | None, found: Discovery
) -> SourceFile | None:
    classified = _classify(name)
    if classified is None:
        return None
    kind, visit, form = classified
    if kind == CONTENTS:
        if visit is None:
            visit = visit_of_dirs(dir_parts)
    elif visit is not None and visit not in VISIT_MONTHS:
        found.warnings.append(f"{relative}: visit {visit:02d} is not an OAI visit this toolkit knows; not read")
        return None
    return SourceFile(path, relative, kind, visit, member, form)


def _archive_members(path: Path, relative: str, dir_parts: list[str], found: Discovery) -> list[SourceFile]:
    infos, warnings = archive_members(path, relative)  # refuses a member leaving the archive; names nested zips
    found.warnings += warnings
    found.image_series.extend(series_in_archive(path, relative, dir_parts, infos))
    members = []
    for info in infos:
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if not parts or any(p.lower() in _SKIPPED_DIRS or p.startswith(".") for p in parts):
            continue
        source = _source(
            path, f"{relative}!{info.filename}", parts[-1], dir_parts + list(parts[:-1]), info.filename, found
        )
        if source is not None:
            members.append(source)
    if members:
        members.insert(0, SourceFile(path, relative, ARCHIVE, None, None, ASCII))
    return members


def discover_release(root: Path | str) -> list[SourceFile]:
    """Every OAI source below ``root`` (see ``discover``), sorted by path."""
    return discover(root).sources


def discover(root: Path | str) -> Discovery:
    """Every OAI table and image index below ``root`` (any depth, any layout, inside zips too);
    ``root`` may itself be a zip archive.

    A clinical table found twice in the same form (say a flat and a per-category copy side by
    side) is an error: silently picking one would make the ingest depend on directory order.
    ``contents.csv`` may occur many times per visit, because image packages split a visit over
    several folders.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise InputFileError(root_path, "no such directory (the OAI release root)")
    found = Discovery()
    if root_path.is_file():
        if root_path.suffix.lower() == ".zip" and not zipfile.is_zipfile(root_path):
            raise InputFileError(root_path, "cannot read zip archive: not a zip file (a damaged or partial download?)")
        if not zipfile.is_zipfile(root_path):
            raise InputFileError(
                root_path, "not a directory or a zip archive; give the folder (or .zip) that holds the OAI release"
            )
        found.sources = _archive_members(root_path, root_path.name, [], found)
        return _one_per_table(found)

    def walk_error(err: OSError) -> None:
        raise InputFileError(err.filename or root_path, f"cannot list directory: {err.strerror}")

    visit_dirs = visit_dirs_below(root_path.resolve())
    # image packages are often linked in from other disks, so links are followed, once each (a
    # folder is known by its device and inode: one stat, where resolving its path costs one per level)
    visited: set[tuple[int, int] | None] = set()
    for dirpath, dirnames, filenames in walk(root_path, onerror=walk_error):  # any depth
        visited.add(_identity(dirpath))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d.lower() not in _SKIPPED_DIRS
            and _identity(os.path.join(dirpath, d)) not in visited
        )
        for d in dirnames:
            if classify(d) is not None:
                log.warning("%s: a directory named like an OAI table; not read as one", Path(dirpath) / d)
        dir_parts = list(Path(dirpath).relative_to(root_path).parts)
        series = series_in_folder(root_path, Path(dirpath), filenames, visit_dirs)
        if series is not None:
            found.image_series.append(series)
        for name in sorted(filenames):
            if not name.lower().endswith(".zip") and _classify(name) is None:
                continue  # slice files and the like: not even stat-ed (an image tree holds millions)
            path = Path(dirpath) / name
            if not _is_regular_file(path):
                continue
            relative = path.relative_to(root_path).as_posix()
            if name.lower().endswith(".zip"):
                found.sources.extend(_archive_members(path, relative, dir_parts, found))
                continue
            source = _source(path, relative, name, dir_parts, None, found)
            if source is not None:
                found.sources.append(source)
    found.sources.sort(key=lambda f: f.relative_path)
    found.image_series.sort(key=lambda s: s.relative)
    return _one_per_table(found)


def _identity(path: str) -> tuple[int, int] | None:
    """A folder's device and inode (links followed); None when it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


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


def _rank(source: SourceFile) -> int:
    """Preference among copies of one table: ASCII, then SAS; a file before an archive member."""
    return {ASCII: 0, SAS: 2}.get(source.form, 4) + (1 if source.member else 0)


def _one_per_table(found: Discovery) -> Discovery:
    by_table: dict[tuple[str, int | None], list[SourceFile]] = {}
    structures: dict[str, list[SourceFile]] = {}
    for f in found.sources:
        if f.kind in TABLE_KINDS:
            by_table.setdefault((f.kind, f.visit), []).append(f)
        elif f.kind == NDA_STRUCTURE:
            structures.setdefault(f.structure, []).append(f)
    dropped: set[str] = set()
    for copies in [*by_table.values(), *structures.values()]:
        copies.sort(key=lambda f: (_rank(f), f.relative_path))
        best = [f for f in copies if _rank(f) == _rank(copies[0])]
        if len(best) > 1:
            raise InputFileError(
                best[1].where,
                f"the release holds this table twice (also {best[0].relative_path}); point ROOT at one release",
            )
        for other in copies[1:]:
            found.warnings.append(f"{other.relative_path}: same table as {copies[0].relative_path}; read that one")
            dropped.add(other.relative_path)
    if by_table and structures:
        # an NDA package beside a classic release: the classic tables are the ones read
        for copies in structures.values():
            for f in copies:
                dropped.add(f.relative_path)
        found.warnings.append(
            f"{len(structures)} NDA data structure file(s) beside the classic release tables were not read "
            "(point ROOT at one of them to read the other)"
        )
    if dropped:
        found.sources = [f for f in found.sources if f.relative_path not in dropped]
        # an archive none of whose members is read is not a source either
        used = {f.path for f in found.sources if f.member}
        found.sources = [f for f in found.sources if f.kind != ARCHIVE or f.path in used]
    for message in found.warnings:
        log.warning("%s", message)
    return found
