"""Walking a release folder tree without recursion.

``os.walk`` of Python 3.11 recurses once per folder level, so a tree deeper than about 1,000
levels (a link loop copied out as folders, a mistaken copy into itself) ended the ingest with
"unexpected error: RecursionError". :func:`walk` yields the same (folder, subfolders, files)
triples, top-down and depth-first, from an explicit stack: any depth the file system allows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path


def walk(
    top: Path | str, onerror: Callable[[OSError], None] | None = None
) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top, topdown=True, onerror=onerror, followlinks=True)``, iteratively: the caller
    may prune the subfolder list in place, as with ``os.walk``."""
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs: list[str] = []
        files: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links, as followlinks=True
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
        yield folder, dirs, files
        stack.extend(os.path.join(folder, d) for d in reversed(dirs))


__all__ = ["walk"]
