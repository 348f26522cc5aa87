"""Files and folders the toolkit creates are never world-writable, whatever the caller's umask:
a shared cohort database or volume store must not be editable by every account on the host."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WORLD_WRITE = 0o002


def tighten_umask() -> None:
    """Add world-write to the process umask for good (the CLI does this at start)."""
    os.umask(os.umask(0) | WORLD_WRITE)


@contextmanager
def no_world_write() -> Iterator[None]:
    """Within the block, files and folders are created without world-write permission (the
    umask is process-wide: for the main thread's long writing calls, not for libraries' threads
    that outlive the block)."""
    old = os.umask(0)
    os.umask(old | WORLD_WRITE)
    try:
        yield
    finally:
        os.umask(old)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A new folder beside ``out`` to write a command's output into. When the block ends well its
    entries replace those of the same name in ``out`` (created if missing); when it fails the
    folder is removed and ``out`` is as it was: a failed command leaves no half-written output."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~(umask | WORLD_WRITE))  # mkdtemp makes it 0700
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if not out.exists():
        os.replace(stage, out)
        return
    for entry in stage.iterdir():
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    stage.rmdir()
