"""Outputs never overwrite inputs: the one check every command that writes makes on each path it
is about to write (``oai cohort --out`` and its study outputs, ``predict``/``explain``/``eval
--out``, ``store export --nifti`` and ``store qc --out``, ``synth``, ``preprocess --store``,
``train --out``).

A path is refused, in one line naming it and what it is, when it is, or lies inside:

- the database: the SQLite file of ``--db`` (and its ``-wal``/``-shm``/``-journal`` files), or
  any existing SQLite database file;
- a volume store (a folder with ``zarr.json``, or a store the database indexes);
- a release: a root the database ingested, or an existing OAI release file (a table or image
  index, by its name);
- a run folder or one of its own files (``oaicohort.run_files``: config.json, knees.csv, a fold
  folder's weights and logs; an evaluation's ``eval/`` is an output);
- an input of the same command.

``allow`` names the one kind a command writes on purpose (``preprocess --store`` a store, ``train
--out`` a run folder, ``synth`` a release), which is then accepted at the path itself (never
inside another one). The check also removes the temporaries that killed writers left in the
output's folder (``oaicohort.files.clean_leftovers``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oaicohort.errors import OAIError
from oaicohort.files import clean_leftovers
from oaicohort.run_files import run_part

if TYPE_CHECKING:
    from oaicohort.db import Database

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
STORE_MARKER = "zarr.json"

DATABASE, STORE, RUN, RELEASE, INPUT = "database", "store", "run", "release", "input"


@dataclass(frozen=True)
class Found:
    """What a protected path is: its kind (one of the names above) and how to say it."""

    kind: str
    what: str  # "is the database (PATH)", "is inside the volume store PATH", ...
    at: Path  # the protected path itself (equal to, or an ancestor of, the output path)


class OutputPathError(OAIError):
    """An output path would overwrite an input: a usage error (exit 2)."""

    exit_code = 2


def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _where(what: str, at: Path, path: Path) -> str:
    return f"is {what} {at}" if at == path else f"is inside {what} {at}"


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def database_file(url: str | None) -> Path | None:
    """The SQLite file of a database URL (None for a server database or an in-memory one)."""
    if not url:
        return None
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return _resolve(parsed.database.removeprefix("file:").split("?")[0])


def _database_of(path: Path, url: str | None) -> Found | None:
    db_file = database_file(url)
    if db_file is not None:
        for name in (db_file.name, *(db_file.name + s for s in SQLITE_SIDECARS)):
            if path == db_file.with_name(name):
                return Found(DATABASE, f"is the database ({db_file})", path)
    if path.is_file() and _is_sqlite(path):
        return Found(DATABASE, "is a SQLite database", path)
    return None


def _store_of(path: Path, stores: Iterable[Path]) -> Found | None:
    for folder in (path, *path.parents):
        if (folder / STORE_MARKER).is_file():
            return Found(STORE, _where("the volume store", folder, path), folder)
    for store in stores:
        if _inside(path, store):
            return Found(STORE, _where("the volume store", store, path), store)
    return None


def _release_of(path: Path, roots: Iterable[Path]) -> Found | None:
    for root in roots:
        if _inside(path, root):
            return Found(RELEASE, _where("the OAI release ingested from", root, path), root)
    if path.is_file():
        from oaicohort.release.discovery import classify  # names of the release's files: one home

        kind = classify(path.name)
        if kind is not None:
            return Found(RELEASE, f"is an OAI release file ({kind[0]})", path)
    return None


def _input_of(path: Path, inputs: Iterable[Path]) -> Found | None:
    for item in inputs:
        if _inside(path, item):
            return Found(INPUT, _where("the input", item, path) + " of this command", item)
    return None


def _exists(url: str) -> bool:
    """Whether the database of ``url`` may hold rows: a server, or a SQLite file that exists."""
    if not url.startswith("sqlite"):
        return "://" in url
    path = database_file(url)
    return path is not None and path.is_file()


_ROOTS = ("SELECT DISTINCT source_root FROM ingest_runs",)
# the stores table since revision 0009; a database made before it names stores in volumes
_STORES = ("SELECT path FROM stores", "SELECT DISTINCT store_path FROM volumes")


def _first_answer(engine: Any, queries: Iterable[str]) -> list[Any]:
    """The rows of the first of ``queries`` the database can answer (each on its own connection:
    a failed statement ends a PostgreSQL transaction); none when it answers none."""
    from sqlalchemy import text

    for query in queries:
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(query)).scalars().all())
        except Exception:  # no such table yet, or too old or damaged to say: the other checks still apply
            continue
    return []


def _known_to(database: Database | None, url: str | None) -> tuple[list[Path], list[Path]]:
    """Release roots the database ingested and stores it indexes: from the open ``database``, else
    from the one of ``url`` when it exists (read only, never created nor migrated)."""
    if database is not None and hasattr(database, "read"):
        engine, owned = database.engine, False
    elif url and _exists(url):
        from oaicohort.db.engine import make_engine

        engine, owned = make_engine(url), True
    else:
        return [], []
    try:
        roots, stores = _first_answer(engine, _ROOTS), _first_answer(engine, _STORES)
    finally:
        if owned:
            engine.dispose()
    return [_resolve(r) for r in roots if r], [_resolve(s) for s in stores if s]


def _run_of(target: Path) -> Found | None:
    part = run_part(target)
    return None if part is None else Found(RUN, part[1], part[0])


def find_protected(
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[Path | str] = (),
    database: Database | None = None,
    database_url: str | None = None,
) -> Found | None:
    """What ``path`` is among the things no output may overwrite, or None."""
    target = _resolve(path)
    url = database_url or getattr(database, "url", None)
    roots, stores = _known_to(database, url)
    checks: list[Callable[[], Found | None]] = [
        lambda: _database_of(target, url),
        lambda: _input_of(target, [_resolve(i) for i in inputs]),
        lambda: _store_of(target, stores),
        lambda: _run_of(target),
        lambda: _release_of(target, roots),
    ]
    for check in checks:
        found = check()
        if found is not None:
            return found
    return None


def check_output(
    path: str | os.PathLike[str],
    *,
    option: str,
    inputs: Sequence[Path | str] = (),
    database: Database | None = None,
    database_url: str | None = None,
    allow: str | None = None,
) -> Path:
    """Refuse ``path`` (given with ``option``) when writing it would overwrite an input; returns it
    resolved. ``allow``: the kind the command writes on purpose, accepted at ``path`` itself."""
    target = _resolve(path)
    found = find_protected(target, inputs=inputs, database=database, database_url=database_url)
    # the kind a command writes on purpose, at the path itself, and never over a file
    allowed = found is not None and found.kind == allow and found.at == target and not target.is_file()
    if found is not None and not allowed:
        raise OutputPathError(f"{option} {target}: {found.what}; an output never overwrites it (choose another path)")
    parent = target if target.is_dir() else target.parent
    if parent.is_dir() and os.access(parent, os.W_OK):
        clean_leftovers(parent)
    return target
